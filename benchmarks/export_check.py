"""The cost model against real exports: 20 architectures sampled from the bundled spaces
(4 each), trained for 4 epochs on digits, exported to int8 TFLite (searchprune.export), run
in the TFLM interpreter: the planned arena vs the interpreter's arena head, the flash
estimate vs the .tflite size (stm32l4r5-tflm-ref: TFLM with reference kernels, as in the
interpreter) and the int8 top-1 agreement with PyTorch on the test set.
Writes benchmarks/results/export_check.csv and prints it. Needs pip install -e ".[tflite]".
Run: python benchmarks/export_check.py  (about 3 minutes)
"""
from __future__ import annotations

import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import searchprune as sp  # noqa: E402
from searchprune.export import check_architecture  # noqa: E402
from searchprune.io import write_rows_csv  # noqa: E402
from searchprune.spaces import sample_architectures  # noqa: E402

SPACES = ["digits_plain", "digits_mbv2", "digits_dscnn", "digits_resnet", "digits_mlp"]


def main() -> None:
    import optuna
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    task = sp.digits_task()
    rows = [check_architecture(space, arch, task, seed=k)
            for k, (name, space, arch) in enumerate(sample_architectures(4, 1, SPACES))]
    out = ROOT / "benchmarks/results/export_check.csv"
    write_rows_csv(out, rows)
    exact = sum(r["tflm_head_bytes"] == r["arena_estimate_bytes"] for r in rows)
    within5 = sum(abs(r["flash_estimate_bytes"] / r["tflite_bytes"] - 1) <= 0.05 for r in rows)
    for r in rows:
        print(f"{r['space']:14s} head {r['tflm_head_bytes']:7d} est {r['arena_estimate_bytes']:7d}"
              f"  tflite {r['tflite_bytes']:7d} est {r['flash_estimate_bytes']:7d} "
              f"({r['flash_error_pct']:+.1f} %)  full int8 {r['full_int8']}  top-1 agreement "
              f"{r['top1_agreement']:.3f}")
    print(f"arena estimate == TFLM head: {exact} of {len(rows)}; fully int8: "
          f"{sum(r['full_int8'] for r in rows)} of {len(rows)}; flash within 5 %: {within5}, "
          f"worst {max(abs(r['flash_error_pct']) for r in rows):.1f} %; int8 top-1 agreement "
          f"with PyTorch: min {min(r['top1_agreement'] for r in rows):.3f}, mean "
          f"{sum(r['top1_agreement'] for r in rows) / len(rows):.3f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
