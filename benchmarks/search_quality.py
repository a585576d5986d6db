"""Search quality: hypervolume vs number of trials for NSGA-II, TPE and random search on
the digits_plain space (shortened training budget), several seeds; plus NSGA-II with
multi-objective early stopping (time saved vs front quality).

Hypervolume is computed on the default objectives (accuracy, latency, peak RAM, flash on
the first MCU), each scaled by the range seen over all runs, reference: accuracy 0 and 1.1 x
the largest cost. Writes benchmarks/results/search_quality.csv and .png; prints a summary.
Run: python benchmarks/search_quality.py [n_trials] [n_seeds] [processes]  (about 15 minutes
with 100, 3, 1 on this 2-core machine; 2 processes halve it);
``--summary`` reprints the summary of the last run's CSV.
"""
from __future__ import annotations

import csv
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import optuna

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import searchprune as sp  # noqa: E402
from searchprune.io import write_rows_csv  # noqa: E402
from searchprune.search.metrics import is_maximized  # noqa: E402

HW = ["stm32f746-tflm-cmsisnn", "stm32g031-cgen"]
RUNS = [("nsga2", None), ("nsga2-pop10", None), ("tpe", None), ("random", None),
        ("nsga2", 0.15)]


def trials_to_reach(curve, target: float, never):
    """The first trial (1-based) at which ``curve`` reaches ``target``, else ``never``."""
    return next((i + 1 for i, v in enumerate(curve) if v >= target), never)


def summarize(rows: list[dict], out: Path) -> dict[str, np.ndarray]:
    """Mean hypervolume curve per sampler over the seeds; writes and prints the summary."""
    curves: dict[str, dict[int, list[float]]] = {}
    walls: dict[str, list[float]] = {}
    for r in rows:
        curves.setdefault(r["sampler"], {}).setdefault(int(r["seed"]), []).append(
            float(r["hypervolume"]))
        if r["wall_s"] not in ("", None):
            walls.setdefault(r["sampler"], []).append(float(r["wall_s"]))
    mean = {k: np.mean(list(v.values()), axis=0) for k, v in curves.items()}
    n_trials, n_seeds = len(mean["random"]), len(curves["random"])
    target = mean["random"][-1]
    at = min(30, n_trials)
    lines = [f"mean hypervolume after {n_trials} trials over {n_seeds} seeds:"]
    for k, m in mean.items():
        reach = trials_to_reach(m, target, "never")
        lines.append(f"  {k:22s} {m[-1]:.4f}  (at {at} trials {m[at - 1]:.4f}; reaches "
                     f"random's {n_trials}-trial hypervolume after "
                     f"{reach} trials; mean wall {np.mean(walls[k]):.0f} s)")
    lines.append("per seed, trials to reach that seed's random-search hypervolume after "
                 f"{n_trials} trials (min / median / max; {n_trials + 1} = never):")
    for k, by_seed in curves.items():
        per = [trials_to_reach(c, curves["random"][s][-1], n_trials + 1)
               for s, c in by_seed.items() if s in curves["random"]]
        lines.append(f"  {k:22s} {min(per)} / {np.median(per):.0f} / {max(per)}")
    text = "\n".join(lines)
    (out / "search_quality.txt").write_text(text + "\n")
    print(text)
    return mean


def run_one(n_trials: int, seed: int, sampler: str, early: float | None):
    """One search of the benchmark: (label, seed, trials, objectives, wall seconds)."""
    import torch
    torch.set_num_threads(1)
    space = sp.load_space("digits_plain")
    space = dataclasses.replace(space, training=dataclasses.replace(
        space.training, epochs=4, finetune_epochs=1))
    t0 = time.perf_counter()
    chosen = sampler if sampler != "nsga2-pop10" else \
        optuna.samplers.NSGAIISampler(seed=seed, population_size=10)
    r = sp.search(space, hardware=HW, n_trials=n_trials, seed=seed, sampler=chosen,
                  storage="memory", quiet=True, task=sp.digits_task(), early_stop=early)
    wall = time.perf_counter() - t0
    label = sampler + (f"+early_stop({early})" if early else "")
    print(f"{label:22s} seed {seed}: {wall:6.1f} s, {len(r.pareto)} on the front", flush=True)
    return label, seed, r.trials.sort_values("number"), r.objectives, wall


def main() -> None:
    import torch
    torch.set_num_threads(1)
    if sys.argv[1:] == ["--summary"]:  # reprint the summary of the last run's CSV
        with open(ROOT / "benchmarks/results/search_quality.csv") as f:
            summarize(list(csv.DictReader(f)), ROOT / "benchmarks/results")
        return
    n_trials = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    seeds = range(int(sys.argv[2]) if len(sys.argv) > 2 else 3)
    procs = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    jobs = [(n_trials, seed, sampler, early) for seed in seeds for sampler, early in RUNS]
    if procs > 1:  # one search per process, each on one thread
        import multiprocessing
        with multiprocessing.get_context("spawn").Pool(procs) as pool:
            results = pool.starmap(run_one, jobs)
    else:
        results = [run_one(*job) for job in jobs]
    objs = results[0][3]
    everything = np.concatenate([df[df["trained"]][objs].to_numpy(float)
                                 for _, _, df, _, _ in results])
    lo, hi = everything.min(0), everything.max(0)
    maximize = np.array([is_maximized(o) for o in objs])
    span = np.where(hi > lo, hi - lo, 1.0)
    ref = np.where(maximize, 0.0, 1.1)

    def hv_curve(df):
        out, feasible = [], df["feasible"] & df["trained"]
        for k in range(1, len(df) + 1):
            sub = df.iloc[:k][feasible.iloc[:k]]
            if sub.empty:
                out.append(0.0)
                continue
            v = sub[objs].to_numpy(float)
            v = np.where(maximize, v / np.maximum(hi, 1e-12), (v - lo) / span)
            out.append(sp.hypervolume(v, maximize, ref))
        return out

    rows = []
    for label, seed, df, _, wall in results:
        curve = hv_curve(df)
        for k, v in enumerate(curve, 1):
            rows.append({"sampler": label, "seed": seed, "trials": k, "hypervolume": v,
                         "wall_s": round(wall, 1) if k == len(curve) else ""})
    out = ROOT / "benchmarks/results"
    out.mkdir(parents=True, exist_ok=True)
    write_rows_csv(out / "search_quality.csv", rows)
    mean = summarize(rows, out)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, m in mean.items():
        ax.plot(range(1, len(m) + 1), m, label=k)
    ax.axhline(mean["random"][-1], color="k", lw=0.6, ls=":", label=f"random @ {n_trials}")
    ax.set_xlabel("trials")
    ax.set_ylabel("hypervolume (scaled objectives)")
    ax.set_title(f"digits_plain on {HW[0]} + {HW[1]}, mean of {len(seeds)} seeds")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "search_quality.png", dpi=110)
    print(f"wrote {out / 'search_quality.csv'}, .png, .txt")


if __name__ == "__main__":
    main()
