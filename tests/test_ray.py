"""The Ray Tune backend on a local Ray (2 CPUs): same pipeline, same Optuna storage."""
import os
from pathlib import Path

import pytest
import yaml

import searchprune as sp
from conftest import TINY_SPACE

ray = pytest.importorskip("ray", reason="Ray Tune is not installed (pip install -e '.[ray]')")
ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
HW = ["stm32f746-tflm-cmsisnn", "stm32g031-cgen"]


@pytest.fixture(scope="module")
def local_ray():
    os.environ["RAY_AUTH_MODE"] = "disabled"
    path = os.pathsep.join([str(ROOT), str(TESTS)])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "RAY_AUTH_MODE": "disabled"}})
    yield
    ray.shutdown()


@pytest.mark.concurrency
def test_ray_search_writes_the_optuna_study(local_ray, tiny_space, tmp_path):
    runs = tmp_path / "runs"
    result = sp.search(tiny_space, hardware=HW, n_trials=4, name="onray", runs_dir=runs,
                       backend="ray", workers=2, quiet=True, seed=0)
    loaded = sp.load_study("onray", runs)  # what front / report / dashboard read
    trials = loaded.trials
    assert len(trials) == 4 and set(trials["state"]) <= {"COMPLETE", "PRUNED"}
    assert trials[f"latency_ms@{HW[1]}"].notna().all()
    assert {"feasible", "trained", "accuracy"} <= set(trials.columns)
    front = loaded.pareto
    assert len(front) >= 1 and front["feasible"].all() and front["trained"].all()
    ok = trials[trials["feasible"] & trials["trained"]]
    best = ok["accuracy"].max()
    assert best in set(front["accuracy"])  # the most accurate feasible trial is on the front
    assert len(result.trials) == 4
    # workers train in their own temporary folders (they may be other machines): each
    # trained model comes back with its result and the driver stores it for export
    models = runs / "onray" / "models"
    trained = set(trials.loc[trials["trained"], "number"])
    assert trained and {p.name for p in models.glob("*.pt")} == {f"{n}.pt" for n in trained}
    from searchprune.io import load_state
    assert all(t.dim() >= 0 for t in load_state(models / f"{min(trained)}.pt").values())


@pytest.mark.fault
def test_ray_worker_death_is_retried_not_hung(local_ray, tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    monkeypatch.setenv("SEARCHPRUNE_TEST_MARKER", str(marker))
    ray.shutdown()  # restart so workers see the marker variable
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]),
                                       "SEARCHPRUNE_TEST_MARKER": str(marker),
                                       "RAY_AUTH_MODE": "disabled"}})
    data = yaml.safe_load(TINY_SPACE)
    data.update(family="helpers:dies_once_in_ray_worker", arch={"width": {"choices": [8, 32]}})
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    result = sp.search(path, hardware=HW[:1], n_trials=2, name="dies", runs_dir=tmp_path / "r",
                       backend="ray", workers=1, quiet=True, max_retries=2)
    assert marker.read_text() == "died"  # a worker really died
    states = list(result.trials["state"])
    assert states.count("RUNNING") == 0
    assert states.count("COMPLETE") + states.count("FAIL") == len(states) >= 2
