"""Fit a profile's latency coefficients to measured latencies of known models.

``calibrate`` takes rows of (model, input shape, measured latency) for one board and runtime,
traces each model, sums the work of each op kind exactly as the cost model prices it, and
solves for the cycles-per-MAC coefficients by least squares. With fewer rows than op kinds,
related kinds share one scale factor on the base profile's coefficients, keeping the base's
ratios between them (depthwise with pointwise, then everything convolutional, then all MACs
alike); a kind that does under 5 % of every row's MACs cannot be pinned down and scales with
the group that does the most work. The base's ratios are the prior: start from the
calibrated profile of the closest core and runtime.
The other coefficients (element-wise, pooling, per-op overhead) keep the base profile's values.
"""
from __future__ import annotations

import csv
import dataclasses
import importlib
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import yaml

from . import zoo
from .cost import lower, op_work
from .errors import ConfigError, SearchpruneError
from .graph import Graph, trace
from .hardware import HardwareProfile, load_profile

MAC_COEFFICIENTS = ("conv_cycles_per_mac", "depthwise_cycles_per_mac",
                    "pointwise_cycles_per_mac", "fc_cycles_per_mac")
# coefficient groups tried from the most detailed down, until there are enough rows
GROUPINGS = (
    (("conv_cycles_per_mac",), ("depthwise_cycles_per_mac",), ("pointwise_cycles_per_mac",),
     ("fc_cycles_per_mac",)),
    (("conv_cycles_per_mac",), ("depthwise_cycles_per_mac", "pointwise_cycles_per_mac"),
     ("fc_cycles_per_mac",)),
    (("conv_cycles_per_mac", "depthwise_cycles_per_mac", "pointwise_cycles_per_mac"),
     ("fc_cycles_per_mac",)),
    (MAC_COEFFICIENTS,),
)


@dataclass(frozen=True)
class Measurement:
    """A measured latency (ms) of a model given as a zoo name or ``pkg.module:factory``."""

    model: str
    latency_ms: float
    input_shape: tuple | None = None
    label: str = ""


@dataclass
class CalibrationResult:
    """The fitted profile, per-row fit errors and leave-one-out errors (fractions)."""

    profile: HardwareProfile
    groups: tuple
    rows: list[dict]
    loo_errors: list[float] | None

    @property
    def median_fit_error(self) -> float:
        return statistics.median(abs(r["error"]) for r in self.rows)

    @property
    def median_loo_error(self) -> float | None:
        return statistics.median(abs(e) for e in self.loo_errors) if self.loo_errors else None

    def record(self) -> dict:
        """What a fitted profile's ``source.calibration`` says: rows, groups, errors (%)."""
        return {"rows": [r["label"] or r["model"] for r in self.rows],
                "fitted_groups": [list(g) for g in self.groups],
                "fit_error_median_pct": round(100 * self.median_fit_error, 2),
                "fit_errors_pct": {(r["label"] or r["model"]): round(100 * r["error"], 2)
                                   for r in self.rows},
                "loo_error_median_pct": None if self.median_loo_error is None
                else round(100 * self.median_loo_error, 2)}


def resolve_model(spec: str, source: str = "argument", field: str = "model") -> Callable:
    """A zoo name or ``pkg.module:factory`` -> the factory callable (errors name ``source``
    and ``field``)."""
    if spec in zoo.MODELS:
        return zoo.MODELS[spec]
    if ":" not in spec:
        raise ConfigError(source, field, spec,
                          f"not a zoo model ({', '.join(zoo.MODELS)}) nor 'pkg.module:factory'")
    mod_name, fn_name = spec.split(":", 1)
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(source, field, spec, f"cannot be imported: {e}") from None
    return fn


def build_measured(m: Measurement):
    """(model, input_shape) of a measurement; a factory may return either a model or a pair."""
    out = resolve_model(m.model)()
    model, shape = out if isinstance(out, tuple) else (out, m.input_shape)
    if m.input_shape is not None:
        shape = m.input_shape
    if shape is None:
        raise ConfigError("argument", "input_shape", None, f"needed for model {m.model!r}")
    return model, tuple(shape)


def _features(graph: Graph, profile: HardwareProfile) -> dict[str, float]:
    """Work per coefficient, counted on the graph as the runtime runs it (as estimate does)."""
    graph = lower(graph, profile)
    work: dict[str, float] = {"op_overhead_cycles": float(len(graph.ops))}
    for op in graph.ops:
        name, w = op_work(op, profile)
        work[name] = work.get(name, 0.0) + w
    return work


MIN_SHARE = 0.05  # a coefficient is fitted only where its ops do >= 5 % of some row's MACs


def _identifiable(group: tuple, feats: list[dict]) -> bool:
    """Whether some row spends enough of its MAC work in ``group`` to pin its coefficient."""
    for f in feats:
        total = sum(f.get(c, 0.0) for c in MAC_COEFFICIENTS)
        if total and sum(f.get(c, 0.0) for c in group) / total >= MIN_SHARE:
            return True
    return False


