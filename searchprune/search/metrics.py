"""Metric names a trial records, their directions, and user constraints on them."""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ConfigError, UnknownNameError

COST_METRICS = ("latency_ms", "peak_ram_bytes", "flash_bytes", "energy_uj", "macs", "params")
MODEL_METRICS = ("accuracy", "accuracy_int8")  # accuracy_int8 needs the [tflite] extra
METRICS = MODEL_METRICS + COST_METRICS
DEFAULT_OBJECTIVES = ("accuracy", "latency_ms", "peak_ram_bytes", "flash_bytes")


def is_maximized(metric: str) -> bool:
    return metric.split("@")[0] in MODEL_METRICS


def resolve_metric(name: str, profiles: list[str]) -> str:
    """``latency_ms`` -> ``latency_ms@<first profile>``; ``latency_ms@p`` checked; ``accuracy``
    stays (it does not depend on the MCU)."""
    base, _, prof = str(name).partition("@")
    if base not in METRICS:
        raise UnknownNameError("metric", base, METRICS)
    if base == "accuracy_int8":
        try:
            import litert_torch  # noqa: F401
        except ImportError:
            raise ConfigError("argument", "objective", name, 'accuracy_int8 needs the int8 '
                              'quantizer: pip install -e ".[tflite]"') from None
    if base in MODEL_METRICS:
        if prof:
            raise ConfigError("argument", "objective", name, f"{base} does not depend on the MCU")
        return base
    if not prof:
        return f"{base}@{profiles[0]}"
    if prof not in profiles:
        raise UnknownNameError("profile in metric", prof, profiles)
    return f"{base}@{prof}"


def retarget(metric: str, profile: str) -> str:
    """The same metric on another profile (model metrics are unchanged)."""
    base = metric.split("@")[0]
    return base if base in MODEL_METRICS else f"{base}@{profile}"


@dataclass(frozen=True)
class Constraint:
    """``metric <= bound`` (or ``>=`` for maximised metrics); violated when value > 0."""

    metric: str
    bound: float
    op: str = "<="

    def violation(self, value: float) -> float:
        return value - self.bound if self.op == "<=" else self.bound - value

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.bound:g}"


_CONSTRAINT_RE = re.compile(r"^\s*([A-Za-z_]+(?:@[\w.\-]+)?)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*$")


def parse_constraints(spec, profiles: list[str]) -> list[Constraint]:
    """``{"latency_ms": 50}`` (upper bound; lower bound for accuracy) or strings like
    ``"latency_ms<=50"``, ``"accuracy>=0.9"``, ``"latency_ms@nrf52840-tflm-cmsisnn<=80"``.
    A metric without ``@profile`` is bounded on every chosen profile."""
    items: list[tuple[str, str, float]] = []
    if spec is None:
        return []
    if isinstance(spec, dict):
        for k, v in spec.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError("argument", f"constraints.{k}", v, "bound must be a number")
            items.append((k, ">=" if is_maximized(k) else "<=", float(v)))
    else:
        for s in ([spec] if isinstance(spec, str) else spec):
            m = _CONSTRAINT_RE.match(str(s))
            if not m:
                raise ConfigError("argument", "constraint", s,
                                  "expected METRIC<=NUMBER or METRIC>=NUMBER, e.g. latency_ms<=50")
            items.append((m.group(1), "<=" if m.group(2) in ("<=", "<") else ">=",
                          float(m.group(3))))
    out = []
    for metric, op, bound in items:
        base, _, prof = metric.partition("@")
        targets = [resolve_metric(metric, profiles)] if (prof or base in MODEL_METRICS) else \
            [f"{resolve_metric(base, profiles).split('@')[0]}@{p}" for p in profiles]
        out += [Constraint(t, bound, op) for t in targets]
    return out
