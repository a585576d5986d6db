"""The trial pipeline both orchestrators run: sample -> cost gate -> train -> prune ->
fine-tune -> evaluate -> exact costs. Optuna calls :func:`run_trial` directly; a Ray worker
calls the very same function through Tune's OptunaSearch trial."""
from __future__ import annotations

import copy
import dataclasses
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import optuna
import torch
import torch.nn as nn

from .. import training
from ..cost import estimate_graph
from ..graph import trace
from ..hardware import HardwareProfile
from ..pruning import (NEEDS_DATA, apply_masks, layer_widths, lottery_ticket, parse_nm,
                       prunable_layers, prune, prune_iteratively, sparsity)
from ..spaces import SearchSpace
from ..training import Task
from .metrics import COST_METRICS, Constraint, is_maximized


@dataclass
class TrialContext:
    """What every trial of one study shares."""

    space: SearchSpace
    task: Task
    profiles: list[HardwareProfile]
    objectives: list[str]              # resolved metric names, e.g. latency_ms@<profile>
    constraints: list[Constraint] = field(default_factory=list)
    seed: int = 0
    train_fn: Callable = training.train
    evaluate_fn: Callable = training.evaluate
    early_stop_margin: float | None = None  # stop a trial whose epoch-1 accuracy trails a
                                            # cheaper front member by more than this
    completed: Callable | None = None       # () -> completed FrozenTrials (Ray: from storage)
    models_dir: str | None = None           # where trained trial models are saved (tensors)

    @property
    def needs_int8(self) -> bool:
        """Int8 accuracy is computed only when an objective or constraint uses it."""
        return "accuracy_int8" in self.objectives or \
            any(c.metric == "accuracy_int8" for c in self.constraints)

    def for_arch(self, arch: dict) -> "TrialContext":
        """This context with the task resized to the architecture's input resolution."""
        task = self.task.for_input(self.space.input_shape(arch, self.task.input_shape))
        return self if task is self.task else dataclasses.replace(self, task=task)


def cost_metrics(model: nn.Module, input_shape: tuple, profiles: list[HardwareProfile]) -> dict:
    """Every cost metric on every profile, keyed ``metric@profile``, plus the reports."""
    graph = trace(model, (1, *input_shape))
    out, reports = {}, {}
    for p in profiles:
        r = estimate_graph(graph, p)
        reports[p.name] = r
        for k, v in r.metrics().items():
            out[f"{k}@{p.name}"] = v
    return out, reports


def hard_constraints(metrics: dict, ctx: TrialContext) -> dict[str, float]:
    """Constraint name -> value (feasible when <= 0): SRAM and flash of every profile, then
    the user's bounds. A bound on accuracy is only known after training (None before)."""
    out: dict[str, float] = {}
    for p in ctx.profiles:
        out[f"sram@{p.name}"] = metrics[f"peak_ram_bytes@{p.name}"] - p.sram_bytes
        out[f"flash@{p.name}"] = metrics[f"flash_bytes@{p.name}"] - p.flash_bytes
    for c in ctx.constraints:
        if c.metric in metrics and metrics[c.metric] is not None:
            out[str(c)] = c.violation(metrics[c.metric])
    return out


def _data_batches(task: Task, batch_size: int, n: int = 4):
    x, y = task.tensors("train")
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, min(len(x), n * batch_size),
                                                                      batch_size)]


def sample_candidate(trial, ctx: TrialContext):
    """Architecture + pruning plan for this trial, the untrained dense model, and the trial's
    context (its task resized to the sampled input resolution)."""
    space = ctx.space
    arch = space.sample(trial)
    ctx = ctx.for_arch(arch)
    torch.manual_seed(ctx.seed + trial.number)
    model = space.build(arch, ctx.task.input_shape, ctx.task.num_classes)
    granularity = space.pruning.granularity.suggest(trial, "granularity")
    criterion = space.pruning.criterion.suggest(trial, "criterion")
    example = torch.zeros(2, *ctx.task.input_shape)
    layers = prunable_layers(model, example, granularity)
    lo, hi = space.pruning.ratio_low, space.pruning.ratio_high
    nm = parse_nm(granularity)
    if nm is not None:  # the pattern fixes the ratio: 1 - N/M of every group
        ratios = {name: 1 - nm[0] / nm[1] for name in layers}
    else:
        ratios = {name: (trial.suggest_float(f"ratio.{name}", lo, hi) if hi > lo else lo)
                  for name in layers}
    plan = {"granularity": granularity, "criterion": criterion, "ratios": ratios}
    return arch, plan, model, ctx


def _prune_kwargs(plan: dict, ctx: TrialContext) -> dict:
    return {"granularity": plan["granularity"], "example_inputs": torch.zeros(2, *ctx.task.input_shape),
            "round_to": max(p.runtime.channel_multiple for p in ctx.profiles)}


