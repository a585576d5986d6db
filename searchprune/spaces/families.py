"""Model families: builders that turn sampled architecture parameters into an ``nn.Module``.

A builder is ``build(params, input_shape, num_classes) -> nn.Module`` where ``params`` holds
the sampled values (per-block parameters as lists) and ``input_shape`` is (C, H, W) or (F,).
A space YAML names a bundled family or a user callable as ``"pkg.module:function"``.
"""
from __future__ import annotations

import importlib
from typing import Callable

import torch.nn as nn

from ..errors import ConfigError

Builder = Callable[[dict, tuple, int], nn.Module]


def conv_bn_relu(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU()]


def plain(params: dict, input_shape: tuple, num_classes: int) -> nn.Module:
    """A stack of blocks, each a standard conv or a depthwise-separable conv, then global
    average pooling and a linear classifier.

    params: ``n_blocks`` (int), ``channels`` (list, one per block), ``block`` (list of
    ``"conv"`` / ``"dwsep"``), ``kernel_size`` (int), optional ``stem_channels`` and
    ``downsample`` (list of bools: stride 2 at that block).
    """
    cin = input_shape[0]
    layers: list[nn.Module] = []
    stem = params.get("stem_channels")
    if stem:
        layers += conv_bn_relu(cin, stem, 3)
        cin = stem
    k = params.get("kernel_size", 3)
    downs = params.get("downsample") or [False] * params["n_blocks"]
    for i in range(params["n_blocks"]):
        cout, stride = params["channels"][i], 2 if downs[i] else 1
        if params["block"][i] == "dwsep":
            layers += conv_bn_relu(cin, cin, k, stride, groups=cin) + conv_bn_relu(cin, cout, 1)
        else:
            layers += conv_bn_relu(cin, cout, k, stride)
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


FAMILIES: dict[str, Builder] = {"plain": plain}


def resolve_family(name: str, source: str = "argument") -> Builder:
    """A bundled family name, or ``"pkg.module:function"`` (imports exactly that module)."""
    if name in FAMILIES:
        return FAMILIES[name]
    if ":" not in name:
        raise ConfigError(source, "family", name,
                          f"unknown model family; bundled: {', '.join(FAMILIES)}, "
                          "or 'pkg.module:function' for your own builder")
    mod_name, fn_name = name.split(":", 1)
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(source, "family", name, f"cannot be imported: {e}") from None
    if not callable(fn):
        raise ConfigError(source, "family", name, "is not callable")
    return fn
