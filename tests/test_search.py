import numpy as np
import optuna
import pytest

import searchprune as sp
from searchprune.errors import ConfigError, UnknownNameError
from searchprune.search import objective as objective_mod
from searchprune.search.pareto import non_dominated

HW = ["stm32f746-tflm-cmsisnn", "stm32g031-cgen"]


def check_front(result):
    front = result.pareto
    trials = result.trials
    assert {"number", "state", "duration", "feasible", "accuracy", "latency_ms",
            "peak_ram_bytes", "flash_bytes"} <= set(trials.columns)
    assert trials["feasible"].dtype == bool
    assert front["feasible"].all() and (front["state"] == "COMPLETE").all()
    ok = trials[trials["feasible"] & trials["trained"]]
    objs = result.objectives
    maximize = [o == "accuracy" for o in objs]
    # every front member is non-dominated among all feasible trials ...
    for _, row in front.iterrows():
        others = ok[ok["number"] != row["number"]][objs].to_numpy(float)
        v = row[objs].to_numpy(float)
        s = np.where(maximize, -1, 1)
        assert not np.any(np.all(others * s <= v * s, axis=1) & np.any(others * s < v * s, axis=1))
    # ... and every non-dominated feasible trial is on the front
    mask = non_dominated(ok[objs].to_numpy(float), maximize)
    assert set(ok[mask]["number"]) == set(front["number"])


def test_search_in_memory_end_to_end(tiny_space):
    result = sp.search(tiny_space, hardware=HW, n_trials=5, seed=0, storage="memory", quiet=True)
    trials = result.trials
    assert len(trials) == 5 and (trials["state"] == "COMPLETE").all()
    assert result.objectives == ["accuracy", f"latency_ms@{HW[0]}", f"peak_ram_bytes@{HW[0]}",
                                 f"flash_bytes@{HW[0]}"]
    for p in HW:
        assert trials[f"latency_ms@{p}"].notna().all()
    trained = trials[trials["trained"]]
    assert ((trained["accuracy"] > 0.1) & (trained["accuracy"] <= 1)).all()
    assert trials["duration"].gt(0).all()
    check_front(result)
    # a snapshot (what a report is built from) keeps the trials it read, while the live
    # result sees trials added since
    snap = result.snapshot()
    result.study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    assert len(result.trials) == 6 and len(snap.trials) == 5
    assert list(snap.pareto["number"]) == list(result.pareto["number"])


def test_sqlite_storage_resumes_and_keeps_trials(tiny_space, tmp_path):
    runs = tmp_path / "runs"
    first = sp.search(tiny_space, hardware=HW, n_trials=3, name="resume", runs_dir=runs, quiet=True)
    assert (runs / "resume" / "study.db").is_file()
    kept = first.trials[["number", "accuracy", "latency_ms"]].copy()
    second = sp.search(tiny_space, hardware=HW, n_trials=5, name="resume", runs_dir=runs,
                       quiet=True)
    assert len(second.trials) == 5
    again = second.trials.set_index("number").loc[kept["number"], ["accuracy", "latency_ms"]]
    assert np.allclose(again.to_numpy(float), kept[["accuracy", "latency_ms"]].to_numpy(float),
                       equal_nan=True)
    loaded = sp.load_study("resume", runs)
    assert len(loaded.trials) == 5
    check_front(loaded)


@pytest.mark.bad_input
def test_resume_with_other_settings_is_refused(tiny_space, tmp_path):
    runs = tmp_path / "runs"
    sp.search(tiny_space, hardware=HW, n_trials=1, name="s", runs_dir=runs, quiet=True)
    with pytest.raises(ConfigError, match="was created with"):
        sp.search(tiny_space, hardware=HW[:1], n_trials=2, name="s", runs_dir=runs, quiet=True)
    assert len(sp.load_study("s", runs).trials) == 1


