"""Cost-model accuracy on the published MLPerf Tiny measurements.

For every calibrated profile: predicted vs measured latency of the three rebuilt MLPerf Tiny
models (fit), flash vs the published .tflite sizes, peak RAM vs published RAM where a row has
one, and a leave-one-model-out (LOMO) comparison: the held-out model's latency predicted by
- MAC proxy: latency = a x MACs, a fitted per board on relative errors (what uNAS /
  MicroNets use);
- per-op-kind ratio model: one scale per board x one cycles-per-MAC ratio per op kind shared
  by all boards, fitted on all boards' other rows (log least squares; a kind the training
  rows lack gets the mean ratio);
- ours: sp.calibrate on the board's other rows, starting from a prior profile whose
  cycles-per-MAC ratios are the ratio model's (fitted without the held-out model): groups the
  rows pin down get their own scale, the rest keep the prior's ratios.
Also times sp.estimate of a 30-layer CNN. Writes benchmarks/results/cost_model_accuracy.csv
and .txt. Run: python benchmarks/cost_model_accuracy.py [measurements.csv]
"""
from __future__ import annotations

import csv
import dataclasses
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import searchprune as sp  # noqa: E402
from searchprune.io import write_rows_csv  # noqa: E402
from searchprune import zoo  # noqa: E402
from searchprune.calibration import MAC_COEFFICIENTS, Measurement, calibrate  # noqa: E402
from searchprune.cost import estimate_graph  # noqa: E402
from searchprune.graph import trace  # noqa: E402

MODELS = list(zoo.MODELS)
KINDS = list(MAC_COEFFICIENTS)


def zoo_name(model_name: str) -> str | None:
    return next((v for k, v in zoo.CALIBRATION_NAMES.items() if model_name.startswith(k)), None)


def kind_macs(graph) -> np.ndarray:
    """Plain MACs per op kind (the baseline's features: no runtime-specific rounding)."""
    w = dict.fromkeys(KINDS, 0.0)
    for op in graph.ops:
        k = f"{op.kind}_cycles_per_mac"
        if k in w:
            w[k] += op.macs
    return np.array([w[k] for k in KINDS])


def ratio_model_lomo(data, held_out):
    """Per-op-kind ratio model fitted on all boards' rows of the other models."""
    from scipy.optimize import least_squares
    boards = sorted({d["profile"] for d in data})
    train = [d for d in data if d["model"] != held_out]
    # a kind is identifiable where it does >= 5 % of some training row's MACs
    present = np.array([any(d["work"][i] >= 0.05 * d["work"].sum() for d in train)
                        for i in range(len(KINDS))])

    def unpack(x):
        s = dict(zip(boards, np.exp(x[:len(boards)])))
        r = np.exp(x[len(boards):])
        return s, r

    def resid(x):
        s, r = unpack(x)
        res = [np.log(s[d["profile"]] * (d["work"] @ r) + 1e-9) - np.log(d["cycles"]) for d in train]
        # a kind no training row pins down is pulled to the mean ratio, and a weak pull on
        # all ratios resolves directions the rows leave free (board scale vs ratio)
        lr = np.log(r)
        res += list(1.0 * (lr[~present] - lr[present].mean()))
        res += list(0.05 * (lr - lr.mean()))
        return np.array(res)

    x0 = np.zeros(len(boards) + len(KINDS))
    sol = least_squares(resid, x0)
    s, r = unpack(sol.x)
    return ({d["profile"]: s[d["profile"]] * (d["work"] @ r) for d in data
             if d["model"] == held_out}, dict(zip(KINDS, r)))


def published_ram_bytes(row: dict) -> float | None:
    """A row's published RAM in bytes: the exact figure its notes quote ("peak_ram = ...
    66112 B"), else peak_ram_kb x 1024 (rounded to 10 B in the CSV)."""
    if not row["peak_ram_kb"]:
        return None
    exact = re.search(r"peak_ram = [^;]*?(\d+) B", row["notes"])
    return float(exact.group(1)) if exact else float(row["peak_ram_kb"]) * 1024


def resnet8_published_buffers(csv_path: Path) -> list[tuple[str, float, str]]:
    """ResNet-8 buffers that architectures.md quotes from runtimes with no RAM row in the CSV:
    (label, bytes, the bundled profile of that runtime to compare with)."""
    text = (csv_path.parent / "architectures.md").read_text()
    tflm = re.search(r"MLTK TFLM arena: ([\d,]+) B", text)
    cubeai = re.search(r"X-CUBE-AI activations: ([\d.]+) KiB", text)
    out = []
    if tflm:
        out.append(("MLTK's published TFLM arena", float(tflm.group(1).replace(",", "")),
                    "ra6m4-tflm-cmsisnn"))
    if cubeai:
        out.append(("ST zoo's X-CUBE-AI activations", float(cubeai.group(1)) * 1024,
                    "stm32h7a3-xcubeai"))
    return out


