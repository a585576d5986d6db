"""The README's picture and table: the demo search, its report, a screenshot of the first
front in headless Chromium (Debian's chromium + chromium-driver, selenium).

Writes docs/front.png and benchmarks/results/readme_front.md (the front as a Markdown
table) and prints the table. Run: python benchmarks/readme_figure.py  (about 1 minute)
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import searchprune as sp  # noqa: E402
from searchprune.report import write_report  # noqa: E402

HW = ["stm32f746-tflm-cmsisnn", "stm32g031-cgen"]


def main() -> None:
    runs = Path(tempfile.mkdtemp(prefix="searchprune-readme-"))
    result = sp.search("digits_plain", hardware=HW, n_trials=30, seed=0, name="demo",
                       runs_dir=runs, quiet=True)
    table = result.front_table(HW[1])
    cols = ["number", "accuracy", "latency_ms", "peak_ram_bytes", "flash_bytes",
            "params_n_blocks", "params_channels_0", "params_block_0", "params_kernel_size"]
    md = ["| " + " | ".join(c.replace("params_", "") for c in cols) + " |",
          "|" + "---|" * len(cols)]
    for _, r in table.iterrows():
        md.append("| " + " | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c])
                                    for c in cols) + " |")
    trials = result.trials
    summary = (f"{len(trials)} trials, {int((~trials['trained']).sum())} rejected by the cost "
               f"gate before training, front on {HW[1]} (8 KiB SRAM, 64 KiB flash):")
    text = summary + "\n\n" + "\n".join(md) + "\n"
    out = ROOT / "benchmarks/results/readme_front.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    report = write_report(result, runs / "demo" / "report.html")
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 f"--user-data-dir={runs / 'chrome'}", "--window-size=1200,1000"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts,
                              service=webdriver.ChromeService(shutil.which("chromedriver")))
    try:
        driver.get(report.resolve().as_uri())
        time.sleep(3)
        # the 8 KiB part's accuracy vs peak RAM, with its SRAM line
        title = f"test accuracy vs peak RAM (bytes) on {HW[1]}"
        plot = next(p for p in driver.find_elements(By.CLASS_NAME, "js-plotly-plot")
                    if driver.execute_script("return arguments[0].layout.title.text", p) == title)
        plot.screenshot(str(ROOT / "docs/front.png"))
    finally:
        driver.quit()
    print(f"wrote {ROOT / 'docs/front.png'} and {out}")


if __name__ == "__main__":
    main()
