"""Search spaces: a YAML file -> architecture choices, pruning choices, training budget.

Example (``search_spaces/digits_plain.yaml``)::

    name: digits_plain
    task: digits
    family: plain
    arch:
      n_blocks: {choices: [1, 2, 3]}
      channels: {choices: [8, 16, 24, 32], per: n_blocks}   # one value per block
      block: {choices: [conv, dwsep], per: n_blocks}
      kernel_size: {choices: [3, 5]}
    pruning:
      granularity: structured
      criterion: {choices: [l1, taylor]}
      ratio: {low: 0.0, high: 0.7}
    training: {epochs: 4, finetune_epochs: 2, batch_size: 64, lr: 0.01}

A parameter is a constant, ``{choices: [...]}``, or ``{low, high}`` (ints give an int range;
``step`` and ``log`` optional). ``per: <int param>`` samples one value per block;
``per: <per-block list param>`` one per unit of its sum. ``resolution`` resizes the input.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn as nn

from .. import _config as cfg
from ..errors import ConfigError
from .families import FAMILIES, resolve_family

BUNDLED_DIR = cfg.bundled_dir("search_spaces")
from ..pruning.criteria import CRITERIA, UNSTRUCTURED_CRITERIA
from ..pruning.schedules import CURVES

GRANULARITIES = ("structured", "unstructured")
SCHEDULES = ("one_shot", "iterative", "lottery")


@dataclass(frozen=True)
class Param:
    """One searchable (or fixed) parameter."""

    name: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    per: str | None = None
    value: Any = None  # a constant

    def suggest(self, trial, name: str):
        if self.choices is not None:
            return trial.suggest_categorical(name, list(self.choices))
        if self.low is None:
            return self.value
        if isinstance(self.low, int) and isinstance(self.high, int) and not isinstance(self.step, float):
            return trial.suggest_int(name, self.low, self.high, step=int(self.step or 1), log=self.log)
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)

    @property
    def extremes(self) -> tuple:
        if self.choices is not None:
            return self.choices[0], self.choices[-1]
        if self.low is None:
            return self.value, self.value
        return self.low, self.high


def is_valid_nm(text: str) -> bool:
    """'2:4' style N:M patterns with 0 < N < M."""
    try:
        n, m = (int(v) for v in str(text).split(":"))
    except ValueError:
        return False
    return 0 < n < m


@dataclass(frozen=True)
class PruningSpec:
    """Per-layer ratio range, granularity and criterion (searchable), and how to prune:
    ``one_shot``, ``iterative`` (``steps`` prune + fine-tune rounds on ``curve``) or
    ``lottery`` (iterative magnitude pruning rewound to ``rewind_epoch``); ``distill`` uses the
    trial's dense model as teacher while fine-tuning."""

    granularity: Param
    criterion: Param
    ratio_low: float
    ratio_high: float
    schedule: str = "one_shot"
    steps: int = 1
    curve: str = "geometric"
    distill: bool = False
    rewind_epoch: int = 1


@dataclass(frozen=True)
class TrainingSpec:
    epochs: int
    finetune_epochs: int
    batch_size: int
    lr: float
    qat_epochs: int = 0         # quantisation-aware fine-tuning epochs (0: post-training only)
    qat_max_drop: float = 0.02  # ... run when int8 accuracy falls more than this below float


@dataclass(frozen=True)
class SearchSpace:
    """A parsed search space; ``sample(trial)`` draws an architecture (define-by-run)."""

    name: str
    task: str
    family: str
    arch: dict[str, Param]
    pruning: PruningSpec
    training: TrainingSpec
    description: str = ""
    path: str = field(default="", compare=False)
    builder_fn: Any = field(default=None, compare=False, repr=False)  # set by search_pruning

    def builder(self):
        if self.builder_fn is not None:
            return self.builder_fn
        return resolve_family(self.family, self.path or "argument")

    def sample(self, trial) -> dict:
        """Architecture parameters for one trial. A parameter with ``per: X`` gets one value
        per unit of X: X's value if X is an int, the sum of X's list if X is itself per-block
        (e.g. ``expand`` per block, with ``depth`` per stage)."""
        return self._resolve(lambda p, name: p.suggest(trial, name))

    def extreme(self, which: str) -> dict:
        """The smallest (``which="min"``) or largest architecture of the space."""
        idx = 0 if which == "min" else 1
        return self._resolve(lambda p, name: p.extremes[idx])

    def _resolve(self, value_of) -> dict:
        out: dict[str, Any] = {}
        pending = dict(self.arch)
        while pending:
            progressed = False
            for name, p in list(pending.items()):
                if p.per is None:
                    out[name] = value_of(p, name)
                elif p.per in out:
                    ref = out[p.per]
                    n = sum(int(v) for v in ref) if isinstance(ref, list) else int(ref)
                    out[name] = [value_of(p, f"{name}_{i}") for i in range(n)]
                else:
                    continue
                del pending[name]
                progressed = True
            if not progressed:  # a cycle of per references (rejected at load time)
                raise ConfigError(self.path or self.name, "arch", list(pending),
                                  "per references form a cycle")
        return out

    def input_shape(self, arch: dict, task_shape: tuple) -> tuple:
        """The model's input shape: the task's, resized when the space searches resolution."""
        if "resolution" in arch and len(task_shape) == 3:
            return (task_shape[0], int(arch["resolution"]), int(arch["resolution"]))
        return tuple(task_shape)

    def build(self, arch: dict, input_shape: tuple, num_classes: int) -> nn.Module:
        return self.builder()(arch, tuple(input_shape), num_classes)