def test_cost_gate_skips_training_of_candidates_that_do_not_fit(tiny_space):
    calls = []

    def counting_train(model, *args, **kwargs):
        calls.append(sum(p.numel() for p in model.parameters()))
        return model

    ctx_cls = objective_mod.TrialContext
    space = sp.load_space(tiny_space)
    ctx = ctx_cls(space, sp.digits_task(), [sp.load_profile("stm32g031-cgen")],
                  ["accuracy", "peak_ram_bytes@stm32g031-cgen"], train_fn=counting_train)
    study = optuna.create_study(directions=["maximize", "minimize"])
    # 128 channels on 8x8 maps: 8 KiB per activation cannot fit in 8 KiB of SRAM
    big = {"n_blocks": 2, "channels_0": 128, "channels_1": 128, "block_0": "conv",
           "block_1": "conv", "criterion": "l1", "ratio.0": 0.0, "ratio.3": 0.0}
    study.enqueue_trial(big)
    study.optimize(lambda t: objective_mod.run_trial(t, ctx), n_trials=1)
    t = study.trials[0]
    assert calls == []
    assert t.user_attrs["trained"] is False and t.user_attrs["feasible"] is False
    assert "sram@stm32g031-cgen" in t.user_attrs["violations"]
    assert t.user_attrs["metrics"]["peak_ram_bytes@stm32g031-cgen"] > 8192
    small = {"n_blocks": 1, "channels_0": 8, "block_0": "conv", "criterion": "l1", "ratio.0": 0.0}
    study.enqueue_trial(small)
    study.optimize(lambda t: objective_mod.run_trial(t, ctx), n_trials=1)
    assert len(calls) == 2  # train + fine-tune of the candidate that fits


def test_per_profile_fronts(tiny_space):
    result = sp.search(tiny_space, hardware=HW, n_trials=6, seed=1, storage="memory", quiet=True)
    a, b = result.pareto_for(HW[0]), result.pareto_for(HW[1])
    assert set(a["number"]) <= set(result.trials[result.trials[f"feasible@{HW[0]}"]]["number"])
    assert set(b["number"]) <= set(result.trials[result.trials[f"feasible@{HW[1]}"]]["number"])
    with pytest.raises(UnknownNameError):
        result.pareto_for("esp32s3-tflm-espnn")


@pytest.mark.bad_input
@pytest.mark.parametrize("kwargs, error, fragment", [
    (dict(objectives=["accuracy", "latncy_ms"]), UnknownNameError, "did you mean 'latency_ms'"),
    (dict(constraints=["latency_ms=<5"]), ConfigError, "expected METRIC<=NUMBER"),
    (dict(constraints={"speed": 5}), UnknownNameError, "unknown metric"),
    (dict(hardware=["no-such-board"]), UnknownNameError, "hardware profile"),
    (dict(n_trials=0), ConfigError, "n_trials"),
    (dict(name="../escape"), ConfigError, "study name"),
    (dict(sampler="bayes"), UnknownNameError, "sampler"),
])
def test_bad_search_arguments(tiny_space, kwargs, error, fragment):
    args = dict(hardware=HW, n_trials=1, storage="memory", quiet=True)
    args.update(kwargs)
    with pytest.raises(error, match=fragment):
        sp.search(tiny_space, **args)


@pytest.mark.bad_input
def test_unwritable_runs_dir(tiny_space, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="cannot write the study folder"):
        sp.search(tiny_space, hardware=HW, n_trials=1, runs_dir=blocker / "runs", quiet=True)
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("pruning", [
    {"granularity": "structured", "criterion": "activation", "schedule": "iterative", "steps": 2,
     "curve": "cubic", "distill": True, "ratio": 0.5},
    {"granularity": "unstructured", "criterion": "hessian", "schedule": "lottery", "steps": 2,
     "rewind_epoch": 1, "ratio": 0.6},
    {"granularity": "2:4", "criterion": "l1", "ratio": 0.5},
])
def test_every_schedule_runs_in_a_trial(tmp_path, pruning):
    import yaml
    from conftest import TINY_SPACE
    data = yaml.safe_load(TINY_SPACE)
    data["pruning"] = pruning
    data["training"]["epochs"] = 2
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    result = sp.search(path, hardware=["stm32f746-tflm-cmsisnn"], n_trials=1, storage="memory",
                       quiet=True)
    t = result.study.trials[0]
    assert t.state.name == "COMPLETE" and t.user_attrs["trained"], t.user_attrs.get("error")
    ratios = t.user_attrs["achieved_ratios"]
    if pruning["granularity"] == "structured":
        assert all(0.3 <= r <= 0.6 for r in ratios.values())
    elif pruning["granularity"] == "2:4":  # layers with < 4 inputs per group stay dense
        nm = [r for r in ratios.values() if r > 0]
        assert nm and all(r == pytest.approx(0.5, abs=0.02) for r in nm)
    else:  # exact fraction of zeros per layer, after fine-tuning
        assert all(r == pytest.approx(pruning["ratio"], abs=0.02) for r in ratios.values())
    assert t.user_attrs["metrics"]["accuracy"] > 0.1
