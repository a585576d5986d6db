import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from searchprune.cli import main

ROOT = Path(__file__).resolve().parent.parent


def run(*args, cwd=None):
    """The real console entry point in a subprocess: exit code, stdout, stderr."""
    proc = subprocess.run([sys.executable, "-m", "searchprune", *args], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return proc.returncode, proc.stdout, proc.stderr


def snapshot(folder: Path) -> dict:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_profiles_lists_core_clock_sram_flash(capsys):
    assert main(["profiles"]) == 0
    out = capsys.readouterr().out
    for word in ("core", "clock_mhz", "sram_kib", "flash_kib", "stm32g031-cgen", "216"):
        assert word in out


def test_spaces_lists_bundled(capsys):
    assert main(["spaces"]) == 0
    assert "digits_plain" in capsys.readouterr().out


def test_help_of_each_command():
    for cmd in ("search", "front", "profiles", "spaces", "estimate", "calibrate"):
        code, out, _ = run(cmd, "--help")
        assert code == 0 and "usage: searchprune" in out


def test_search_then_front_csv(tiny_space, tmp_path):
    code, out, err = run("search", "--space", str(tiny_space), "--hw", "stm32f746-tflm-cmsisnn",
                         "--hw", "stm32g031-cgen", "--trials", "3", "--name", "cli",
                         "--runs-dir", str(tmp_path / "runs"))
    assert code == 0, err
    assert "Pareto front of study 'cli'" in out and "[3/3]" in err  # progress is shown
    csv = tmp_path / "front.csv"
    code, out, err = run("front", "cli", "--csv", str(csv), "--runs-dir", str(tmp_path / "runs"))
    assert code == 0, err
    front = pd.read_csv(csv)
    assert len(front) >= 1 and "accuracy" in front and "latency_ms" in front
    assert front["feasible"].all()


def test_estimate_prints_totals_and_layers(capsys):
    assert main(["estimate", "--model", "searchprune.zoo:dscnn_kws", "--hw",
                 "ra6m4-tflm-cmsisnn"]) == 0
    out = capsys.readouterr().out
    assert "2656768 MACs" in out and "22604 params" in out and "depthwise" in out
    assert main(["estimate", "--model", "searchprune.zoo:dscnn_kws", "--hw", "stm32g0b1-hale",
                 "--totals-only", "--plan"]) == 0
    out = capsys.readouterr().out
    assert "arena plan (16000 B; live-set lower bound 16000 B)" in out and "offset" in out
    assert "depthwise" not in out  # --totals-only: no per-layer table


@pytest.mark.bad_input
@pytest.mark.parametrize("args, fragment", [
    (["front", "never-ran"], "unknown study"),
    (["front", "../etc"], "study name"),
    (["search", "--space", "digits_plain", "--hw", "stm32f999", "--trials", "1"],
     "unknown hardware profile"),
    (["search", "--space", "nope.yaml", "--hw", "stm32g031-cgen"], "file not found"),
    (["search", "--space", "digits_plain", "--hw", "stm32g031-cgen", "--constraint", "speed<3"],
     "unknown metric"),
    (["search", "--space", "digits_plain", "--hw", "stm32g031-cgen", "--objective", "accurcy"],
     "did you mean 'accuracy'"),
    (["estimate", "--model", "nosuchmod:f", "--hw", "stm32g031-cgen"], "cannot be imported"),
    (["estimate", "--model", "searchprune.zoo:resnet8", "--input-shape", "1,x", "--hw",
      "stm32g031-cgen"], "input-shape"),
])
def test_user_errors_exit_2_without_traceback_and_touch_nothing(tmp_path, args, fragment):
    runs = tmp_path / "runs"
    (runs / "keep").mkdir(parents=True)
    (runs / "keep" / "study.db").write_bytes(b"precious")
    before = snapshot(runs)
    if args[0] in ("front", "search"):
        args = args + ["--runs-dir", str(runs)]
    code, out, err = run(*args, cwd=tmp_path)
    assert code == 2
    assert fragment in err and "Traceback" not in err
    assert snapshot(runs) == before


@pytest.mark.bad_input
def test_bad_profile_yaml_from_cli(tmp_path):
    good = (ROOT / "hw_profiles" / "stm32g031-cgen.yaml").read_text()
    bad = tmp_path / "board.yaml"
    bad.write_text(good.replace("clock_hz: 64000000", "clock_hz: -5"))
    code, _, err = run("search", "--space", "digits_plain", "--hw", str(bad), "--runs-dir",
                       str(tmp_path / "runs"))
    assert code == 2 and str(bad) in err and "clock_hz" in err and "-5" in err
    assert "Traceback" not in err and not (tmp_path / "runs").exists()


@pytest.mark.bad_input
def test_bad_measurement_csv_names_file_line_and_value(tmp_path):
    csv_path = tmp_path / "measured.csv"
    csv_path.write_text("model,latency_ms\nresnet8,250\nmobilenet_tiny,30\n")
    out = tmp_path / "board.yaml"
    code, _, err = run("calibrate", "--csv", str(csv_path), "--base", "ra6m4-tflm-cmsisnn",
                       "--out", str(out), cwd=tmp_path)
    assert code == 2 and "Traceback" not in err
    assert str(csv_path) in err and "line 3.model" in err and "mobilenet_tiny" in err
    assert not out.exists()