def _param(name: str, raw: Any, src: str, prefix: str) -> Param:
    field_path = f"{prefix}.{name}"
    if not isinstance(raw, dict):
        if isinstance(raw, (list, tuple)):
            raise ConfigError(src, field_path, raw, "a list of options goes under 'choices:'",
                              f"write {name}: {{choices: {list(raw)}}}")
        return Param(name, value=raw)
    cfg.check_keys(raw, src, field_path, required=[], optional=["choices", "low", "high", "step",
                                                                 "log", "per"])
    per = raw.get("per")
    if "choices" in raw:
        choices = raw["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(src, f"{field_path}.choices", choices, "must be a non-empty list")
        return Param(name, choices=tuple(choices), per=per)
    if "low" not in raw or "high" not in raw:
        raise ConfigError(src, field_path, raw, "needs 'choices' or both 'low' and 'high'")
    low, high = raw["low"], raw["high"]
    for key, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(src, f"{field_path}.{key}", v, "must be a number")
    if low > high:
        raise ConfigError(src, field_path, raw, "low must be <= high")
    return Param(name, low=low, high=high, step=raw.get("step"), log=bool(raw.get("log", False)),
                 per=per)


def space_from_dict(data: dict, source: str = "<dict>") -> SearchSpace:
    """Validate a space mapping; errors name ``source``, the field path and the value."""
    cfg.check_keys(data, source, "", required=["name", "task", "family", "arch", "pruning",
                                               "training"], optional=["description"])
    family = cfg.string(data, "family", source)
    resolve_family(family, source)  # fail now on an unknown family, not in trial 1
    arch_raw = cfg.mapping(data, "arch", source)
    if not arch_raw:
        raise ConfigError(source, "arch", arch_raw, "needs at least one parameter")
    arch = {str(k): _param(str(k), v, source, "arch") for k, v in arch_raw.items()}
    for p in arch.values():
        if p.per is not None and p.per not in arch:
            raise ConfigError(source, f"arch.{p.name}.per", p.per,
                              "must name another arch parameter", f"known: {', '.join(arch)}")
        seen, q = {p.name}, p
        while q.per is not None:
            if q.per in seen:
                raise ConfigError(source, f"arch.{p.name}.per", p.per, "per references form a cycle")
            seen.add(q.per)
            q = arch[q.per]
    pr = cfg.mapping(data, "pruning", source)
    cfg.check_keys(pr, source, "pruning", required=["ratio"],
                   optional=["granularity", "criterion", "schedule", "steps", "curve", "distill",
                             "rewind_epoch"])
    gran = _param("granularity", pr.get("granularity", "structured"), source, "pruning")
    for g in (gran.choices or (gran.value,)):
        if g not in GRANULARITIES and not is_valid_nm(g):
            raise ConfigError(source, "pruning.granularity", g,
                              "must be structured, unstructured or N:M with 0 < N < M (e.g. 2:4)")
    crit = _param("criterion", pr.get("criterion", "l1"), source, "pruning")
    for c in (crit.choices or (crit.value,)):
        if c not in CRITERIA:
            raise ConfigError(source, "pruning.criterion", c,
                              f"unknown criterion; valid: {', '.join(CRITERIA)}")
    ratio = pr["ratio"]
    if isinstance(ratio, dict):
        cfg.check_keys(ratio, source, "pruning.ratio", required=["low", "high"])
        lo = cfg.number(ratio, "low", source, "pruning.ratio", allow_zero=True)
        hi = cfg.number(ratio, "high", source, "pruning.ratio", allow_zero=True)
    else:
        lo = hi = cfg.number(pr, "ratio", source, "pruning", allow_zero=True)
    for key, v in (("low", lo), ("high", hi)):
        if not 0 <= v < 1:
            raise ConfigError(source, f"pruning.ratio.{key}", v, "must be in [0, 1)")
    if lo > hi:
        raise ConfigError(source, "pruning.ratio", ratio, "low must be <= high")
    schedule = pr.get("schedule", "one_shot")
    if schedule not in SCHEDULES:
        raise ConfigError(source, "pruning.schedule", schedule, f"valid: {', '.join(SCHEDULES)}")
    steps = cfg.number(pr, "steps", source, "pruning", integer=True, maximum=100,
                       default=1 if schedule == "one_shot" else 3)
    curve = pr.get("curve", "geometric")
    if curve not in CURVES:
        raise ConfigError(source, "pruning.curve", curve, f"valid: {', '.join(CURVES)}")
    grans = gran.choices or (gran.value,)
    crits = crit.choices or (crit.value,)
    if "activation" in crits and any(g != "structured" for g in grans):
        raise ConfigError(source, "pruning.criterion", "activation",
                          "scores channels, so it needs granularity: structured; for "
                          f"unstructured / N:M use {', '.join(UNSTRUCTURED_CRITERIA)}")
    if schedule == "lottery" and "structured" in grans:
        raise ConfigError(source, "pruning.schedule", schedule,
                          "lottery-ticket rewinding needs unstructured or N:M granularity")
    tr = cfg.mapping(data, "training", source)
    cfg.check_keys(tr, source, "training", required=["epochs"],
                   optional=["finetune_epochs", "batch_size", "lr", "qat_epochs", "qat_max_drop"])
    training = TrainingSpec(
        epochs=cfg.number(tr, "epochs", source, "training", integer=True, maximum=10000),
        finetune_epochs=cfg.number(tr, "finetune_epochs", source, "training", integer=True,
                                   allow_zero=True, maximum=10000, default=1),
        batch_size=cfg.number(tr, "batch_size", source, "training", integer=True,
                              maximum=1 << 20, default=64),
        lr=cfg.number(tr, "lr", source, "training", maximum=10.0, default=0.01),
        qat_epochs=cfg.number(tr, "qat_epochs", source, "training", integer=True,
                              allow_zero=True, maximum=10000, default=0),
        qat_max_drop=cfg.number(tr, "qat_max_drop", source, "training", allow_zero=True,
                                maximum=1.0, default=0.02))
    return SearchSpace(name=cfg.string(data, "name", source), task=cfg.string(data, "task", source),
                       family=family, arch=arch,
                       pruning=PruningSpec(
                           gran, crit, lo, hi, schedule, steps, curve,
                           cfg.boolean(pr, "distill", source, "pruning"),
                           cfg.number(pr, "rewind_epoch", source, "pruning", integer=True,
                                      allow_zero=True, maximum=10000, default=1)),
                       training=training, description=str(data.get("description", "")),
                       path=source)


def bundled_spaces() -> dict[str, Path]:
    """Bundled space names -> YAML paths."""
    return cfg.bundled(BUNDLED_DIR)


def load_space(name_or_path: str | Path | SearchSpace) -> SearchSpace:
    """A bundled space by name (``"digits_plain"``) or a YAML file by path."""
    if isinstance(name_or_path, SearchSpace):
        return name_or_path
    path = cfg.find_yaml(name_or_path, BUNDLED_DIR, "search space")
    return space_from_dict(cfg.read_yaml(path), str(path))


def sample_architectures(per_space: int = 4, seed: int = 1,
                         names: list[str] | None = None) -> list[tuple[str, SearchSpace, dict]]:
    """``per_space`` random architectures from each bundled space (all by default), as
    (space name, space, arch): the sample the export checks run on."""
    import optuna
    out = []
    for name in names or list(bundled_spaces()):
        space = load_space(name)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        for _ in range(per_space):
            trial = study.ask()
            out.append((name, space, space.sample(trial)))
            study.tell(trial, 0.0)
    return out


def build_as_trained(space: SearchSpace, arch: dict, input_shape: tuple, num_classes: int,
                     seed: int):
    """``space.build`` in eval mode with BatchNorm statistics and affine parameters drawn as
    training leaves them. At initialisation every BN folds into the same all-zero bias, and
    the converter stores identical constant buffers once: such files are smaller than any
    trained model's."""
    import torch
    torch.manual_seed(seed)
    model = space.build(arch, input_shape, num_classes)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0, 0.1)
    return model.eval()


def list_spaces() -> list[SearchSpace]:
    return [load_space(p) for p in bundled_spaces().values()]


__all__ = ["FAMILIES", "Param", "PruningSpec", "SearchSpace", "TrainingSpec", "bundled_spaces",
           "build_as_trained", "list_spaces", "load_space", "sample_architectures",
           "space_from_dict"]
