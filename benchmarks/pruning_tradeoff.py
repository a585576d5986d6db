"""Accuracy vs sparsity on digits for each granularity x criterion, one-shot vs iterative.

One dense model (plain family: conv 32 -> dwsep 64, 3x3) is trained once; every point
starts from a copy of it, prunes every prunable layer to the ratio, and fine-tunes for the
same total number of epochs (one-shot: all after pruning; iterative: split over 3 steps on a
geometric schedule). Writes benchmarks/results/pruning_tradeoff.csv and .png, prints the table.
Run: python benchmarks/pruning_tradeoff.py  (about 3 minutes on 2 cores)
"""
from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import searchprune as sp  # noqa: E402
from searchprune.io import write_rows_csv  # noqa: E402
from searchprune.pruning import apply_masks, prune_iteratively  # noqa: E402
from searchprune.spaces.families import plain  # noqa: E402
from searchprune.training import evaluate, train  # noqa: E402

RATIOS = [0.3, 0.5, 0.7, 0.8, 0.9]
FINETUNE_EPOCHS = 3
CASES = [("structured", c) for c in ("l1", "l2", "taylor", "hessian", "activation")] + \
        [("unstructured", c) for c in ("l1", "l2", "taylor", "hessian")]
NM = ["2:4", "1:4"]


def main() -> None:
    torch.set_num_threads(1)
    task = sp.digits_task()
    torch.manual_seed(0)
    dense = plain({"n_blocks": 2, "channels": [32, 64], "block": ["conv", "dwsep"],
                   "kernel_size": 3}, (1, 8, 8), 10)
    train(dense, task, epochs=10, batch_size=32, lr=0.01, seed=0)
    dense_acc = evaluate(dense, task)
    x, y = task.tensors("train")
    data = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)]
    example = torch.zeros(2, 1, 8, 8)
    profile = sp.load_profile("stm32f746-tflm-cmsisnn")
    base = sp.estimate(dense, (1, 1, 8, 8), profile)
    rows = [{"granularity": "dense", "criterion": "-", "schedule": "-", "target_ratio": 0.0,
             "sparsity": sp.sparsity(dense), "accuracy": dense_acc, "macs": base.macs,
             "latency_ms": base.latency_ms, "flash_bytes": base.flash_bytes, "seconds": 0.0}]
    jobs = [(g, c, r, s) for g, c in CASES for r in RATIOS for s in ("one_shot", "iterative")]
    jobs += [(g, c, 1 - int(g[0]) / int(g[2]), "one_shot") for g in NM
             for c in ("l1", "l2", "taylor", "hessian")]
    for i, (gran, crit, ratio, sched) in enumerate(jobs, 1):
        t0 = time.perf_counter()
        model = copy.deepcopy(dense)
        steps = 3 if sched == "iterative" else 1

        def finetune(m, k, steps=steps):
            train(m, task, epochs=FINETUNE_EPOCHS // steps, batch_size=32, lr=0.005,
                  seed=1 + k, after_step=apply_masks)

        model = prune_iteratively(model, ratio, steps=steps, curve="geometric",
                                  finetune=finetune, granularity=gran, criterion=crit,
                                  example_inputs=example, data=data, round_to=1)
        rep = sp.estimate(model, (1, 1, 8, 8), profile)
        row = {"granularity": gran, "criterion": crit, "schedule": sched, "target_ratio": ratio,
               "sparsity": round(sp.sparsity(model), 4), "accuracy": round(evaluate(model, task), 4),
               "macs": rep.macs, "latency_ms": round(rep.latency_ms, 4),
               "flash_bytes": rep.flash_bytes, "seconds": round(time.perf_counter() - t0, 2)}
        rows.append(row)
        print(f"[{i}/{len(jobs)}] {gran:12s} {crit:10s} {sched:9s} ratio {ratio:.2f} -> "
              f"accuracy {row['accuracy']:.4f} (dense {dense_acc:.4f}), MACs {rep.macs}, "
              f"flash {rep.flash_bytes} B", flush=True)
    out = ROOT / "benchmarks/results"
    out.mkdir(parents=True, exist_ok=True)
    write_rows_csv(out / "pruning_tradeoff.csv", rows)
    plot(rows, dense_acc, out / "pruning_tradeoff.png")
    print(f"wrote {out / 'pruning_tradeoff.csv'} and {out / 'pruning_tradeoff.png'}")


def plot(rows, dense_acc, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, gran in zip(axes, ("structured", "unstructured")):
        for crit in ("l1", "l2", "taylor", "hessian", "activation"):
            for sched, style in (("one_shot", "--"), ("iterative", "-")):
                pts = [(r["target_ratio"], r["accuracy"]) for r in rows
                       if r["granularity"] == gran and r["criterion"] == crit
                       and r["schedule"] == sched]
                if pts:
                    ax.plot(*zip(*pts), style, marker="o", ms=3, label=f"{crit} {sched}")
        ax.axhline(dense_acc, color="k", lw=0.8, label="dense")
        ax.set_title(f"{gran} pruning, digits")
        ax.set_xlabel("pruning ratio (channels removed / weights zeroed per layer)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy after fine-tuning")
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
