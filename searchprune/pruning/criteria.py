"""Importance criteria: per-weight scores (unstructured / N:M) and per-channel scores
(structured). Low score = pruned first.

- ``l1`` / ``l2``: weight magnitude.
- ``taylor``: first-order Taylor, |weight x gradient| with gradients accumulated over batches.
- ``hessian``: OBD saliency 0.5 x H_ii x weight^2 with the diagonal Hessian approximated by
  the empirical Fisher (mean squared gradient over batches).
- ``activation`` (structured only): mean post-ReLU activation of each output channel over
  batches; dead channels score 0.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp
from torch_pruning.pruner import function as tpf

from ..errors import SearchpruneError

CRITERIA = ("l1", "l2", "taylor", "hessian", "activation")
NEEDS_DATA = ("taylor", "hessian", "activation")
UNSTRUCTURED_CRITERIA = ("l1", "l2", "taylor", "hessian")
_FOLLOWERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Identity)


def _batches(data: Iterable | None, criterion: str) -> list:
    if data is None:
        raise SearchpruneError(f"criterion {criterion!r} needs data=batches of (x, y)")
    batches = list(data)
    if not batches:
        raise SearchpruneError(f"criterion {criterion!r} got no batches in data")
    return batches


def gradient_stats(model: nn.Module, data: Iterable, criterion: str) -> dict[str, torch.Tensor]:
    """Per-parameter gradient statistic over ``data``: the summed gradient (Taylor) or the mean
    squared gradient (empirical Fisher, for Hessian). Keys are module names."""
    batches = _batches(data, criterion)
    weighted = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d,
                                                                          nn.Linear))}
    acc = {n: torch.zeros_like(m.weight) for n, m in weighted.items()}
    was_training = model.training
    model.eval()
    for xb, yb in batches:
        model.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        for n, m in weighted.items():
            g = m.weight.grad
            if g is not None:
                acc[n] += g.pow(2) if criterion == "hessian" else g
    model.zero_grad()
    model.train(was_training)
    if criterion == "hessian":
        acc = {n: v / len(batches) for n, v in acc.items()}
    return acc


def weight_scores(weight: torch.Tensor, criterion: str, stat: torch.Tensor | None) -> torch.Tensor:
    """Per-weight importance."""
    w = weight.detach()
    if criterion == "l1":
        return w.abs()
    if criterion == "l2":
        return w.pow(2)
    if criterion == "taylor":
        return (w * stat).abs()
    if criterion == "hessian":
        return 0.5 * stat * w.pow(2)
    raise SearchpruneError(f"criterion {criterion!r} does not score single weights; valid for "
                           f"unstructured / N:M: {', '.join(UNSTRUCTURED_CRITERIA)}")


@torch.no_grad()
def activation_scores(model: nn.Module, layers: list[str], data: Iterable) -> dict[str, torch.Tensor]:
    """Mean post-ReLU activation per output channel of each layer, over ``data``.

    The activation of a layer is the output of the BatchNorm / ReLU modules that directly
    follow it in execution order (ReLU applied here if the model applies it functionally)."""
    batches = _batches(data, "activation")
    order: list[tuple[str, nn.Module]] = []
    names = {m: n for n, m in model.named_modules()}
    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(lambda mod, i, o: order.append((names[mod], o)))
             for m in leaves]
    sums: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    was_training = model.training
    model.eval()
    try:
        for xb, _ in batches:
            order.clear()
            model(xb)
            for i, (name, out) in enumerate(order):
                if name not in layers:
                    continue
                site = out
                j = i + 1
                while j < len(order) and isinstance(modules[order[j][0]], _FOLLOWERS) and \
                        order[j][1].shape == out.shape:
                    site = order[j][1]
                    j += 1
                dims = [0] + list(range(2, site.dim()))
                s = F.relu(site).mean(dim=dims)
                sums[name] = sums.get(name, 0) + s
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {n: v / len(batches) for n, v in sums.items()}


class ChannelScoreImportance(tp.importance.Importance):
    """torch-pruning importance from precomputed per-output-channel scores of some layers;
    coupled layers in a group add their scores. Groups without scores fall back to L1."""

    def __init__(self, scores: dict[nn.Module, torch.Tensor]):
        self.scores = scores
        self.fallback = tp.importance.MagnitudeImportance(p=1)

    @torch.no_grad()
    def __call__(self, group):
        total, found = None, False
        for i, (dep, idxs) in enumerate(group):
            if dep.pruning_fn not in (tpf.prune_conv_out_channels, tpf.prune_linear_out_channels):
                continue
            if dep.layer not in self.scores:
                continue
            root = torch.tensor(group[i].root_idxs)
            vals = self.scores[dep.layer][idxs].float()
            if total is None:
                total = torch.zeros(len(group[0].idxs))
            total.scatter_add_(0, root, vals)
            found = True
        return total if found else self.fallback(group)


def channel_scores(model: nn.Module, layers: list[str], criterion: str,
                   data: Iterable | None) -> dict[nn.Module, torch.Tensor]:
    """Per-output-channel scores for ``hessian`` and ``activation`` structured pruning."""
    modules = dict(model.named_modules())
    if criterion == "activation":
        scores = activation_scores(model, layers, data)
    else:
        stats = gradient_stats(model, data, criterion)
        scores = {n: weight_scores(modules[n].weight, criterion, stats[n]).flatten(1).sum(1)
                  for n in layers}
    return {modules[n]: s for n, s in scores.items()}
