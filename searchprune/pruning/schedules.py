"""Pruning schedules: one-shot, iterative (k steps with fine-tuning between) on a geometric,
cubic or linear curve, and lottery-ticket iterative magnitude pruning with weight rewinding.

Fine-tuning is a callback ``finetune(model, step)`` so this module stays free of any
training loop (the search passes its own)."""
from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.nn as nn

from ..errors import SearchpruneError
from .prune import MASKS_ATTR, apply_masks, layer_widths, parse_nm, prune

CURVES = ("geometric", "cubic", "linear")


def schedule_ratios(final: float, steps: int, curve: str = "geometric") -> list[float]:
    """Cumulative pruning ratio after each of ``steps`` steps, ending at ``final``.

    geometric: the same fraction of what is left each step, 1 - (1 - r)^(k/K);
    cubic (Zhu & Gupta 2017): r * (1 - (1 - k/K)^3), fast early, gentle at the end;
    linear: r * k/K."""
    if steps < 1:
        raise SearchpruneError(f"pruning steps = {steps!r}: must be >= 1")
    ks = [k / steps for k in range(1, steps + 1)]
    if curve == "geometric":
        out = [1 - (1 - final) ** t for t in ks]
    elif curve == "cubic":
        out = [final * (1 - (1 - t) ** 3) for t in ks]
    elif curve == "linear":
        out = [final * t for t in ks]
    else:
        raise SearchpruneError(f"schedule curve {curve!r}: valid: {', '.join(CURVES)}")
    out[-1] = final
    return out


def prune_iteratively(model: nn.Module, ratios: float | Mapping[str, float], steps: int = 3,
                      curve: str = "geometric", finetune: Callable[[nn.Module, int], None] | None = None,
                      granularity: str = "structured", **prune_kwargs) -> nn.Module:
    """Reach ``ratios`` (relative to the model as given) in ``steps`` prune + fine-tune rounds.
    ``steps=1`` is one-shot pruning. Returns the pruned model (structured: a smaller one)."""
    example = prune_kwargs.get("example_inputs")
    from .prune import _ratio_dict
    target = _ratio_dict(model, ratios, example, granularity)
    widths0 = layer_widths(model)
    nm = parse_nm(granularity)
    curves = {n: schedule_ratios(r, steps, curve) for n, r in target.items()}
    for k in range(steps):
        if nm is not None and k < steps - 1:
            step = {n: 0.0 for n in target}  # an N:M pattern is applied once, at the end
        elif granularity == "structured":
            widths = layer_widths(model)
            step = {n: min(max(1 - (1 - curves[n][k]) * widths0[n] / widths[n], 0.0), 0.95)
                    for n in target}
        else:
            step = {n: curves[n][k] for n in target}  # masks: fraction of the layer's weights
        if any(v > 0 for v in step.values()):
            model = prune(model, step, granularity=granularity, **prune_kwargs)
        if finetune is not None:
            finetune(model, k)
    return model


def rewind(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> nn.Module:
    """Reset every weight to its ``snapshot`` value, then re-apply the pruning masks: kept
    weights get their early-training values, pruned ones stay zero."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(snapshot[name])
        for name, b in model.named_buffers():
            if name in snapshot:
                b.copy_(snapshot[name])
    apply_masks(model)
    return model


def lottery_ticket(model: nn.Module, ratios: float | Mapping[str, float], rounds: int,
                   train: Callable[[nn.Module, int], None], epochs: int, rewind_epoch: int = 1,
                   granularity: str = "unstructured", **prune_kwargs) -> nn.Module:
    """Iterative magnitude pruning with weight rewinding (Frankle et al. 2019).

    ``train(model, n_epochs)`` trains with the masks kept (the caller passes ``apply_masks``
    as its after-step hook). Trains ``rewind_epoch`` epochs, snapshots the weights, trains to
    ``epochs``; then each of ``rounds`` rounds prunes to the next geometric ratio, rewinds the
    kept weights to the snapshot and retrains ``epochs - rewind_epoch`` epochs."""
    if granularity == "structured":
        raise SearchpruneError("lottery-ticket rewinding needs unstructured or N:M pruning: "
                               "structured pruning changes the shapes the snapshot holds")
    if not 0 <= rewind_epoch <= epochs:
        raise SearchpruneError(f"rewind_epoch = {rewind_epoch!r}: must be in [0, epochs]")
    from .prune import _ratio_dict
    target = _ratio_dict(model, ratios, prune_kwargs.get("example_inputs"), granularity)
    curves = {n: schedule_ratios(r, rounds, "geometric") for n, r in target.items()}
    if rewind_epoch:
        train(model, rewind_epoch)
    state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    snapshot = {k: v.detach().clone() for k, v in state.items()}
    if epochs - rewind_epoch:
        train(model, epochs - rewind_epoch)
    for k in range(rounds):
        prune(model, {n: c[k] for n, c in curves.items()}, granularity=granularity,
              **{**prune_kwargs, "criterion": "l1"})
        rewind(model, snapshot)
        if epochs - rewind_epoch:
            train(model, epochs - rewind_epoch)
    return model


__all__ = ["CURVES", "MASKS_ATTR", "lottery_ticket", "prune_iteratively", "rewind",
           "schedule_ratios"]