def _solve(feats: list[dict], targets: np.ndarray, groups, base: dict,
           fixed: dict) -> np.ndarray | None:
    """Scale factors, one per group, on the base coefficients (None if not identifiable)."""
    a = np.array([[sum(f.get(c, 0.0) * base[c] for c in g) for g in groups] for f in feats])
    b = targets - np.array([sum(f.get(c, 0.0) * v for c, v in fixed.items()) for f in feats])
    if np.linalg.matrix_rank(a) < len(groups):
        return None
    # relative residuals: a small model's row counts as much as a large one's
    w = 1.0 / targets
    scale, *_ = np.linalg.lstsq(a * w[:, None], b * w, rcond=None)
    return scale if np.all(scale > 0) else None


def _fit_scales(feats, cycles, used, weak, prior, fixed) -> list[float] | None:
    """One scale per group in ``used`` plus, last, the board's overall scale (all MAC kinds
    alike) that the ``weak`` kinds follow."""
    overall = _solve(feats, cycles, (MAC_COEFFICIENTS,), prior, fixed)
    if overall is None:
        return None
    scales = _solve(feats, cycles, used, prior,
                    {**fixed, **{c: overall[0] * prior[c] for c in weak}})
    return None if scales is None else [*scales, overall[0]]


def _with_scales(profile: HardwareProfile, groups, scales, base: dict, name=None):
    values = dict(dataclasses.asdict(profile.latency))
    for g, s in zip(groups, scales):
        for key in g:
            values[key] = round(float(s) * base[key], 4)
    return dataclasses.replace(profile, name=name or profile.name,
                               latency=dataclasses.replace(profile.latency, **values))


def calibrate(measurements: Sequence[Measurement], base: str | HardwareProfile,
              name: str | None = None) -> CalibrationResult:
    """Fit ``base``'s MAC coefficients to ``measurements`` (at least one row)."""
    base = load_profile(base)
    if not measurements:
        raise SearchpruneError("calibrate needs at least one measured latency")
    graphs = [trace(*build_measured(m)) for m in measurements]
    feats = [_features(g, base) for g in graphs]
    cycles = np.array([m.latency_ms * 1e-3 * base.clock_hz for m in measurements])
    prior = {c: getattr(base.latency, c) for c in MAC_COEFFICIENTS}
    fixed = {f.name: getattr(base.latency, f.name) for f in dataclasses.fields(base.latency)
             if f.name not in MAC_COEFFICIENTS}
    for groups in GROUPINGS:
        # a kind no row pins down follows the board's overall scale
        weak = tuple(c for g in groups if not _identifiable(g, feats) for c in g)
        used = tuple(g for g in groups if _identifiable(g, feats))
        if len(used) > len(measurements):
            continue
        scales = _fit_scales(feats, cycles, used, weak, prior, fixed)
        if scales is not None:
            break
    else:
        raise SearchpruneError("calibration found no positive fit: check the measured latencies")
    fitted = _with_scales(base, used + (weak,), scales, prior, name)
    rows = []
    for m, g in zip(measurements, graphs):
        pred = _predict(g, fitted)
        rows.append({"model": m.model, "label": m.label, "measured_ms": m.latency_ms,
                     "predicted_ms": pred, "error": pred / m.latency_ms - 1})
    loo = None
    if len(measurements) > len(used):
        loo = []
        for i in range(len(measurements)):
            keep = [j for j in range(len(measurements)) if j != i]
            sc = _fit_scales([feats[j] for j in keep], cycles[keep], used, weak, prior, fixed)
            if sc is None:
                continue
            p = _with_scales(base, used + (weak,), sc, prior)
            loo.append(_predict(graphs[i], p) / measurements[i].latency_ms - 1)
    return CalibrationResult(fitted, used, rows, loo)


def _predict(graph: Graph, profile: HardwareProfile) -> float:
    from .cost import estimate_graph
    return estimate_graph(graph, profile).latency_ms


def read_measurements(path: str | Path) -> list[Measurement]:
    """A CSV with columns ``model``, ``latency_ms`` and optionally ``input_shape`` (1x3x32x32)."""
    path = Path(path)
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise ConfigError(str(path), "<file>", str(path), f"cannot be read: {e}") from None
    out = []
    for i, row in enumerate(rows, start=2):
        for key in ("model", "latency_ms"):
            if not row.get(key):
                raise ConfigError(str(path), f"line {i}.{key}", row.get(key), "missing")
        resolve_model(row["model"], str(path), f"line {i}.model")
        try:
            lat = float(row["latency_ms"])
        except ValueError:
            raise ConfigError(str(path), f"line {i}.latency_ms", row["latency_ms"],
                              "must be a number") from None
        if lat <= 0:
            raise ConfigError(str(path), f"line {i}.latency_ms", lat, "must be > 0")
        shape = None
        if row.get("input_shape"):
            try:
                shape = tuple(int(v) for v in row["input_shape"].replace("x", ",").split(","))
            except ValueError:
                raise ConfigError(str(path), f"line {i}.input_shape", row["input_shape"],
                                  "must look like 1x3x32x32") from None
        out.append(Measurement(row["model"], lat, shape, row.get("label", "")))
    return out


def write_profile(result: CalibrationResult, path: str | Path, base_path: str | Path) -> Path:
    """Write the fitted profile as YAML: the base file with new latency coefficients and a
    ``source.calibration`` record of the rows, the fit and the leave-one-out error."""
    data = yaml.safe_load(Path(base_path).read_text())
    data["name"] = result.profile.name
    data["latency"] = dataclasses.asdict(result.profile.latency)
    data.setdefault("source", {})["calibration"] = result.record()
    from .io import atomic_write_text
    return atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
