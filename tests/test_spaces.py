import optuna
import pytest
import yaml

import searchprune as sp
from searchprune.errors import ConfigError, UnknownNameError
from searchprune.spaces import bundled_spaces


def test_bundled_spaces_load():
    spaces = sp.list_spaces()
    assert "digits_plain" in {s.name for s in spaces}
    s = sp.load_space("digits_plain")
    assert s.family == "plain" and s.task == "digits"
    blocks = set(s.arch["block"].choices)
    assert {"conv", "dwsep"} <= blocks  # standard and depthwise-separable convolutions


def test_sampling_is_define_by_run_with_per_block_params():
    s = sp.load_space("digits_plain")
    trial = optuna.trial.FixedTrial({"n_blocks": 2, "kernel_size": 3, "channels_0": 16,
                                     "channels_1": 32, "block_0": "conv", "block_1": "dwsep"})
    arch = s.sample(trial)
    assert arch == {"n_blocks": 2, "kernel_size": 3, "channels": [16, 32],
                    "block": ["conv", "dwsep"]}


def _space(tmp_path, mutate):
    data = yaml.safe_load(bundled_spaces()["digits_plain"].read_text())
    mutate(data)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.bad_input
@pytest.mark.parametrize("mutate, field, fragment", [
    (lambda d: d["pruning"].update(ratio={"low": 0.0, "high": 1.0}), "pruning.ratio.high", "[0, 1)"),
    (lambda d: d["pruning"].update(ratio=-0.1), "pruning.ratio", ">= 0"),
    (lambda d: d["pruning"].update(granularity="4:2"), "pruning.granularity", "N < M"),
    (lambda d: d["pruning"].update(criterion="magic"), "pruning.criterion", "unknown criterion"),
    (lambda d: d["arch"].update(n_blocks={"choices": []}), "arch.n_blocks.choices", "non-empty"),
    (lambda d: d["arch"].update(kernel_size=[3, 5]), "arch.kernel_size", "choices"),
    (lambda d: d.update(family="nosuchfamily"), "family", "unknown model family"),
    (lambda d: d.update(famly="plain"), "famly", "did you mean 'family'"),
    (lambda d: d.pop("training"), "training", "missing"),
    (lambda d: d["training"].update(epochs=0), "training.epochs", "> 0"),
    (lambda d: d["training"].update(qat_epochs=-1), "training.qat_epochs", ">= 0"),
    (lambda d: d["training"].update(qat_max_drop=1.5), "training.qat_max_drop", "1"),
    (lambda d: d["arch"]["channels"].update(per="blocks"), "arch.channels.per", "another arch"),
])
def test_bad_space_fields(tmp_path, mutate, field, fragment):
    path = _space(tmp_path, mutate)
    with pytest.raises(ConfigError) as e:
        sp.load_space(path)
    msg = str(e.value)
    assert str(path) in msg and field in msg and fragment in msg


@pytest.mark.bad_input
def test_unknown_space_name():
    with pytest.raises(UnknownNameError, match="digits_plain"):
        sp.load_space("digits_plian")
