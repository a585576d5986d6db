"""The ``searchprune`` command. User errors print one line and exit with code 2."""
from __future__ import annotations

import argparse
import sys

from .errors import SearchpruneError

EXAMPLES = """examples:
  searchprune search --space digits_plain --hw stm32f746-tflm-cmsisnn \\
      --hw stm32g031-cgen --trials 30 --name demo
  searchprune front demo --csv runs/demo/front.csv
  searchprune profiles
  searchprune estimate --model searchprune.zoo:resnet8 --hw ra6m4-tflm-cmsisnn
"""


def _pd_print(df) -> None:
    import pandas as pd
    with pd.option_context("display.max_columns", 40, "display.width", 200,
                           "display.max_colwidth", 40, "display.float_format", "{:.4g}".format):
        print(df.to_string(index=False))


def load_user_model(spec: str, weights: str | None):
    """``pkg.module:factory`` -> nn.Module, with a state dict loaded from ``weights``
    (``torch.load(weights_only=True)``: tensors only, no code runs from the file)."""
    from .calibration import resolve_model
    from .io import load_state
    out = resolve_model(spec)()
    model = out[0] if isinstance(out, tuple) else out
    if weights:
        state = load_state(weights)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError) as e:
            raise SearchpruneError(f"{weights}: does not fit {spec}: "
                                   f"{str(e).splitlines()[0]}") from None
    return model


def cmd_search(a) -> None:
    from .search import search, search_pruning
    common = dict(hardware=a.hw, n_trials=a.trials, seed=a.seed,
                  objectives=a.objective or None, constraints=a.constraint or None,
                  sampler=a.sampler, runs_dir=a.runs_dir, quiet=a.quiet,
                  early_stop=a.early_stop, max_consecutive_failures=a.max_failures)
    if a.model:
        if a.space:
            raise SearchpruneError("give --space (architecture search) or --model (pruning "
                                   "search of a trained model), not both")
        if not a.data:
            raise SearchpruneError("--model needs --data file.npz (or --data digits)")
        lo, hi = _parse_floats(a.ratio_range, "--ratio-range", 2)
        result = search_pruning(load_user_model(a.model, a.weights), a.data,
                                ratio_range=(lo, hi), criteria=a.criteria.split(","),
                                granularity=a.granularity, name=a.name, factory=a.model,
                                **common)
        _print_front(result, None)
        return
    if not a.space:
        raise SearchpruneError("search needs --space (or --model for a pruning search)")
    result = search(a.space, task=a.data, name=a.name, backend=a.backend, workers=a.workers,
                    ray_address=a.ray_address, cpus_per_trial=a.cpus_per_trial,
                    gpus_per_trial=a.gpus_per_trial, max_retries=a.max_retries, **common)
    _print_front(result, None)


def _parse_floats(text: str, flag: str, n: int) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        vals = []
    if len(vals) != n:
        raise SearchpruneError(f"argument {flag} = {text!r}: expected {n} comma-separated numbers")
    return vals


def _print_front(result, profile) -> None:
    table = result.front_table(profile)
    trials = result.trials
    n_feasible = int(trials["feasible"].sum()) if len(trials) else 0
    print(f"Pareto front of study {result.name!r} on {profile or result.profiles[0]} "
          f"({len(table)} of {len(trials)} trials, {n_feasible} feasible on every MCU):")
    if table.empty:
        print("  no feasible trained trial yet")
    else:
        _pd_print(table)


def cmd_front(a) -> None:
    from .io import atomic_write_text
    from .search import load_study
    result = load_study(a.name, a.runs_dir)
    _print_front(result, a.profile)
    if a.csv:
        front = result.pareto if a.profile is None else result.pareto_for(a.profile)
        path = atomic_write_text(a.csv, front.to_csv(index=False))
        print(f"wrote {path}")


