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


def _div(x: float, m: int = 4) -> int:
    """Round a channel count to the nearest multiple of m (at least m)."""
    return max(m, int(x + m / 2) // m * m)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (skipped for expand 1), kxk depthwise, 1x1 project;
    a residual add when stride is 1 and the widths match."""

    def __init__(self, cin: int, cout: int, expand: int, k: int, stride: int):
        super().__init__()
        mid = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6()]
        layers += [nn.Conv2d(mid, mid, k, stride, k // 2, groups=mid, bias=False),
                   nn.BatchNorm2d(mid), nn.ReLU6(),
                   nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.block(x)
        return x + y if self.residual else y


MBV2_STAGES = ((16, 1), (24, 2), (32, 2), (48, 2))  # (base width, stride) per stage


def mbv2(params: dict, input_shape: tuple, num_classes: int) -> nn.Module:
    """MobileNetV2 / MCUNet-style inverted residual stages.

    params: ``n_stages`` (1-4), ``depth`` (list: blocks per stage), ``expand`` and ``kernel``
    (lists: one per block, in order), ``width_mult`` (float), optional ``resolution``.
    Stage s has ``MBV2_STAGES[s]`` base width x width_mult and stride."""
    w = params.get("width_mult", 1.0)
    cin = _div(16 * w)
    layers: list[nn.Module] = conv_bn_relu(input_shape[0], cin, 3)
    b = 0
    for s in range(params["n_stages"]):
        base, stride = MBV2_STAGES[s]
        cout = _div(base * w)
        for i in range(params["depth"][s]):
            layers.append(InvertedResidual(cin, cout, params["expand"][b], params["kernel"][b],
                                           stride if i == 0 else 1))
            cin, b = cout, b + 1
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


def dscnn(params: dict, input_shape: tuple, num_classes: int) -> nn.Module:
    """Depthwise-separable CNN for spectrogram-like inputs (MLPerf Tiny KWS style).

    params: ``first_kernel`` (int, the stem's square kernel), ``first_stride`` (1 or 2),
    ``channels`` (int), ``n_blocks`` (int): each block a 3x3 depthwise + 1x1 conv."""
    c, k, st = params["channels"], params["first_kernel"], params["first_stride"]
    layers: list[nn.Module] = conv_bn_relu(input_shape[0], c, k, st)
    for _ in range(params["n_blocks"]):
        layers += conv_bn_relu(c, c, 3, groups=c) + conv_bn_relu(c, c, 1)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """ResNet v1 block: two 3x3 convs, a 1x1 projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(*conv_bn_relu(cin, cout, 3, stride),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Sequential() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.shortcut(x) + self.body(x))


def resnet(params: dict, input_shape: tuple, num_classes: int) -> nn.Module:
    """Small ResNet (MLPerf Tiny ResNet-8 style): a 3x3 stem, then ``n_stages`` stages of
    ``blocks`` basic blocks with ``widths`` (list, one per stage); stages after the first
    start with stride 2."""
    widths = params["widths"]
    cin = params.get("stem_channels", widths[0])
    layers: list[nn.Module] = conv_bn_relu(input_shape[0], cin, 3)
    for s in range(params["n_stages"]):
        for i in range(params.get("blocks", 1)):
            layers.append(BasicBlock(cin, widths[s], 2 if (s > 0 and i == 0) else 1))
            cin = widths[s]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


def mlp(params: dict, input_shape: tuple, num_classes: int) -> nn.Module:
    """Fully connected stack on the flattened input: ``n_layers`` hidden layers of ``widths``
    (list) with ReLU (anomaly-detection / tabular style)."""
    import math
    cin = math.prod(input_shape)
    layers: list[nn.Module] = [nn.Flatten()]
    for i in range(params["n_layers"]):
        layers += [nn.Linear(cin, params["widths"][i]), nn.ReLU()]
        cin = params["widths"][i]
    layers.append(nn.Linear(cin, num_classes))
    return nn.Sequential(*layers)


FAMILIES: dict[str, Builder] = {"plain": plain, "mbv2": mbv2, "dscnn": dscnn, "resnet": resnet,
                                "mlp": mlp}


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
