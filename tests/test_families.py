"""Model families, resolution search, bring-your-own family / data / trained model."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml

import searchprune as sp
from searchprune.errors import SearchpruneError
from searchprune.search import objective as objective_mod
from searchprune.spaces import bundled_spaces
from searchprune.training import Task, evaluate, train

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
FAMILY_SPACES = ["digits_plain", "digits_mbv2", "digits_dscnn", "digits_resnet", "digits_mlp"]


def test_every_family_has_a_bundled_space():
    families = {sp.load_space(n).family for n in bundled_spaces()}
    assert {"plain", "mbv2", "dscnn", "resnet", "mlp"} <= families


@pytest.mark.parametrize("name", FAMILY_SPACES)
@pytest.mark.parametrize("which", ["min", "max"])
def test_extremes_build_run_and_are_estimated(name, which):
    space = sp.load_space(name)
    arch = space.extreme(which)
    shape = space.input_shape(arch, (1, 8, 8))
    model = space.build(arch, shape, 10)
    assert model(torch.zeros(2, *shape)).shape == (2, 10)
    report = sp.estimate(model, (1, *shape), "stm32f746-tflm-cmsisnn")
    assert report.macs > 0 and report.params > 0 and report.arena_bytes > 0


@pytest.mark.parametrize("name", FAMILY_SPACES)
def test_largest_costs_more_than_smallest(name):
    space = sp.load_space(name)
    reports = []
    for which in ("min", "max"):
        arch = space.extreme(which)
        shape = space.input_shape(arch, (1, 8, 8))
        reports.append(sp.estimate(space.build(arch, shape, 10), (1, *shape),
                                   "stm32f746-tflm-cmsisnn"))
    assert reports[1].macs > reports[0].macs and reports[1].params > reports[0].params


def test_per_block_parameters_nest_under_per_stage_depth():
    space = sp.load_space("digits_mbv2")
    trial = optuna.trial.FixedTrial({"resolution": 12, "width_mult": 0.5, "n_stages": 2,
                                     "depth_0": 2, "depth_1": 1, "expand_0": 1, "expand_1": 6,
                                     "expand_2": 3, "kernel_0": 3, "kernel_1": 5, "kernel_2": 7})
    arch = space.sample(trial)
    assert arch["depth"] == [2, 1] and arch["expand"] == [1, 6, 3] and arch["kernel"] == [3, 5, 7]
    model = space.build(arch, space.input_shape(arch, (1, 8, 8)), 10)
    assert model(torch.zeros(1, 1, 12, 12)).shape == (1, 10)


def test_resolution_resizes_the_data_and_the_costs(digits):
    import dataclasses
    space = sp.load_space("digits_resnet")
    space = dataclasses.replace(space, pruning=dataclasses.replace(space.pruning, ratio_high=0.0))
    ctx = objective_mod.TrialContext(space, digits, [sp.load_profile("stm32f746-tflm-cmsisnn")],
                                     ["accuracy", "macs@stm32f746-tflm-cmsisnn"])
    study = optuna.create_study(directions=["maximize", "minimize"])
    for res in (8, 16):
        study.enqueue_trial({"resolution": res, "n_stages": 1, "widths_0": 8, "criterion": "l1"})
    study.optimize(lambda t: objective_mod.run_trial(t, ctx), n_trials=2)
    m8, m16 = (t.user_attrs["metrics"]["macs@stm32f746-tflm-cmsisnn"] for t in study.trials)
    fc = 8 * 10  # the classifier after global pooling does not grow with the image
    assert m16 - fc == 4 * (m8 - fc)  # same convs on 4x the pixels
    assert digits.resized((16, 16)).tensors("test")[0].shape[1:] == (1, 16, 16)
    assert all(t.user_attrs["trained"] for t in study.trials)


def test_custom_family_end_to_end(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({
        "name": "mine", "task": "digits", "family": "helpers:tiny_cnn",
        "arch": {"width": {"choices": [8, 16]}},
        "pruning": {"granularity": "structured", "ratio": {"low": 0.0, "high": 0.5}},
        "training": {"epochs": 2, "finetune_epochs": 1}}))
    result = sp.search(path, hardware=["stm32g031-cgen"], n_trials=3, storage="memory", quiet=True)
    assert (result.trials["state"] == "COMPLETE").all()
    assert len(result.pareto) >= 1 and result.pareto["trained"].all()


def _npz(path, n_train=300, n_test=100, **override):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n_train + n_test, 12)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)  # a learnable two-class rule
    arrays = {"x_train": x[:n_train], "y_train": y[:n_train], "x_test": x[n_train:],
              "y_test": y[n_train:]}
    arrays.update(override)
    np.savez(path, **arrays)
    return path


def test_npz_task_from_the_cli(tmp_path):
    data = _npz(tmp_path / "tab.npz")
    space = tmp_path / "mlp.yaml"
    cfg = yaml.safe_load((ROOT / "search_spaces" / "digits_mlp.yaml").read_text())
    cfg["training"]["epochs"] = 2
    space.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "searchprune", "search", "--space", str(space),
                           "--data", str(data), "--hw", "stm32g031-cgen", "--trials", "2",
                           "--name", "tab", "--runs-dir", str(tmp_path / "runs"), "--quiet"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    loaded = sp.load_study("tab", tmp_path / "runs")
    assert loaded.study.user_attrs["task"] == "tab"
    assert loaded.trials["accuracy"].max() > 0.6  # two classes, learnable
    pytest.importorskip("litert_torch", reason="export needs the [tflite] extra")
    # export finds the .npz again (by its resolved path) from another working directory
    trials = loaded.trials
    best = int(trials.loc[trials["trained"]].sort_values("accuracy")["number"].iloc[-1])
    out = loaded.export(best, tmp_path / "deploy", runs_dir=tmp_path / "runs")
    verify = json.loads((out / "verify.json").read_text())
    assert verify["samples"] == 100 and verify["full_int8"]


@pytest.mark.bad_input
@pytest.mark.parametrize("override, fragment", [
    ({"y_train": np.zeros(299, dtype=np.int64)}, "300 samples but y_train has 299 labels"),
    ({"x_test": np.zeros((100, 13), dtype=np.float32)}, "x_test samples (13,)"),
    ({"y_test": np.full(100, 0.5)}, "integer array"),
    ({"y_test": np.full(100, -1, dtype=np.int64)}, "labels must be in"),
])
def test_bad_npz_gets_a_clear_error(tmp_path, override, fragment):
    path = _npz(tmp_path / "bad.npz", **override)
    with pytest.raises(SearchpruneError) as e:
        Task.from_npz(path)
    assert str(path) in str(e.value) and fragment in str(e.value)


@pytest.mark.bad_input
def test_task_from_tensors_checks_lengths():
    with pytest.raises(SearchpruneError, match="10 samples but 9 labels"):
        Task((torch.zeros(10, 4), torch.zeros(9)), (torch.zeros(2, 4), torch.zeros(2)), 2)


@pytest.fixture(scope="module")
def trained(digits):
    import helpers
    torch.manual_seed(0)
    model = helpers.trained_factory()
    train(model, digits, epochs=10, batch_size=32, lr=0.01, seed=0)
    return model


def test_pruning_search_keeps_accuracy_and_cuts_latency(digits, trained):
    dense_acc = evaluate(trained, digits)
    dense = sp.estimate(trained, (1, 1, 8, 8), "stm32l4r5-xcubeai")
    result = sp.search_pruning(trained, digits, hardware=["stm32l4r5-xcubeai"],
                               ratio_range=(0.0, 0.8), criteria=["l1", "taylor"],
                               granularity="structured", n_trials=20, storage="memory",
                               quiet=True, seed=0)
    front = result.pareto
    good = front[(front["accuracy"] >= dense_acc - 0.02) &
                 ((front["latency_ms"] <= 0.7 * dense.latency_ms) |
                  (front["flash_bytes"] <= 0.7 * dense.flash_bytes))]
    assert len(good) >= 1, front[["accuracy", "latency_ms", "flash_bytes"]]
    assert evaluate(trained, digits) == dense_acc  # the user's model is left untouched
    # a model object has no name to rebuild its architecture from: export says what to do
    with pytest.raises(SearchpruneError, match="factory="):
        result.export(int(front["number"].iloc[0]), "unused")


def test_pruning_search_from_the_cli(tmp_path, trained):
    weights = tmp_path / "model.pt"
    torch.save(trained.state_dict(), weights)
    proc = subprocess.run([sys.executable, "-m", "searchprune", "search", "--model",
                           "helpers:trained_factory", "--weights", str(weights), "--data",
                           "digits", "--hw", "stm32l4r5-xcubeai", "--trials", "3", "--name",
                           "squeeze", "--runs-dir", str(tmp_path / "runs"), "--quiet"],
                          capture_output=True, text=True, cwd=TESTS)
    assert proc.returncode == 0, proc.stderr
    assert "Pareto front of study 'squeeze'" in proc.stdout
    pytest.importorskip("litert_torch", reason="export needs the [tflite] extra")
    # --model names the architecture: a pruned trial rebuilds and exports
    study = sp.load_study("squeeze", tmp_path / "runs")
    trials = study.trials
    number = int(trials.loc[trials["trained"], "number"].iloc[0])
    out = study.export(number, tmp_path / "deploy", runs_dir=tmp_path / "runs")
    config = json.loads((out / "config.json").read_text())
    assert config["model_factory"] == "helpers:trained_factory"
    from searchprune.export import load_model
    pruned = load_model(out)
    assert sum(p.numel() for p in pruned.parameters()) <= \
        sum(p.numel() for p in trained.parameters())
    assert json.loads((out / "verify.json").read_text())["full_int8"]
