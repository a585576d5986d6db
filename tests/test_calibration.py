"""Calibration: fitting a profile's cycles-per-MAC coefficients to measured latencies."""
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import searchprune as sp
from searchprune.calibration import MAC_COEFFICIENTS, Measurement, build_measured, calibrate
from searchprune.cost import estimate_graph
from searchprune.graph import trace

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["resnet8", "dscnn_kws", "fc_autoencoder", "helpers:pointwise_stack",
          "helpers:depthwise_stack"]


def with_coefficients(profile, **coefs):
    return dataclasses.replace(profile, latency=dataclasses.replace(profile.latency, **coefs))


def measured_on(profile, models):
    """Latencies a board with exactly ``profile``'s coefficients would measure."""
    return [Measurement(m, estimate_graph(trace(*build_measured(Measurement(m, 1.0))),
                                          profile).latency_ms, label=m) for m in models]


def test_calibration_recovers_known_coefficients():
    base = sp.load_profile("stm32l4r5-xcubeai")
    true = with_coefficients(base, conv_cycles_per_mac=2.0, depthwise_cycles_per_mac=3.5,
                             pointwise_cycles_per_mac=1.5, fc_cycles_per_mac=4.0)
    start = with_coefficients(base, **dict.fromkeys(MAC_COEFFICIENTS, 1.0))
    result = calibrate(measured_on(true, MODELS), start, name="my-board")
    assert len(result.groups) == 4  # five rows pin down all four kinds apart
    for c in MAC_COEFFICIENTS:
        assert getattr(result.profile.latency, c) == pytest.approx(getattr(true.latency, c),
                                                                   rel=1e-3), c
    assert result.profile.name == "my-board"
    assert result.median_fit_error < 1e-3
    assert len(result.loo_errors) == 5 and result.median_loo_error < 1e-3


def test_a_kind_no_row_pins_down_keeps_the_prior_ratio_at_the_board_scale():
    base = sp.load_profile("stm32l4r5-xcubeai")
    prior = dict(conv_cycles_per_mac=1.0, depthwise_cycles_per_mac=1.0,
                 pointwise_cycles_per_mac=1.0, fc_cycles_per_mac=2.0)
    true = with_coefficients(base, **{k: 3 * v for k, v in prior.items()})  # 3x slower board
    # conv and pointwise rows only: the fully connected coefficient is not identifiable
    result = calibrate(measured_on(true, ["resnet8", "helpers:pointwise_stack"]),
                       with_coefficients(base, **prior))
    assert ("fc_cycles_per_mac",) not in result.groups
    assert result.profile.latency.conv_cycles_per_mac == pytest.approx(3.0, rel=1e-3)
    assert result.profile.latency.fc_cycles_per_mac == pytest.approx(6.0, rel=1e-3)


def test_one_row_fits_one_scale_and_has_no_loo_error():
    base = sp.load_profile("stm32l4r5-xcubeai")
    true = with_coefficients(base, **{c: 2 * getattr(base.latency, c) for c in MAC_COEFFICIENTS})
    result = calibrate(measured_on(true, ["dscnn_kws"]), base)
    # convolutional kinds share one scale; the classifier's few MACs follow the board's scale
    assert result.groups == (MAC_COEFFICIENTS[:3],)
    assert result.loo_errors is None and result.median_loo_error is None
    for c in MAC_COEFFICIENTS:
        assert getattr(result.profile.latency, c) == pytest.approx(
            2 * getattr(base.latency, c), rel=1e-3)


def test_cli_calibrate_writes_a_profile_that_loads(tmp_path):
    base = sp.load_profile("ra6m4-tflm-cmsisnn")
    true = with_coefficients(base, conv_cycles_per_mac=1.2, depthwise_cycles_per_mac=2.4,
                             pointwise_cycles_per_mac=0.9, fc_cycles_per_mac=3.0)
    rows = measured_on(true, MODELS)
    csv_path = tmp_path / "measured.csv"
    csv_path.write_text("model,latency_ms,label\n" + "".join(
        f"{m.model},{m.latency_ms},{m.label}\n" for m in rows))
    out = tmp_path / "my_board.yaml"
    env = {"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "searchprune", "calibrate", "--csv",
                           str(csv_path), "--base", "ra6m4-tflm-cmsisnn", "--out", str(out),
                           "--name", "my-board"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "leave-one-out median error: 0.00%" in done.stdout
    fitted = sp.load_profile(out)
    assert fitted.name == "my-board"
    assert fitted.latency.depthwise_cycles_per_mac == pytest.approx(2.4, rel=1e-3)
    record = yaml.safe_load(out.read_text())["source"]["calibration"]
    assert record["rows"] == MODELS and record["loo_error_median_pct"] == 0.0
