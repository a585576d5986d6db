import itertools

import numpy as np
import pytest

from searchprune.search.pareto import hypervolume, non_dominated


def brute_force(values, maximize):
    v = np.where(maximize, -values, values)
    keep = []
    for i, a in enumerate(v):
        keep.append(not any(np.all(b <= a) and np.any(b < a) for j, b in enumerate(v) if j != i))
    return np.array(keep)


@pytest.mark.parametrize("seed", range(5))
def test_non_dominated_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 6, size=(40, 3)).astype(float)
    maximize = [True, False, False]
    mask = non_dominated(values, maximize)
    assert (mask == brute_force(values, np.array(maximize))).all()
    front = values[mask]
    for a, b in itertools.permutations(front, 2):  # no front member dominates another
        assert not (a[0] >= b[0] and np.all(a[1:] <= b[1:]) and
                    (a[0] > b[0] or np.any(a[1:] < b[1:])))


def test_hypervolume_of_known_points():
    # minimise both: points (1,3), (2,2), (3,1) with reference (4,4) -> 3 + 2 + 1 = 6
    pts = np.array([[1, 3], [2, 2], [3, 1]], float)
    assert hypervolume(pts, [False, False], [4, 4]) == pytest.approx(6.0)
    # a maximised accuracy axis: acc 0.9 at cost 1, reference acc 0 / cost 2 -> 0.9
    assert hypervolume(np.array([[0.9, 1.0]]), [True, False], [0.0, 2.0]) == pytest.approx(0.9)
    # dominated points add nothing; points beyond the reference count for nothing
    assert hypervolume(np.vstack([pts, [[3, 3], [5, 0]]]), [False, False], [4, 4]) == \
        pytest.approx(6.0)