def main() -> None:
    csv_path = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared/calibration/measurements.csv"
    rows = {r["case_id"]: r for r in csv.DictReader(csv_path.open())}
    graphs = {m: (trace(*zoo.MODELS[m]()), zoo.MODELS[m]()) for m in MODELS}
    published_size = {"resnet8": 98496, "dscnn_kws": 53936, "fc_autoencoder": 276976}
    table, data = [], []
    for path in sorted((ROOT / "hw_profiles").glob("*.yaml")):
        cal = yaml.safe_load(path.read_text())["source"].get("calibration")
        if not cal:
            continue
        profile = sp.load_profile(path)
        for case in cal["rows"]:
            r = rows[case]
            m = zoo_name(r["model_name"])
            rep = estimate_graph(graphs[m][0], profile)
            # the published files come from an older converter than searchprune's export:
            # compare them with that converter's format constants (fit_bundled_profiles.py)
            mlperf_fmt = dataclasses.replace(profile, runtime=dataclasses.replace(
                profile.runtime, op_overhead_bytes=440, quant_bytes_per_channel=40,
                tensor_overhead_bytes=0, model_overhead_bytes=0, per_channel_fc=False))
            rep_fmt = estimate_graph(graphs[m][0], mlperf_fmt)
            row = {"profile": profile.name, "model": m, "case_id": case,
                   "measured_ms": float(r["latency_ms"]), "fit_ms": rep.latency_ms,
                   "fit_err_pct": 100 * (rep.latency_ms / float(r["latency_ms"]) - 1),
                   "model_bytes": rep_fmt.model_bytes,
                   "flash_err_pct": 100 * (rep_fmt.model_bytes / published_size[m] - 1)
                   if profile.runtime.name.startswith("tflm") else None,
                   "peak_ram_bytes": rep.peak_ram_bytes, "arena_bytes": rep.arena_bytes,
                   "published_ram_bytes": published_ram_bytes(r)}
            row["ram_err_pct"] = (100 * (rep.arena_bytes / row["published_ram_bytes"] - 1)
                                  if row["published_ram_bytes"] else None)
            table.append(row)
            data.append({"profile": profile.name, "model": m, "work": kind_macs(graphs[m][0]),
                         "macs": rep.macs, "cycles": float(r["latency_ms"]) * 1e-3 * profile.clock_hz,
                         "clock": profile.clock_hz, "row": row, "case": case,
                         "profile_obj": profile})
    # leave one model out
    for held in MODELS:
        ratio_pred, ratios = ratio_model_lomo(data, held)
        for d in [d for d in data if d["model"] == held]:
            others = [e for e in data if e["profile"] == d["profile"] and e["model"] != held]
            # relative least squares, as sp.calibrate fits
            a = (sum(e["macs"] / e["cycles"] for e in others)
                 / sum((e["macs"] / e["cycles"]) ** 2 for e in others))
            mac_ms = a * d["macs"] / d["clock"] * 1e3
            ratio_ms = ratio_pred[d["profile"]] / d["clock"] * 1e3
            # the prior of our fit: the same cross-board ratios (a bundled profile's own ratios
            # were fitted with the held-out model)
            prior = dataclasses.replace(d["profile_obj"], latency=dataclasses.replace(
                d["profile_obj"].latency, **ratios))
            ours = calibrate([Measurement(e["model"], e["row"]["measured_ms"], label=e["case"])
                              for e in others], prior)
            ours_ms = estimate_graph(graphs[held][0], ours.profile).latency_ms
            meas = d["row"]["measured_ms"]
            d["row"].update(lomo_mac_err_pct=100 * (mac_ms / meas - 1),
                            lomo_ratio_err_pct=100 * (ratio_ms / meas - 1),
                            lomo_ours_err_pct=100 * (ours_ms / meas - 1))
    out = ROOT / "benchmarks/results"
    out.mkdir(parents=True, exist_ok=True)
    write_rows_csv(out / "cost_model_accuracy.csv", table)

    def med(key, rows=table):
        vals = [abs(r[key]) for r in rows if r.get(key) is not None]
        return statistics.median(vals) if vals else float("nan")

    lines = ["profile                    model            measured_ms  fit_ms  LOMO err%: MACs  ratio  ours"]
    for r in table:
        lines.append(f"{r['profile']:26s} {r['model']:15s} {r['measured_ms']:10.3f} {r['fit_ms']:8.3f}"
                     f"        {r['lomo_mac_err_pct']:+7.1f} {r['lomo_ratio_err_pct']:+7.1f} "
                     f"{r['lomo_ours_err_pct']:+7.1f}")
    lines.append("")
    lines.append(f"fit (in-sample) median |error|: {med('fit_err_pct'):.2f}% "
                 "(3 rows per profile and up to 3 fitted coefficient groups: an exact fit, "
                 "not evidence of accuracy)")
    lines.append(f"leave-one-model-out median |error|: MAC proxy {med('lomo_mac_err_pct'):.1f}%, "
                 f"per-op-kind ratio model {med('lomo_ratio_err_pct'):.1f}%, "
                 f"ours {med('lomo_ours_err_pct'):.1f}%")
    mean = {k: statistics.mean(abs(r[k]) for r in table)
            for k in ("lomo_mac_err_pct", "lomo_ratio_err_pct", "lomo_ours_err_pct")}
    lines.append(f"leave-one-model-out mean |error|:   MAC proxy {mean['lomo_mac_err_pct']:.1f}%, "
                 f"per-op-kind ratio model {mean['lomo_ratio_err_pct']:.1f}%, "
                 f"ours {mean['lomo_ours_err_pct']:.1f}%  ({len(table)} rows)")
    for m in MODELS:
        sub = [r for r in table if r["model"] == m]
        lines.append(f"  held out {m:15s}: MACs {med('lomo_mac_err_pct', sub):6.1f}%  ratio "
                     f"{med('lomo_ratio_err_pct', sub):6.1f}%  ours {med('lomo_ours_err_pct', sub):6.1f}%")
    flash = [r for r in table if r["flash_err_pct"] is not None]
    worst_flash = max(abs(r["flash_err_pct"]) for r in flash)
    lines.append(f"flash (TFLM profiles with the MLPerf converter's format constants, model_bytes "
                 f"vs published .tflite): worst |error| {worst_flash:.2f}%")
    ram = [r for r in table if r["ram_err_pct"] is not None]
    for r in ram:
        lines.append(f"RAM {r['profile']:26s} {r['model']:15s} planned arena {r['arena_bytes']:7d} B"
                     f" vs published {r['published_ram_bytes']:8.0f} B ({r['ram_err_pct']:+.1f}%)")
    for label, published, prof in resnet8_published_buffers(csv_path):
        rep = estimate_graph(graphs["resnet8"][0], sp.load_profile(prof))
        lines.append(f"RAM {prof:26s} resnet8         planned arena {rep.arena_bytes:7d} B vs "
                     f"{label} {published:.0f} B ({100 * (rep.arena_bytes / published - 1):+.1f}%;"
                     f" with the runtime's reserved RAM {rep.peak_ram_bytes} B: "
                     f"{100 * (rep.peak_ram_bytes / published - 1):+.1f}%)")
    hale_ic = [published_ram_bytes(r) for r in rows.values()
               if r["runtime"].startswith("Bosch HALE") and r["peak_ram_kb"]
               and zoo_name(r["model_name"]) == "resnet8"]
    lines.append(f"published HALE RAM of ResNet-8 over its {len(hale_ic)} builds: "
                 f"{min(hale_ic):.0f} to {max(hale_ic):.0f} B")
    # speed: a 30-layer CNN (plain family, 14 depthwise-separable blocks + stem + head)
    from searchprune.spaces.families import plain
    net = plain({"n_blocks": 14, "channels": [32] * 14, "block": ["dwsep"] * 14,
                 "kernel_size": 3}, (1, 32, 32), 10)
    profile = sp.load_profile("stm32l4r5-xcubeai")
    n_ops = len(trace(net, (1, 1, 32, 32)).ops)
    sp.estimate(net, (1, 1, 32, 32), profile)
    t0 = time.perf_counter()
    for _ in range(20):
        sp.estimate(net, (1, 1, 32, 32), profile)
    ms = (time.perf_counter() - t0) / 20 * 1e3
    lines.append(f"sp.estimate of a {n_ops}-op CNN on one profile: {ms:.1f} ms (trace + cost, "
                 "mean of 20)")
    text = "\n".join(lines)
    (out / "cost_model_accuracy.txt").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
