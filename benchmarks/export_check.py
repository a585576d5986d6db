"""The cost model against real exports: 20 architectures sampled from the bundled spaces
(4 each), exported to int8 TFLite (searchprune.export), run in the TFLM interpreter; the
planned arena vs the interpreter's arena head, and the flash estimate vs the .tflite size
(stm32l4r5-tflm-ref: TFLM with reference kernels, as in the interpreter).
Writes benchmarks/results/export_check.csv and prints it. Needs pip install -e ".[tflite]".
Run: python benchmarks/export_check.py  (about 1 minute)
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import searchprune as sp  # noqa: E402
from searchprune.export import TFLMRunner, tflite_ops, to_tflite  # noqa: E402
from searchprune.io import write_rows_csv  # noqa: E402
from searchprune.spaces import build_as_trained, sample_architectures  # noqa: E402

SPACES = ["digits_plain", "digits_mbv2", "digits_dscnn", "digits_resnet", "digits_mlp"]


def main() -> None:
    import optuna
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rows = []
    for k, (name, space, arch) in enumerate(sample_architectures(4, 1, SPACES)):
        shape = space.input_shape(arch, (1, 8, 8))
        model = build_as_trained(space, arch, shape, 10, seed=k)
        flatbuffer = to_tflite(model, shape, torch.rand(16, *shape))
        report = sp.estimate(model, (1, *shape), "stm32l4r5-tflm-ref")
        ops = [o["op"] for o in tflite_ops(flatbuffer)]
        rows.append({"space": name, "arch": arch,
                     "full_int8": "DEQUANTIZE" not in ops and "QUANTIZE" not in ops,
                     "tflm_head_bytes": TFLMRunner(flatbuffer).allocations()["head"],
                     "arena_estimate_bytes": report.arena_bytes,
                     "tflite_bytes": len(flatbuffer),
                     "flash_estimate_bytes": report.model_bytes,
                     "flash_error_pct": round(100 * (report.model_bytes / len(flatbuffer) - 1), 1)})
    out = ROOT / "benchmarks/results/export_check.csv"
    write_rows_csv(out, rows)
    exact = sum(r["tflm_head_bytes"] == r["arena_estimate_bytes"] for r in rows)
    within5 = sum(abs(r["flash_estimate_bytes"] / r["tflite_bytes"] - 1) <= 0.05 for r in rows)
    for r in rows:
        print(f"{r['space']:14s} head {r['tflm_head_bytes']:7d} est {r['arena_estimate_bytes']:7d}"
              f"  tflite {r['tflite_bytes']:7d} est {r['flash_estimate_bytes']:7d} "
              f"({r['flash_error_pct']:+.1f} %)  full int8 {r['full_int8']}")
    print(f"arena estimate == TFLM head: {exact} of {len(rows)}; fully int8: "
          f"{sum(r['full_int8'] for r in rows)} of {len(rows)}; flash within 5 %: {within5}, "
          f"worst {max(abs(r['flash_error_pct']) for r in rows):.1f} %")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
