"""The HTML report in a real headless Chromium, the plotly figure API, and the dashboard."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import searchprune as sp
from searchprune.report import build_report, hypervolume_history, write_report

ROOT = Path(__file__).resolve().parent.parent
HW = ["stm32f746-tflm-cmsisnn", "stm32g031-cgen"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from conftest import TINY_SPACE
    tmp = tmp_path_factory.mktemp("report")
    space = tmp / "tiny.yaml"
    space.write_text(TINY_SPACE)
    runs = tmp / "runs"
    sp.search(space, hardware=HW, n_trials=8, name="rep", runs_dir=runs, quiet=True, seed=2)
    return sp.load_study("rep", runs), runs


def test_plot_pareto_returns_a_figure_with_every_trial(study):
    result, _ = study
    fig = result.plot_pareto(x="peak_ram_bytes", y="accuracy", profile=HW[1])
    points = sum(len(t.x) for t in fig.data)
    assert points == (result.trials["state"] == "COMPLETE").sum()
    front = [t for t in fig.data if t.name.startswith("Pareto front")][0]
    assert sorted(front.customdata) == sorted(result.pareto_for(HW[1])["number"])
    # the SRAM budget of the 8 KiB part is drawn
    assert any(getattr(s, "x0", None) == 8192 for s in fig.layout.shapes)


def test_report_is_self_contained(study):
    result, runs = study
    text = build_report(result)
    assert "<script src=" not in text and "<link " not in text  # nothing loaded from a CDN
    assert "Plotly" in text and "rep" in text
    path = result.write_report(runs / "rep" / "report.html")
    assert path.read_text().startswith("<!DOCTYPE") and "Plotly" in path.read_text()
    assert path.stat().st_size > 1_000_000  # plotly.js is inside
    numbers, hv = hypervolume_history(result)
    assert len(numbers) == len(result.trials)
    assert all(b >= a for a, b in zip(hv, hv[1:]))  # a front never loses volume


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_report_renders_in_headless_chromium(study, tmp_path):
    chromium, driver_path = _chromium(), shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("no Chromium / chromedriver here (the test command installs Debian's "
                    "chromium and chromium-driver where apt-get is allowed)")
    webdriver = pytest.importorskip("selenium.webdriver")
    result, runs = study
    path = write_report(result, runs / "rep" / "report.html")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,3000"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(driver_path))
    try:
        driver.get(path.resolve().as_uri())
        deadline = time.time() + 30
        plots = []
        while time.time() < deadline:
            plots = driver.execute_script(
                "return Array.from(document.querySelectorAll('.js-plotly-plot')).map("
                "p => ({title: (p.layout.title || {}).text || '', points: p.data.reduce("
                "(n, t) => n + (t.x ? t.x.length : 0), 0), markers: p.querySelectorAll("
                "'.scatterlayer .point').length}))")
            if plots and all(p["points"] > 0 for p in plots):
                break
            time.sleep(0.5)
        driver.save_screenshot(str(tmp_path / "report.png"))
    finally:
        driver.quit()
    completed = int((result.trials["state"] == "COMPLETE").sum())
    scatters = [p for p in plots if p["title"].startswith("test accuracy vs")]
    assert len(scatters) == 3 * len(HW)
    for p in scatters:  # every completed trial is drawn, and really rendered as a marker
        assert p["points"] == completed and p["markers"] == completed, p
    assert (tmp_path / "report.png").stat().st_size > 10_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_serves_the_study_with_metric_names(study):
    pytest.importorskip("optuna_dashboard")
    result, runs = study
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "searchprune", "dashboard", "rep", "--port",
                             str(port), "--runs-dir", str(runs)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline, data = time.time() + 60, None
        while time.time() < deadline and data is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    data = json.loads(r.read())
            except OSError:
                time.sleep(0.3)
        assert data is not None, "the dashboard did not answer"
        studies = data["study_summaries"]
        assert [s["study_name"] for s in studies] == ["rep"]
        sid = studies[0]["study_id"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{sid}", timeout=5) as r:
            detail = json.loads(r.read())
        assert detail["objective_names"] == result.objectives  # not values_0, values_1
        attrs = {a["key"] for t in detail["trials"] for a in t["user_attrs"]}
        assert "feasible" in attrs  # feasibility is visible in the dashboard
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert f"http://127.0.0.1:{port}/dashboard/" in out


@pytest.mark.bad_input
def test_dashboard_warns_when_served_beyond_this_machine(study):
    pytest.importorskip("optuna_dashboard")
    result, runs = study
    port = _free_port()
    # 127.0.0.2 is still loopback, but not the default: the command must warn
    proc = subprocess.Popen([sys.executable, "-m", "searchprune", "dashboard", "rep", "--host",
                             "127.0.0.2", "--port", str(port), "--runs-dir", str(runs)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        line = proc.stderr.readline()
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    assert "warning" in line and "anyone who can reach this address" in line
