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


def _states(db: Path) -> dict:
    """Trial states counted with a read-only SQLite query: the test must not write to (or
    create tables in) a database the search is still initialising."""
    import sqlite3
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return dict(con.execute("SELECT state, COUNT(*) FROM trials GROUP BY state").fetchall())
    finally:
        con.close()


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
    log = tmp_path / "first-run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=_env(), stdout=out, stderr=subprocess.STDOUT)
    db = runs / "killed" / "study.db"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                counts = _states(db)
            except Exception:  # tables not created yet
                counts = {}
            if counts.get("COMPLETE", 0) >= 2 and counts.get("RUNNING", 0) == 1:
                break
        time.sleep(0.1)
    assert proc.poll() is None, f"the search ended before it could be killed:\n{log.read_text()}"
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


_DIE_RIGHT_AFTER_CREATING_A_TRIAL = """
import os, sys
import optuna
from searchprune.search.optuna_backend import open_storage
study = optuna.create_study(study_name="s", storage=open_storage("sqlite:///" + sys.argv[1]))
study.ask()  # a trial is created, RUNNING; the process dies before any objective code runs
os._exit(0)
"""


@pytest.mark.fault
def test_a_process_killed_right_after_creating_a_trial_leaves_no_orphan(tmp_path):
    from searchprune.search.optuna_backend import fail_stale_running
    db = tmp_path / "study.db"
    subprocess.run([sys.executable, "-c", _DIE_RIGHT_AFTER_CREATING_A_TRIAL, str(db)],
                   env=_env(), check=True)
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{db}")
    assert [t.state.name for t in study.trials] == ["RUNNING"]
    # its owner was written with the trial itself, so the resume recognises it as dead
    assert fail_stale_running(study) == 1
    t = optuna.load_study(study_name="s", storage=f"sqlite:///{db}").trials[0]
    assert t.state.name == "FAIL" and "interrupted" in t.user_attrs["error"]


_OPEN_AT_ONCE = """
import os, sys, time
import optuna
from searchprune.search.optuna_backend import open_storage
go = sys.argv[2]
open(go + "." + str(os.getpid()), "w").close()  # ready
while not os.path.exists(go):
    time.sleep(0.001)
study = optuna.create_study(study_name="s", storage=open_storage("sqlite:///" + sys.argv[1]),
                            load_if_exists=True)
study.add_trial(optuna.trial.create_trial(value=1.0))
"""


@pytest.mark.concurrency
def test_processes_that_create_one_new_study_at_once_all_succeed(tmp_path):
    # the first open of a new SQLite file creates its tables; three processes released at
    # the same instant race on that (optuna alone fails with "table ... already exists")
    for round_ in range(3):
        db, go = tmp_path / f"study{round_}.db", tmp_path / f"go{round_}"
        procs = [subprocess.Popen([sys.executable, "-c", _OPEN_AT_ONCE, str(db), str(go)],
                                  env=_env(), stderr=subprocess.PIPE, text=True)
                 for _ in range(3)]
        deadline = time.time() + 120
        while (len(list(tmp_path.glob(f"go{round_}.*"))) < 3 and time.time() < deadline
               and all(p.poll() is None for p in procs)):
            time.sleep(0.05)  # every process imported and waits at the barrier
        go.touch()
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
        study = optuna.load_study(study_name="s", storage=f"sqlite:///{db}")
        assert len(study.trials) == 3


@pytest.mark.concurrency
def test_two_workers_share_one_study(tmp_path, monkeypatch):
    # each process's first trial waits for the other process's first trial: both take part
    # however long the second takes to import torch
    path = space_file(tmp_path, family="helpers:wait_for_peer",
                      arch={"width": {"choices": [8, 16, 24]}},
                      training={"epochs": 4, "finetune_epochs": 1, "batch_size": 16,
                                "lr": 0.01})
    runs = tmp_path / "runs"
    peers = tmp_path / "peers"
    peers.mkdir()
    monkeypatch.setenv("SEARCHPRUNE_TEST_PEERS", str(peers))
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