def cmd_report(a) -> None:
    from .report import write_report
    from .search import load_study
    from .search.optuna_backend import study_dir
    result = load_study(a.name, a.runs_dir)
    out = a.out or study_dir(a.name, a.runs_dir) / "report.html"
    print(f"wrote {write_report(result, out)}")


def cmd_dashboard(a) -> None:
    from .search import load_study
    from .search.optuna_backend import storage_url
    result = load_study(a.name, a.runs_dir)  # fails clearly on an unknown study
    try:
        from optuna_dashboard import run_server
    except ImportError:
        raise SearchpruneError('the dashboard needs optuna-dashboard: pip install -e ".[report]"')
    if a.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"searchprune: warning: serving on {a.host}: anyone who can reach this address "
              "can read the study", file=sys.stderr)
    print(f"optuna-dashboard for study {result.name!r}: http://{a.host}:{a.port}/dashboard/ "
          "(Ctrl-C stops it). It ignores constraints: see the user attribute 'feasible', or "
          "'searchprune report' for the constraint-aware view.", flush=True)
    run_server(storage_url(a.name, a.runs_dir), host=a.host, port=a.port)


def cmd_export(a) -> None:
    from .export import export_trial
    from .search import load_study
    result = load_study(a.name, a.runs_dir)
    out = export_trial(result, a.trial, a.out, runs_dir=a.runs_dir, qat_epochs=a.qat_epochs)
    import json
    v = json.loads((out / "verify.json").read_text())
    print(f"wrote {out}: model.pt, config.json, model_int8.tflite ({v['tflite_file_bytes']} B), "
          f"model_data.cc/.h, verify.json")
    print(f"TFLM: arena head {v['tflm_arena_head_bytes']} B, total {v['tflm_arena_total_bytes']} B;"
          f" int8 top-1 agrees with PyTorch on {100 * v['top1_agreement_tflm_vs_pytorch']:.1f} % "
          f"of {v['samples']} test samples; int8 accuracy {v['accuracy_int8_tflm']:.4f} "
          f"({v['quantization']})")


def cmd_profiles(a) -> None:
    import pandas as pd
    from .hardware import list_profiles
    rows = []
    for p in list_profiles():
        rows.append({"name": p.name, "core": p.core, "clock_mhz": p.clock_hz / 1e6,
                     "sram_kib": p.sram_bytes / 1024, "flash_kib": p.flash_bytes / 1024,
                     "runtime": p.runtime.name,
                     "calibrated": "calibration" in p.source})
    _pd_print(pd.DataFrame(rows))


def cmd_spaces(a) -> None:
    from .spaces import bundled_spaces, load_space
    for name, path in bundled_spaces().items():
        s = load_space(path)
        print(f"{name:20s} family={s.family:8s} task={s.task:8s} {path}")
        if s.description:
            print(f"{'':20s} {s.description}")


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise SearchpruneError(f"argument --input-shape = {text!r}: expected e.g. 1,3,32,32")
    if not shape or any(v <= 0 for v in shape):
        raise SearchpruneError(f"argument --input-shape = {text!r}: sizes must be > 0")
    return shape


def cmd_estimate(a) -> None:
    from .calibration import Measurement, build_measured
    from .cost import estimate
    shape = _parse_shape(a.input_shape) if a.input_shape else None
    model, shape = build_measured(Measurement(a.model, 1.0, shape))
    for report in estimate(model, shape, list(a.hw)):
        print(f"{report.profile}: latency {report.latency_ms:.3f} ms, peak RAM "
              f"{report.peak_ram_bytes} B (arena {report.arena_bytes} B), flash "
              f"{report.flash_bytes} B (model {report.model_bytes} B), energy "
              f"{report.energy_uj:.1f} uJ, {report.macs} MACs, {report.params} params, "
              f"fits: {'yes' if report.fits else 'NO'}")
        if not a.totals_only:
            df = report.to_dataframe()[["layer", "kind", "out_shape", "macs", "params",
                                        "latency_ms", "flash_bytes", "scratch_bytes"]]
            _pd_print(df)
        if a.plan:
            print(f"arena plan ({report.arena_bytes} B; live-set lower bound "
                  f"{report.live_peak_bytes} B):")
            _pd_print(report.plan_dataframe())