class EarlyStopped(Exception):
    """The trial's first-epoch accuracy is clearly dominated by a cheaper front member."""

    def __init__(self, by: int, accuracy: float):
        super().__init__(f"dominated after epoch 1 by trial {by} (accuracy {accuracy:.4f})")
        self.by, self.accuracy = by, accuracy


def dominating_trial(accuracy: float, costs: dict, ctx: TrialContext, completed) -> int | None:
    """A completed, feasible, trained trial at least ``early_stop_margin`` more accurate
    than ``accuracy`` and no more costly on any cost objective; None if there is none."""
    cost_objs = [o for o in ctx.objectives if not is_maximized(o)]
    for t in completed:
        a = t.user_attrs
        if not (a.get("feasible") and a.get("trained")):
            continue
        m = a["metrics"]
        if m["accuracy"] >= accuracy + ctx.early_stop_margin and \
                all(m[o] <= costs[o] for o in cost_objs):
            return t.number
    return None


def train_and_prune(model: nn.Module, plan: dict, ctx: TrialContext, seed: int,
                    on_epoch: Callable | None = None):
    """Train, prune by the plan's schedule, fine-tune. Returns (model, dense accuracy or None).
    ``on_epoch(epoch, model)`` watches the dense training (early stopping raises from it)."""
    tr, pr = ctx.space.training, ctx.space.pruning
    kwargs = _prune_kwargs(plan, ctx)
    data = _data_batches(ctx.task, tr.batch_size) if plan["criterion"] in NEEDS_DATA else None

    def fit(m, epochs, s, lr=tr.lr, teacher=None):
        ctx.train_fn(m, ctx.task, epochs, tr.batch_size, lr, s, after_step=apply_masks,
                     teacher=teacher)

    if pr.schedule == "lottery":
        seeds = itertools.count(seed)  # each training run of the lottery gets its own seed
        model = lottery_ticket(model, plan["ratios"], pr.steps,
                               lambda m, n: fit(m, n, next(seeds)), tr.epochs,
                               pr.rewind_epoch, **kwargs)
        return model, None
    if tr.epochs:  # 0 for a pruning-only search of a trained model
        ctx.train_fn(model, ctx.task, tr.epochs, tr.batch_size, tr.lr, seed, on_epoch=on_epoch)
    dense_acc = ctx.evaluate_fn(model, ctx.task)
    teacher = copy.deepcopy(model).eval() if pr.distill else None
    steps = pr.steps if pr.schedule == "iterative" else 1
    per_step = max(1, round(tr.finetune_epochs / steps)) if tr.finetune_epochs else 0

    def finetune(m, k):
        if per_step:
            fit(m, per_step, seed + 1 + k, tr.lr / 2, teacher)

    model = prune_iteratively(model, plan["ratios"], steps, pr.curve, finetune,
                              criterion=plan["criterion"], data=data, **kwargs)
    return model, dense_acc


def _early_stop_watch(trial, ctx: TrialContext, metrics: dict) -> Callable | None:
    """The ``on_epoch`` hook that stops a trial after its first epoch when a completed trial
    dominates it by the margin; None when early stopping is off or cannot apply."""
    if ctx.early_stop_margin is None or ctx.space.training.epochs <= 1 or \
            ctx.space.pruning.schedule == "lottery":
        return None
    completed = ctx.completed() if ctx.completed else trial.study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))

    def on_epoch(epoch, m):
        if epoch == 0:
            acc = ctx.evaluate_fn(m, ctx.task)
            by = dominating_trial(acc, metrics, ctx, completed)
            if by is not None:
                raise EarlyStopped(by, acc)
    return on_epoch


