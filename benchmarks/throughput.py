"""Throughput: trials per minute for Optuna with 1 and 2 worker processes and Ray Tune with
2 workers on this machine, and the cost gate's share of the time on a space where many
candidates do not fit (digits_plain on the 8 KiB STM32G031). The gate is the pruned copy and
the cost model on every MCU; sampling (Optuna writing the parameters to its storage) and
building the model are reported apart, since every trial pays them, gated or not.

Writes benchmarks/results/throughput.csv and prints it.
Run: python benchmarks/throughput.py [n_trials]  (about 5 minutes with 30)
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import searchprune as sp  # noqa: E402
from searchprune.io import write_rows_csv  # noqa: E402

HW = ["stm32g031-cgen"]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    rows = []
    for backend, workers in (("optuna", 1), ("optuna", 2), ("ray", 2)):
        runs = Path(tempfile.mkdtemp(prefix="searchprune-throughput-"))
        t0 = time.perf_counter()
        r = sp.search("digits_plain", hardware=HW, n_trials=n, seed=0, name="tp",
                      runs_dir=runs, quiet=True, backend=backend, workers=workers)
        wall = time.perf_counter() - t0
        trials = r.study.get_trials(deepcopy=False)
        gate = [t.user_attrs["gate_seconds"] for t in trials if "gate_seconds" in t.user_attrs]
        sample = [t.user_attrs["sample_seconds"] for t in trials if "sample_seconds" in t.user_attrs]
        trained = [t.duration.total_seconds() for t in trials
                   if t.user_attrs.get("trained") and t.duration]
        rejected = sum(1 for t in trials if t.user_attrs.get("gate_rejected"))
        row = {"backend": backend, "workers": workers, "trials": len(trials),
               "wall_s": round(wall, 1), "trials_per_min": round(60 * len(trials) / wall, 1),
               "rejected_by_gate": rejected,
               "sample_ms_mean": round(1e3 * float(np.mean(sample)), 2),
               "gate_ms_mean": round(1e3 * float(np.mean(gate)), 2),
               "trained_trial_s_mean": round(float(np.mean(trained)), 2),
               "gate_share_of_trained_trial_pct": round(100 * float(np.mean(gate)) /
                                                        float(np.mean(trained)), 2),
               "gate_share_of_all_time_pct": round(100 * float(np.sum(gate)) /
                                                   (float(np.sum(gate)) + float(np.sum(trained))), 2)}
        rows.append(row)
        print(row, flush=True)
        if backend == "ray":
            import ray
            ray.shutdown()
    out = ROOT / "benchmarks/results/throughput.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_rows_csv(out, rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
