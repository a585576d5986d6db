"""The prune entry point: structured (channels removed, dependency-aware), unstructured and N:M (masks).

Structured pruning uses torch-pruning's DependencyGraph, so residual adds, depthwise convs,
BatchNorm, concat and the Linear after a flatten stay consistent; the classifier's outputs
are never pruned. Unstructured and N:M pruning zero weights and keep a mask on the model
(``apply_masks`` re-applies it after each optimiser step so zeros stay zero).
"""
from __future__ import annotations

from typing import Iterable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from ..errors import SearchpruneError
from .criteria import (CRITERIA, NEEDS_DATA, ChannelScoreImportance, channel_scores,
                       gradient_stats, weight_scores)

MASKS_ATTR = "searchprune_masks"
_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Linear)


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.groups > 1 and m.groups == m.in_channels


def execution_order(model: nn.Module, example_inputs: torch.Tensor) -> list[str]:
    """Names of the conv / linear modules in the order a forward pass runs them."""
    order: list[str] = []
    names = {m: n for n, m in model.named_modules()}
    hooks = [m.register_forward_hook(lambda mod, i, o: order.append(names[mod]))
             for m in model.modules() if isinstance(m, _WEIGHTED)]
    try:
        with torch.no_grad():
            model(example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return order


def classifier_name(model: nn.Module, example_inputs: torch.Tensor,
                    order: list[str] | None = None) -> str:
    """The last conv / linear a forward pass runs: its outputs are the classes. ``order``:
    the model's execution_order, if known already."""
    order = order if order is not None else execution_order(model, example_inputs)
    if not order:
        raise SearchpruneError(f"{type(model).__name__} has no Conv or Linear layer to prune")
    return order[-1]


def prunable_layers(model: nn.Module, example_inputs: torch.Tensor,
                    granularity: str = "structured", order: list[str] | None = None) -> list[str]:
    """Layers whose ratio a search may set. Structured: convs (not depthwise: they follow the
    conv before them) and linears, minus the classifier. Unstructured / N:M: every conv and
    linear but the classifier. ``order``: the model's execution_order, if known already."""
    order = order if order is not None else execution_order(model, example_inputs)
    modules = dict(model.named_modules())
    keep = order[:-1]
    if granularity == "structured":
        keep = [n for n in keep if not _is_depthwise(modules[n])]
    return list(dict.fromkeys(keep))


def parse_nm(granularity: str) -> tuple[int, int] | None:
    """'2:4' -> (2, 4): keep N of every M consecutive weights along the input dimension."""
    if ":" not in str(granularity):
        return None
    try:
        n, m = (int(v) for v in granularity.split(":"))
    except ValueError:
        n, m = 0, 0
    if not 0 < n < m:
        raise SearchpruneError(f"granularity {granularity!r}: N:M needs integers 0 < N < M")
    return n, m


def _check_ratio(name: str, r: float) -> float:
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < 1:
        raise SearchpruneError(f"pruning ratio for {name!r} = {r!r}: must be in [0, 1)")
    return float(r)


def _ratio_dict(model, ratios, example_inputs, granularity, order=None) -> dict[str, float]:
    layers = prunable_layers(model, example_inputs, granularity, order)
    if isinstance(ratios, Mapping):
        unknown = [k for k in ratios if k not in layers]
        if unknown:
            raise SearchpruneError(f"pruning ratios name unknown or unprunable layers {unknown}; "
                                   f"prunable: {layers}")
        return {k: _check_ratio(k, v) for k, v in ratios.items()}
    r = _check_ratio("all layers", ratios)
    return {k: r for k in layers}


def _structured(model, ratio_dict, criterion, example_inputs, data, round_to,
                classifier: str) -> nn.Module:
    modules = dict(model.named_modules())
    per_module = {modules[k]: v for k, v in ratio_dict.items() if v > 0}
    if not per_module:
        return model
    if criterion in ("l1", "l2"):
        importance = tp.importance.MagnitudeImportance(p=1 if criterion == "l1" else 2)
    elif criterion == "taylor":
        importance = tp.importance.TaylorImportance()
    else:
        importance = ChannelScoreImportance(channel_scores(model, list(ratio_dict), criterion,
                                                           data))
    ignored = [modules[classifier]]
    pruner = tp.pruner.MetaPruner(model, example_inputs, importance=importance, pruning_ratio=0.0,
                                  pruning_ratio_dict=per_module, ignored_layers=ignored,
                                  round_to=round_to if round_to and round_to > 1 else None)
    if criterion == "taylor":
        stats = gradient_stats(model, data, criterion)  # TaylorImportance reads .grad
        for n, m in modules.items():
            if n in stats:
                m.weight.grad = stats[n]
    pruner.step()
    model.zero_grad()
    return model


def _nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the n highest scores in every group of m consecutive input-dimension weights."""
    w = scores.movedim(1, -1)                       # (out, *kernel, in)
    shape = w.shape
    cin = shape[-1]
    pad = (-cin) % m
    flat = F.pad(w.reshape(-1, cin), (0, pad), value=-1.0).reshape(-1, (cin + pad) // m, m)
    top = flat.topk(n, dim=-1).indices
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(-1, top, True)
    mask = mask.reshape(-1, cin + pad)[:, :cin].reshape(shape)
    return mask.movedim(-1, 1)


def _masked(model, ratio_dict, criterion, data, nm) -> nn.Module:
    modules = dict(model.named_modules())
    stats = gradient_stats(model, data, criterion) if criterion in NEEDS_DATA else {}
    masks = dict(getattr(model, MASKS_ATTR, {}) or {})
    for name, r in ratio_dict.items():
        w = modules[name].weight
        scores = weight_scores(w, criterion, stats.get(name))
        if name in masks:  # already-pruned weights stay pruned
            scores = torch.where(masks[name], scores, torch.full_like(scores, -1.0))
        if nm is not None:
            mask = _nm_mask(scores, *nm)
        else:
            k = int(round(r * w.numel()))
            mask = torch.ones_like(w, dtype=torch.bool)
            if k > 0:
                idx = torch.argsort(scores.flatten(), stable=True)[:k]
                mask.view(-1)[idx] = False
        masks[name] = mask if name not in masks else masks[name] & mask
    setattr(model, MASKS_ATTR, masks)
    apply_masks(model)
    return model


def apply_masks(model: nn.Module) -> None:
    """Zero the masked weights again (call after every optimiser step)."""
    masks = getattr(model, MASKS_ATTR, None)
    if not masks:
        return
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, mask in masks.items():
            modules[name].weight.mul_(mask)


def prune(model: nn.Module, ratios: float | Mapping[str, float], granularity: str = "structured",
          criterion: str = "l1", example_inputs: torch.Tensor | None = None,
          data: Iterable | None = None, round_to: int = 1) -> nn.Module:
    """Prune ``model`` in place and return it.

    ``ratios``: one fraction for every prunable layer, or ``{layer_name: fraction}``.
    ``granularity``: ``"structured"`` (channels removed), ``"unstructured"`` or ``"N:M"``.
    ``criterion``: ``"l1"``, ``"l2"``, ``"taylor"``, ``"hessian"`` or ``"activation"``
    (structured only); the last three need ``data``: batches of (x, y).
    ``round_to``: structured channel counts stay multiples of this (the runtime's vector width).

    >>> import torch, torch.nn as nn
    >>> m = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 10))
    >>> m = prune(m, 0.5, example_inputs=torch.zeros(1, 1, 8, 8))
    >>> m[0].out_channels, m[3].in_features
    (4, 144)
    """
    if criterion not in CRITERIA:
        raise SearchpruneError(f"criterion {criterion!r}: valid: {', '.join(CRITERIA)}")
    if criterion in NEEDS_DATA and data is None:
        raise SearchpruneError(f"criterion {criterion!r} needs data=batches of (x, y)")
    nm = parse_nm(granularity)
    if nm is None and granularity not in ("structured", "unstructured"):
        raise SearchpruneError(f"granularity {granularity!r}: valid: structured, unstructured, N:M")
    if example_inputs is None:
        raise SearchpruneError("prune needs example_inputs (one batch of input) to trace layers")
    order = execution_order(model, example_inputs)  # one forward pass serves both below
    classifier = classifier_name(model, example_inputs, order)
    ratio_dict = _ratio_dict(model, ratios, example_inputs, granularity, order)
    if granularity == "structured":
        return _structured(model, ratio_dict, criterion, example_inputs, data, round_to,
                           classifier)
    return _masked(model, ratio_dict, criterion, data, nm)


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output channels / features of every conv and linear."""
    return {n: (m.out_channels if hasattr(m, "out_channels") else m.out_features)
            for n, m in model.named_modules() if isinstance(m, _WEIGHTED)}


def sparsity(model: nn.Module) -> float:
    """Exact fraction of zero-valued weights over all conv and linear weights."""
    total = zeros = 0
    for m in model.modules():
        if isinstance(m, _WEIGHTED):
            total += m.weight.numel()
            zeros += int((m.weight == 0).sum())
    return zeros / total if total else 0.0
