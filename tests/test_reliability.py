"""Faults and concurrency: failing trials, kill -9 and resume, two workers on one study."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

import searchprune as sp
from conftest import TINY_SPACE
from searchprune.errors import SearchpruneError
from searchprune.search import objective as objective_mod

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
HW = ["stm32f746-tflm-cmsisnn"]


def space_file(tmp_path, **changes):
    data = yaml.safe_load(TINY_SPACE)
    for key, value in changes.items():
        data[key] = value
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.fault
def test_failing_trials_are_recorded_and_the_study_goes_on(tmp_path):
    path = space_file(tmp_path, family="helpers:flaky", arch={"width": {"choices": [8, 16, 24]}})
    result = sp.search(path, hardware=HW, n_trials=4, storage="memory", quiet=True, seed=3)
    trials = result.trials
    failed = trials[trials["state"] == "FAIL"]
    assert (trials["state"] == "COMPLETE").sum() == 4  # failures do not count as done
    assert len(failed) >= 1
    assert failed["error"].str.contains("shape mismatch for width 16").all()


@pytest.mark.fault
def test_consecutive_failures_stop_with_a_summary(tmp_path):
    path = space_file(tmp_path, family="helpers:broken", arch={"width": {"choices": [8, 32]}})
    with pytest.raises(SearchpruneError, match="3 consecutive failed trials.*cannot build width"):
        sp.search(path, hardware=HW, n_trials=5, storage="memory", quiet=True,
                  max_consecutive_failures=3)


@pytest.mark.parametrize("sampler", ["nsga2", "tpe", "random"])
def test_same_seed_same_candidates_other_samplers(tiny_space, sampler):
    a, b = (sp.search(tiny_space, hardware=HW, n_trials=3, seed=5, storage="memory", quiet=True,
                      sampler=sampler) for _ in range(2))
    assert [t.params for t in a.study.trials] == [t.params for t in b.study.trials]


def test_early_stopping_prunes_a_clearly_dominated_trial(tiny_space):
    space = sp.load_space(tiny_space)
    space = type(space)(**{**vars(space), "training": type(space.training)(
        epochs=2, finetune_epochs=1, batch_size=64, lr=0.01)})
    ctx = objective_mod.TrialContext(space, sp.digits_task(), [sp.load_profile(HW[0])],
                                     ["accuracy", f"latency_ms@{HW[0]}"], early_stop_margin=0.1,
                                     evaluate_fn=lambda model, task: 0.5)
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trial(optuna.trial.create_trial(
        values=[0.99, 0.0], user_attrs={"feasible": True, "trained": True, "metrics": {
            "accuracy": 0.99, f"latency_ms@{HW[0]}": 0.0}}))
    study.optimize(lambda t: objective_mod.run_trial(t, ctx), n_trials=1)
    t = study.trials[1]
    assert t.state.name == "PRUNED"
    assert t.user_attrs["early_stopped_by"] == 0 and t.user_attrs["epoch1_accuracy"] == 0.5
    assert t.user_attrs["metrics"][f"latency_ms@{HW[0]}"] > 0  # costs are still recorded


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])}


def _counts(db: Path, name: str):
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    return {s: sum(t.state.name == s for t in study.trials) for s in ("COMPLETE", "RUNNING",
                                                                       "FAIL", "PRUNED")}, study


@pytest.mark.fault
def test_kill_9_then_resume_keeps_completed_trials(tmp_path):
    path = space_file(tmp_path, training={"epochs": 10, "finetune_epochs": 1, "batch_size": 16,
                                          "lr": 0.01})
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "searchprune", "search", "--space", str(path), "--hw", HW[0],
           "--trials", "5", "--name", "killed", "--runs-dir", str(runs), "--quiet"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = runs / "killed" / "study.db"
    deadline = time.time() + 120
    counts = {}
    while time.time() < deadline:
        if db.exists():
            try:
                counts, _ = _counts(db, "killed")
            except Exception:
                counts = {}
            if counts.get("COMPLETE", 0) >= 2 and counts.get("RUNNING", 0) == 1:
                break
        time.sleep(0.1)
    assert proc.poll() is None, "the search ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    counts, study = _counts(db, "killed")
    assert counts["COMPLETE"] >= 2
    before = {t.number: t.values for t in study.trials if t.state.name == "COMPLETE"}
    running = [t.number for t in study.trials if t.state.name == "RUNNING"]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    counts, study = _counts(db, "killed")
    assert counts["COMPLETE"] == 5 and counts["RUNNING"] == 0, counts
    after = {t.number: t.values for t in study.trials}
    assert all(after[n] == v for n, v in before.items())  # nothing completed was lost
    for n in running:  # what was running at the kill is recorded as failed
        t = study.trials[n]
        assert t.state.name == "FAIL" and "interrupted" in t.user_attrs["error"]


@pytest.mark.concurrency
def test_two_workers_share_one_study(tmp_path, monkeypatch):
    # trials long enough (~1 s) that the second process, which needs a few seconds to
    # import torch, takes part
    path = space_file(tmp_path, training={"epochs": 8, "finetune_epochs": 1, "batch_size": 16,
                                          "lr": 0.01})
    runs = tmp_path / "runs"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(TESTS)]))
    result = sp.search(path, hardware=HW, n_trials=12, name="pair", runs_dir=runs,
                       workers=2, quiet=True)
    trials = result.trials
    numbers = list(trials["number"])
    assert len(numbers) == len(set(numbers)) == len(trials)
    assert (trials["state"] == "COMPLETE").sum() >= 12
    assert (trials["state"] == "RUNNING").sum() == 0
    pids = {result.study._storage.get_trial_system_attrs(t._trial_id)["searchprune:pid"]
            for t in result.study.trials}
    assert len(pids) == 2  # both processes ran trials


@pytest.mark.bad_input
def test_a_space_that_never_fits_stops_with_a_reason(tmp_path):
    path = space_file(tmp_path, arch={"n_blocks": 2, "channels": {"choices": [128, 96],
                                                                   "per": "n_blocks"},
                                      "block": "conv", "kernel_size": 5})
    with pytest.raises(SearchpruneError, match=r"rejected all 6 candidates.*sram@stm32g031-cgen"):
        sp.search(path, hardware=["stm32g031-cgen"], n_trials=50, storage="memory", quiet=True,
                  max_rejections=6)
