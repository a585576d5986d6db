"""Pareto dominance and hypervolume (pure numpy)."""
from __future__ import annotations

import numpy as np


def _to_minimize(values: np.ndarray, maximize) -> np.ndarray:
    signs = np.where(np.asarray(maximize, dtype=bool), -1.0, 1.0)
    return np.asarray(values, dtype=float) * signs


def non_dominated(values, maximize) -> np.ndarray:
    """Boolean mask of the rows no other row dominates (better or equal everywhere,
    strictly better somewhere). ``maximize`` holds one flag per column."""
    v = _to_minimize(values, maximize)
    n = len(v)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        others = v[np.arange(n) != i]
        dominated = np.any(np.all(others <= v[i], axis=1) & np.any(others < v[i], axis=1))
        mask[i] = not dominated
    return mask


def hypervolume(values, maximize, reference) -> float:
    """Volume dominated by ``values`` up to ``reference`` (in the metrics' own units).
    Exact, by recursive slicing: fine for the few objectives and points of a front."""
    v = _to_minimize(values, maximize)
    ref = _to_minimize(np.asarray(reference, dtype=float)[None, :], maximize)[0]
    v = v[np.all(v < ref, axis=1)]
    if len(v) == 0:
        return 0.0
    v = v[non_dominated(v, [False] * v.shape[1])]
    return float(_hv(v, ref))


def _hv(points: np.ndarray, ref: np.ndarray) -> float:
    if points.shape[1] == 1:
        return float(ref[0] - points[:, 0].min())
    order = np.argsort(points[:, 0])
    pts = points[order]
    volume = 0.0
    for i in range(len(pts)):
        upper = pts[i + 1, 0] if i + 1 < len(pts) else ref[0]
        width = upper - pts[i, 0]
        if width > 0:
            volume += width * _hv(pts[: i + 1, 1:], ref[1:])
    return volume