def run_trial(trial, ctx: TrialContext) -> list[float]:
    """One trial. Records metrics and constraints in the trial; returns objective values.

    A candidate that breaks a hard SRAM / flash / cost constraint on any profile is finished
    without training: its costs and violations are recorded and its accuracy is 0.0 in the
    objective values (``trained=False`` in its attributes; reports show it as not trained).
    """
    t0 = time.perf_counter()
    arch, plan, model, ctx = sample_candidate(trial, ctx)
    widths_dense = layer_widths(model)
    t1 = time.perf_counter()

    # cost gate: the pruned shapes of the untrained model (magnitude pruning decides which
    # channels; how many, and so the cost, does not depend on the criterion)
    gated = prune(copy.deepcopy(model), plan["ratios"], criterion="l1", **_prune_kwargs(plan, ctx))
    metrics, _ = cost_metrics(gated, ctx.task.input_shape, ctx.profiles)
    cons = hard_constraints(metrics, ctx)
    t2 = time.perf_counter()
    trial.set_user_attr("sample_seconds", t1 - t0)  # Optuna sampling + building the model
    trial.set_user_attr("gate_seconds", t2 - t1)    # pruned copy + cost model on every MCU
    trial.set_user_attr("arch", arch)
    trial.set_user_attr("pruning", {k: plan[k] for k in ("granularity", "criterion")})
    rejected = any(v > 0 for v in cons.values())
    trial.set_user_attr("gate_rejected", rejected)
    if rejected:
        return _finish(trial, ctx, metrics, cons, accuracy=None, trained=False)

    try:
        model, dense_acc = train_and_prune(model, plan, ctx, ctx.seed + trial.number,
                                           _early_stop_watch(trial, ctx, metrics))
    except EarlyStopped as e:
        trial.set_user_attr("early_stopped_by", e.by)
        trial.set_user_attr("epoch1_accuracy", e.accuracy)
        _finish(trial, ctx, metrics, cons, accuracy=None, trained=False)
        raise optuna.TrialPruned(str(e)) from None
    accuracy = ctx.evaluate_fn(model, ctx.task)
    accuracy_int8 = int8_accuracy(trial, model, accuracy, ctx) if ctx.needs_int8 else None
    trial.set_user_attr("achieved_ratios", achieved_ratios(model, plan, widths_dense))
    trial.set_user_attr("sparsity", sparsity(model))
    trial.set_user_attr("dense_accuracy", dense_acc)
    metrics, reports = cost_metrics(model, ctx.task.input_shape, ctx.profiles)
    metrics["accuracy"] = accuracy
    metrics["accuracy_int8"] = accuracy_int8
    if ctx.models_dir:
        from ..io import save_state
        save_state(model, Path(ctx.models_dir) / f"{trial.number}.pt")
    trial.set_user_attr("input_shape", list(ctx.task.input_shape))
    trial.set_user_attr("layer_costs", {  # per-layer breakdown for the report
        name: [[row["layer"], row["kind"], row["latency_ms"], row["output_bytes"],
                row["flash_bytes"]] for row in r.layers] for name, r in reports.items()})
    cons = hard_constraints(metrics, ctx)
    return _finish(trial, ctx, metrics, cons, accuracy=accuracy, trained=True)


def int8_accuracy(trial, model: nn.Module, accuracy: float, ctx: TrialContext) -> float:
    """Post-training int8 accuracy; where it falls more than ``training.qat_max_drop`` below
    the float accuracy and ``training.qat_epochs`` > 0, quantisation-aware fine-tuning too
    (Adam at lr / 10), keeping the better. Records the method in the trial."""
    from ..quantize import QAT
    from ..quantize import int8_accuracy as measure
    tr = ctx.space.training
    ptq = measure(model, ctx.task)
    trial.set_user_attr("int8_method", "ptq")
    if tr.qat_epochs == 0 or accuracy - ptq <= tr.qat_max_drop:
        return ptq
    qat = dict(epochs=tr.qat_epochs, lr=tr.lr / 10, batch_size=tr.batch_size,
               seed=ctx.seed + trial.number)
    with_qat = measure(model, ctx.task, qat=QAT(ctx.task, **qat))
    trial.set_user_attr("accuracy_int8_ptq", ptq)
    trial.set_user_attr("accuracy_int8_qat", with_qat)
    if with_qat <= ptq:
        return ptq
    trial.set_user_attr("int8_method", "qat")
    trial.set_user_attr("qat", qat)
    return with_qat


def achieved_ratios(model: nn.Module, plan: dict, widths_dense: dict) -> dict[str, float]:
    """Per layer: the fraction of output channels removed (structured) or of weights zeroed."""
    if plan["granularity"] == "structured":
        widths = layer_widths(model)
        return {n: 1 - widths[n] / widths_dense[n] for n in plan["ratios"] if n in widths}
    modules = dict(model.named_modules())
    return {n: float((modules[n].weight == 0).float().mean()) for n in plan["ratios"]}


def _finish(trial, ctx: TrialContext, metrics: dict, cons: dict, accuracy, trained: bool):
    metrics = {"accuracy_int8": None, **metrics, "accuracy": accuracy}
    for c in ctx.constraints:  # accuracy bounds of an untrained candidate count as violated
        if str(c) not in cons:
            cons[str(c)] = abs(c.bound) + 1.0
    for name, value in cons.items():
        trial.set_constraint(name, float(value))
    feasible = all(v <= 0 for v in cons.values())
    trial.set_user_attr("metrics", metrics)
    trial.set_user_attr("constraints", cons)
    trial.set_user_attr("violations", [k for k, v in cons.items() if v > 0])
    trial.set_user_attr("feasible", feasible)
    trial.set_user_attr("trained", trained)
    return [float(metrics[o]) if metrics[o] is not None else 0.0 for o in ctx.objectives]


__all__ = ["COST_METRICS", "TrialContext", "run_trial", "cost_metrics", "hard_constraints"]