def cmd_calibrate(a) -> None:
    from .calibration import calibrate, read_measurements, write_profile
    from .hardware import load_profile
    base = load_profile(a.base)
    result = calibrate(read_measurements(a.csv), base, name=a.name)
    for r in result.rows:
        print(f"{r['label'] or r['model']:40s} measured {r['measured_ms']:9.3f} ms  predicted "
              f"{r['predicted_ms']:9.3f} ms  error {100 * r['error']:+6.2f}%")
    loo = result.median_loo_error
    print("leave-one-out median error: " + (f"{100 * loo:.2f}%" if loo is not None else
          "n/a (needs more rows than fitted coefficients)"))
    print(f"wrote {write_profile(result, a.out, base.path)}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="searchprune", description="Hardware-aware NAS and pruning "
                                "for microcontrollers.", epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = sub.add_parser("search", help="run or resume a search and print its Pareto front",
                       description="Run (or resume, with the same --name) a multi-objective "
                       "search: every candidate is costed on every --hw profile, candidates "
                       "that do not fit are rejected before training.")
    s.add_argument("--space", help="bundled space name or a YAML path")
    s.add_argument("--data", metavar="TASK", help="task: 'digits' or a .npz with x_train, "
                   "y_train, x_test, y_test (default: the space's task)")
    s.add_argument("--model", metavar="PKG.MODULE:FACTORY",
                   help="pruning-only search of this trained model (instead of --space)")
    s.add_argument("--weights", metavar="PATH", help="state dict for --model (torch.save)")
    s.add_argument("--ratio-range", default="0,0.8", help="--model: per-layer ratio range")
    s.add_argument("--criteria", default="l1,taylor", help="--model: criteria to search")
    s.add_argument("--granularity", default="structured", help="--model: structured, "
                   "unstructured or N:M")
    s.add_argument("--hw", action="append", required=True, metavar="PROFILE",
                   help="bundled profile name or YAML path (repeat for several MCUs)")
    s.add_argument("--trials", type=int, default=30, help="total trials of the study (default 30)")
    s.add_argument("--name", help="study name: results go to runs/NAME (default: the space name)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--objective", action="append", metavar="METRIC",
                   help="objective metric (repeat); default accuracy latency_ms peak_ram_bytes "
                   "flash_bytes; METRIC@PROFILE for another MCU")
    s.add_argument("--constraint", action="append", metavar="EXPR",
                   help="extra hard constraint, e.g. latency_ms<=50 or accuracy>=0.9 (repeat)")
    s.add_argument("--sampler", default="tpe", choices=["tpe", "nsga2", "random"],
                   help="tpe (default; multivariate TPE), nsga2 or random")
    s.add_argument("--backend", default="optuna", choices=["optuna", "ray"],
                   help="optuna: this machine (default); ray: a Ray cluster via Ray Tune")
    s.add_argument("--workers", type=int, default=1,
                   help="trials run at once (processes on one study, or Ray concurrency)")
    s.add_argument("--ray-address", help="join this Ray cluster ('auto' for the local one); "
                   "default: start a local Ray")
    s.add_argument("--cpus-per-trial", type=float, default=1.0)
    s.add_argument("--gpus-per-trial", type=float, default=0.0)
    s.add_argument("--max-retries", type=int, default=2,
                   help="Ray: retries of a trial whose worker died (default 2)")
    s.add_argument("--early-stop", type=float, metavar="MARGIN",
                   help="stop a trial whose epoch-1 accuracy is MARGIN below a front member "
                   "that costs no more (e.g. 0.1); off by default")
    s.add_argument("--max-failures", type=int, default=10,
                   help="stop after this many failed trials in a row (default 10)")
    s.add_argument("--runs-dir", default="runs", help="where studies live (default runs/)")
    s.add_argument("--quiet", action="store_true", help="no per-trial progress lines")
    s.set_defaults(fn=cmd_search)
    f = sub.add_parser("front", help="print (and optionally save) the Pareto front of a study")
    f.add_argument("name", help="study name (a folder under runs/)")
    f.add_argument("--csv", metavar="PATH", help="also write the full front as CSV")
    f.add_argument("--profile", help="front for this chosen MCU (default: the first)")
    f.add_argument("--runs-dir", default="runs")
    f.set_defaults(fn=cmd_front)
    r = sub.add_parser("report", help="write the self-contained HTML report of a study",
                       description="Fronts per MCU against its SRAM / flash budget, per-layer "
                       "pruning ratios and costs of the front, hypervolume over trials, a "
                       "sortable table. One file, works offline.")
    r.add_argument("name")
    r.add_argument("--out", help="default runs/NAME/report.html")
    r.add_argument("--runs-dir", default="runs")
    r.set_defaults(fn=cmd_report)
    d = sub.add_parser("dashboard", help="serve optuna-dashboard on a study")
    d.add_argument("name")
    d.add_argument("--port", type=int, default=8080)
    d.add_argument("--host", default="127.0.0.1",
                   help="default 127.0.0.1 (this machine only); another address warns")
    d.add_argument("--runs-dir", default="runs")
    d.set_defaults(fn=cmd_dashboard)
    x = sub.add_parser("export", help="export a trained trial: int8 TFLite, C array, verified in "
                       "TFLM", description="Writes model.pt, config.json, model_int8.tflite, "
                       "model_data.cc / .h and verify.json (needs pip install -e '.[tflite]').")
    x.add_argument("name")
    x.add_argument("--trial", type=int, required=True)
    x.add_argument("--out", required=True, help="output folder")
    x.add_argument("--runs-dir", default="runs")
    x.add_argument("--qat-epochs", type=int, default=None, metavar="N",
                   help="quantisation-aware fine-tuning epochs before conversion (0: "
                   "post-training only; default: as the search quantised the trial)")
    x.set_defaults(fn=cmd_export)
    pr = sub.add_parser("profiles", help="list bundled hardware profiles")
    pr.set_defaults(fn=cmd_profiles)
    sp = sub.add_parser("spaces", help="list bundled search spaces")
    sp.set_defaults(fn=cmd_spaces)
    e = sub.add_parser("estimate", help="estimate latency / RAM / flash / energy of a model")
    e.add_argument("--model", required=True,
                   help="pkg.module:factory returning an nn.Module (or (module, input_shape))")
    e.add_argument("--input-shape", help="with batch, e.g. 1,3,32,32")
    e.add_argument("--hw", action="append", required=True, metavar="PROFILE")
    e.add_argument("--totals-only", action="store_true", help="no per-layer table")
    e.add_argument("--plan", action="store_true",
                   help="also print the arena plan: every buffer, its offset and lifetime")
    e.set_defaults(fn=cmd_estimate)
    c = sub.add_parser("calibrate", help="fit a profile's latency coefficients to your "
                       "measurements", description="CSV columns: model (zoo name or "
                       "pkg.module:factory), latency_ms, optional input_shape (1x3x32x32), label")
    c.add_argument("--csv", required=True)
    c.add_argument("--base", required=True, help="profile to start from (name or YAML)")
    c.add_argument("--out", required=True, help="where to write the fitted YAML")
    c.add_argument("--name", help="name of the new profile")
    c.set_defaults(fn=cmd_calibrate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except SearchpruneError as e:
        print(f"searchprune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("searchprune: interrupted; completed trials are kept in the study", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `searchprune profiles | head`
        sys.stderr.close()
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
