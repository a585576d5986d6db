"""The embedded default orchestrator: an Optuna multi-objective study in SQLite."""
from __future__ import annotations

import multiprocessing
import os
import random
import re
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState

from ..errors import ConfigError, SearchpruneError, UnknownNameError
from ..hardware import HardwareProfile, load_profile
from ..spaces import SearchSpace, load_space
from ..training import Task, load_task
from .metrics import DEFAULT_OBJECTIVES, is_maximized, parse_constraints, resolve_metric
from .objective import TrialContext, run_trial
from .result import SearchResult

# set_metric_names and heartbeats are "experimental" in Optuna, and stable in practice
warnings.filterwarnings("ignore", category=ExperimentalWarning, module=r"(searchprune|optuna)\.")
optuna.logging.set_verbosity(optuna.logging.WARNING)  # our progress line replaces its INFO log
DEFAULT_RUNS_DIR = Path("runs")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
SAMPLERS = ("nsga2", "tpe", "random")


def check_study_name(name: str) -> str:
    """Study names become folder names under runs/: letters, digits, ``_ . -`` only."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise ConfigError("argument", "name", name, "a study name may hold letters, digits and "
                          "_ . - (no slashes, no '..'), starting with a letter or digit")
    return name


def study_dir(name: str, runs_dir: str | Path = DEFAULT_RUNS_DIR) -> Path:
    return Path(runs_dir) / check_study_name(name)


def storage_url(name: str, runs_dir: str | Path = DEFAULT_RUNS_DIR) -> str:
    return f"sqlite:///{(study_dir(name, runs_dir) / 'study.db').resolve()}"


OWNER_PID, OWNER_HOST = "searchprune:pid", "searchprune:host"


class _OwnedStorage(optuna.storages.RDBStorage):
    """An RDB storage that stamps every trial this process creates with its owner (host and
    pid) in the very transaction that creates it: a process killed at any instant leaves no
    RUNNING trial that a resume cannot attribute to it (see :func:`fail_stale_running`)."""

    # Optuna's cache layer calls this private method directly; create_new_trial calls it too
    def _create_new_trial(self, study_id: int, template_trial=None):
        if template_trial is None:
            from datetime import datetime
            template_trial = optuna.trial.FrozenTrial(
                number=-1, state=TrialState.RUNNING, value=None, values=None,
                datetime_start=datetime.now(), datetime_complete=None, params={},
                distributions={}, user_attrs={}, intermediate_values={}, trial_id=-1,
                system_attrs={OWNER_PID: os.getpid(), OWNER_HOST: socket.gethostname()})
        return super()._create_new_trial(study_id, template_trial)


def open_storage(url: str, **kwargs) -> optuna.storages.RDBStorage:
    """An RDB storage on ``url`` whose new trials carry their owner process. Two processes
    that open a new SQLite file at once both try to create its tables; the loser sees "table
    already exists" and simply opens it again."""
    import sqlalchemy.exc
    for attempt in range(5):
        try:
            return _OwnedStorage(url, **kwargs)
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError):
            if attempt == 4:
                raise
            time.sleep(random.uniform(0.05, 0.3) * (attempt + 1))


def make_sampler(name, seed: int | None) -> optuna.samplers.BaseSampler:
    """A sampler by name (``nsga2``, ``tpe``, ``random``), or any Optuna sampler as is."""
    if isinstance(name, optuna.samplers.BaseSampler):
        return name
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=20)
    if name == "tpe":
        # group=True: our spaces are conditional (a block's choices exist only when the
        # network has that block); grouped multivariate TPE models each subspace jointly
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise UnknownNameError("sampler", name, SAMPLERS)


def _task_source(task) -> str | None:
    """How export finds the task again: a bundled name, a resolved .npz path, or None for a
    Task object built in Python."""
    if isinstance(task, str):
        return str(Path(task).resolve()) if task.endswith(".npz") else task
    return None


def _study_attrs(space: SearchSpace, profiles: list[HardwareProfile], objectives: list[str],
                 constraints, seed: int, task: Task, task_source: str | None) -> dict:
    return {"space": space.path or space.name, "space_name": space.name, "task": task.name,
            "task_source": task_source,
            "model_factory": getattr(space.builder_fn, "factory", None),
            "family": space.family, "task_input_shape": list(task.input_shape),
            "num_classes": task.num_classes,
            "profiles": [p.name for p in profiles],
            "hardware": [p.path or p.name for p in profiles],
            "budgets": {p.name: {"sram_bytes": p.sram_bytes, "flash_bytes": p.flash_bytes}
                        for p in profiles},
            "objectives": objectives, "constraints": [str(c) for c in constraints],
            "seed": seed}


def _open_study(name: str, storage, attrs: dict, directions: list[str], sampler) -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=storage, directions=directions,
                                sampler=sampler, load_if_exists=True)
    old = study.user_attrs
    if old:
        for key in ("space_name", "profiles", "objectives", "constraints"):
            if old.get(key) != attrs[key]:
                raise ConfigError("argument", key, attrs[key],
                                  f"study {name!r} was created with {old.get(key)!r}; resume it "
                                  "with the same settings or choose another --name")
    else:
        for k, v in attrs.items():
            study.set_user_attr(k, v)
        study.set_metric_names(attrs["objectives"])
    return study


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_stale_running(study: optuna.Study) -> int:
    """Trials left RUNNING by a dead process become FAIL, so their budget is re-spent: a
    process of this machine that no longer exists, or (any machine) a trial whose heartbeat
    stopped longer ago than the storage's grace period."""
    storage = study._storage
    try:
        optuna.storages.fail_stale_trials(study)
    except Exception:  # storages without heartbeat support
        pass
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = storage.get_trial_system_attrs(t._trial_id)
        pid, host = owner.get(OWNER_PID), owner.get(OWNER_HOST)
        if pid is None or host != socket.gethostname() or _pid_alive(pid):
            continue
        storage.set_trial_user_attr(t._trial_id, "error",
                                    "interrupted: the search process died during this trial")
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        n += 1
    return n


class _Progress:
    """Prints one line per finished trial: done / total, its figures, best feasible accuracy."""

    def __init__(self, total: int, quiet: bool, objectives: list[str]):
        self.total, self.quiet, self.objectives = total, quiet, objectives
        self.start = time.perf_counter()

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self.quiet:
            return
        done = sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,
                                                                        TrialState.PRUNED)))
        best = [t.user_attrs["metrics"]["accuracy"] for t in study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get("feasible") and t.user_attrs.get("trained")]
        a = trial.user_attrs
        if trial.state == TrialState.FAIL:
            what = f"failed: {a.get('error', '?')}"
        elif not a.get("trained", False):
            what = f"rejected before training ({', '.join(a.get('violations', []))})"
        else:
            vals = ", ".join(f"{o.split('@')[0]}={v:.4g}" for o, v in zip(self.objectives,
                                                                          trial.values or []))
            what = vals + ("" if a.get("feasible") else " (infeasible)")
        best_s = f"{max(best):.4f}" if best else "-"
        print(f"[{done}/{self.total}] trial {trial.number}: {what} | best feasible accuracy "
              f"{best_s} | {time.perf_counter() - self.start:.0f}s", file=sys.stderr, flush=True)


def search(space: str | Path | SearchSpace, hardware: Sequence[str | HardwareProfile] | str,
           n_trials: int = 30, seed: int = 0, objectives: Sequence[str] | None = None,
           constraints=None, sampler: str = "tpe", name: str | None = None,
           storage: str | None = None, task: str | Task | None = None,
           runs_dir: str | Path = DEFAULT_RUNS_DIR, quiet: bool = False,
           max_consecutive_failures: int = 10, max_rejections: int = 100,
           backend: str = "optuna", workers: int = 1,
           early_stop: float | None = None, ray_address: str | None = None,
           cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0,
           max_retries: int = 2, _worker_index: int = 0) -> SearchResult:
    """Run (or resume) a multi-objective search and return its :class:`SearchResult`.

    ``hardware``: bundled profile names or YAML paths; costs are recorded on all of them and
    SRAM / flash must fit on every one. ``objectives`` default to accuracy, and latency,
    peak RAM and flash on the first profile (``metric@profile`` picks another).
    ``constraints``: ``{"latency_ms": 50}`` or ``["latency_ms<=50"]``. ``storage``: None for
    ``runs/<name>/study.db`` (resumed when it exists), ``"memory"``, or an Optuna URL.
    ``n_trials`` is the total the study should hold (completed or pruned); a resumed study
    only runs what is missing. ``sampler``: ``"tpe"`` (default: multivariate TPE grouped
    by conditional subspace, the best in benchmarks/search_quality.py), ``"nsga2"``,
    ``"random"``, or an Optuna sampler.

    ``backend="optuna"`` runs here, with ``workers`` processes sharing the SQLite study;
    ``backend="ray"`` runs the same trials on Ray Tune (``ray_address`` joins a cluster,
    default a local Ray; ``cpus_per_trial`` / ``gpus_per_trial``; a trial whose worker dies is
    retried up to ``max_retries`` times). ``early_stop=0.1`` stops a trial whose accuracy after
    its first epoch is 0.1 below a front member that costs no more (recorded as PRUNED).
    """
    space = load_space(space)
    if isinstance(hardware, (str, Path, HardwareProfile)):
        hardware = [hardware]
    if not hardware:
        raise ConfigError("argument", "hardware", hardware, "name at least one profile")
    profiles = [load_profile(h) for h in hardware]
    names = [p.name for p in profiles]
    if len(set(names)) != len(names):
        raise ConfigError("argument", "hardware", names, "a profile is named twice")
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ConfigError("argument", "n_trials", n_trials, "must be an integer >= 1")
    objs = [resolve_metric(o, names) for o in (objectives or DEFAULT_OBJECTIVES)]
    if len(set(objs)) != len(objs):
        raise ConfigError("argument", "objectives", objs, "an objective is named twice")
    cons = parse_constraints(constraints, names)
    task_obj = load_task(task or space.task)
    name = check_study_name(name or space.name)
    if backend not in ("optuna", "ray"):
        raise UnknownNameError("backend", backend, ["optuna", "ray"])
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError("argument", "workers", workers, "must be an integer >= 1")
    if early_stop is not None and not (isinstance(early_stop, (int, float)) and 0 <= early_stop < 1):
        raise ConfigError("argument", "early_stop", early_stop,
                          "is an accuracy margin in [0, 1), e.g. 0.1")
    if workers > 1 and (not space.path or space.builder_fn is not None):
        raise ConfigError("argument", "workers", workers, "several worker processes need a "
                          "space from a YAML file (they load it themselves)")
    if workers > 1 and storage is not None:
        raise ConfigError("argument", "storage", storage,
                          "several workers share the default runs/<name>/study.db only")
    if storage is None:
        folder = study_dir(name, runs_dir)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise ConfigError("argument", "runs_dir", str(runs_dir),
                              f"cannot write the study folder: {e.strerror or e}") from None
        storage_obj = open_storage(
            storage_url(name, runs_dir), heartbeat_interval=10, grace_period=30,
            engine_kwargs={"connect_args": {"timeout": 60}})
    elif storage == "memory":
        storage_obj = optuna.storages.InMemoryStorage()
    else:  # an Optuna storage URL (opened as Optuna would, owners stamped) or object
        storage_obj = open_storage(storage) if isinstance(storage, str) else storage
    directions = ["maximize" if is_maximized(o) else "minimize" for o in objs]
    attrs = _study_attrs(space, profiles, objs, cons, seed, task_obj,
                         _task_source(task or space.task))
    sampler_seed = seed + _worker_index  # workers must not replay each other's candidates
    if backend == "ray" and sampler == "nsga2":
        # Optuna's NSGA-II holds a thread lock that Tune cannot pickle
        if not quiet:
            print("searchprune: the Ray backend uses TPE (Tune cannot pickle NSGA-II)",
                  file=sys.stderr)
        sampler = "tpe"
    study = _open_study(name, storage_obj, attrs, directions, make_sampler(sampler, sampler_seed))
    fail_stale_running(study)
    models_dir = None
    if storage is None:
        models_dir = str((study_dir(name, runs_dir) / "models").resolve())
    ctx = TrialContext(space, task_obj, profiles, objs, cons, seed, early_stop_margin=early_stop,
                       models_dir=models_dir)
    if backend == "ray":
        from .ray_backend import run_ray
        run_ray(study, ctx, n_trials, study.sampler, workers, ray_address, cpus_per_trial,
                gpus_per_trial, max_retries, quiet)
        return SearchResult(study)
    procs = []
    threads = None
    if workers > 1:
        import torch
        # one process per worker: share the cores instead of oversubscribing them (OpenMP
        # threads spinning on a busy core slow every process down)
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
        spawn = multiprocessing.get_context("spawn")
        kwargs = dict(space=str(space.path or space.name), hardware=[p.path or p.name for p in
                                                                     profiles],
                      n_trials=n_trials, seed=seed, objectives=objs,
                      constraints=[str(c) for c in cons], sampler=sampler, name=name,
                      task=task if isinstance(task, str) else None, runs_dir=str(runs_dir),
                      quiet=True, max_consecutive_failures=max_consecutive_failures,
                      max_rejections=max_rejections,
                      early_stop=early_stop)
        if isinstance(task, Task):
            raise ConfigError("argument", "workers", workers,
                              "several worker processes need a named task, not a Task object")
        for i in range(1, workers):
            proc = spawn.Process(target=_worker, args=(kwargs, i), daemon=True)
            proc.start()
            procs.append(proc)
    try:
        run_study(study, ctx, n_trials, quiet, max_consecutive_failures, max_rejections)
    finally:
        for proc in procs:
            proc.join()
        if threads is not None:
            import torch
            torch.set_num_threads(threads)
    return SearchResult(study)


class _CopyOf:
    """A picklable builder that returns a fresh copy of one trained model; ``factory``
    (``pkg.module:fn``) rebuilds its architecture for export."""

    def __init__(self, model, factory: str | None = None):
        self.model = model
        self.factory = factory

    def __call__(self, params, input_shape, num_classes):
        import copy
        return copy.deepcopy(self.model)


def search_pruning(model, task: Task | str, hardware, ratio_range: tuple = (0.0, 0.8),
                   criteria: Sequence[str] = ("l1", "taylor"), granularity: str = "structured",
                   n_trials: int = 40, finetune_epochs: int = 2, batch_size: int = 32,
                   lr: float = 0.005, schedule: str = "one_shot", steps: int = 1,
                   name: str | None = None, factory: str | None = None,
                   **kwargs) -> SearchResult:
    """Search per-layer pruning ratios (and the criterion) of an already trained model.

    Every trial starts from ``model``'s trained weights, prunes, fine-tunes for
    ``finetune_epochs`` and is costed on every profile; no training from scratch.
    ``factory``: ``"pkg.module:fn"`` returning the model's (untrained) architecture, so that
    ``export`` can rebuild the pruned trials (the CLI's ``--model`` sets it). Other keyword
    arguments go to :func:`search` (objectives, constraints, sampler, storage...)."""
    from ..spaces import SearchSpace, TrainingSpec, space_from_dict
    lo, hi = ratio_range
    # validate the pruning choices exactly as a space file would be validated
    check = space_from_dict({"name": "check", "task": "digits", "family": "plain",
                             "arch": {"unused": 0},
                             "pruning": {"granularity": granularity,
                                         "criterion": {"choices": list(criteria)},
                                         "ratio": {"low": lo, "high": hi}, "schedule": schedule,
                                         "steps": steps},
                             "training": {"epochs": 1, "finetune_epochs": finetune_epochs,
                                          "batch_size": batch_size, "lr": lr}}, "argument")
    space = SearchSpace(  # search() loads and checks the task
        name=name or f"prune-{type(model).__name__.lower()}",
        task=task.name if isinstance(task, Task) else str(task),
        family=f"trained {type(model).__name__}", arch={},
        pruning=check.pruning,
        training=TrainingSpec(epochs=0, finetune_epochs=finetune_epochs, batch_size=batch_size,
                              lr=lr * 2),  # fine-tuning runs at lr / 2
        builder_fn=_CopyOf(model.eval(), factory))
    return search(space, hardware, n_trials=n_trials, task=task, name=space.name, **kwargs)


def _worker(kwargs: dict, index: int) -> None:
    """One extra worker process of an Optuna-backend search (same study, own sampler seed)."""
    import torch
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // kwargs.get("workers", 2)))
    search(**kwargs, _worker_index=index)


def _counted(study: optuna.Study) -> int:
    return sum(1 for _ in study.get_trials(deepcopy=False,
                                           states=(TrialState.COMPLETE, TrialState.PRUNED)))


def run_study(study: optuna.Study, ctx: TrialContext, n_trials: int, quiet: bool,
              max_consecutive_failures: int, max_rejections: int = 100) -> None:
    """Run trials until the study holds ``n_trials`` completed / pruned ones. A trial that
    raises is recorded as FAIL with its error and the study goes on; after
    ``max_consecutive_failures`` failures in a row the search stops with their causes. When
    the cost gate has rejected ``max_rejections`` candidates and none has fit yet, the
    search stops and says which budgets they broke."""
    progress = _Progress(n_trials, quiet, ctx.objectives)
    failures: list[str] = []
    rejections: list[list[str]] = []

    def objective(trial: optuna.Trial):
        try:
            return run_trial(trial, ctx)
        except optuna.TrialPruned:
            raise
        except Exception as e:
            trial.set_user_attr("error", f"{type(e).__name__}: {e}")
            raise

    def watch_failures(study, trial):
        if trial.user_attrs.get("gate_rejected"):
            if not any(t.user_attrs.get("trained") for t in study.get_trials(
                    deepcopy=False, states=(TrialState.COMPLETE,))):
                rejections.append(trial.user_attrs.get("violations", []))
                if len(rejections) >= max_rejections:
                    study.stop()
        if trial.state == TrialState.FAIL:
            failures.append(trial.user_attrs.get("error", "unknown error"))
            if len(failures) >= max_consecutive_failures:
                study.stop()
        elif trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            failures.clear()
        if _counted(study) >= n_trials:
            study.stop()

    while _counted(study) < n_trials:
        if len(rejections) >= max_rejections:
            from collections import Counter
            broken = Counter(v for vs in rejections for v in vs).most_common()
            raise SearchpruneError(
                f"the cost gate rejected all {len(rejections)} candidates tried so far and none "
                f"fits: violated {', '.join(f'{k} ({n}x)' for k, n in broken)}; the space "
                f"{ctx.space.name!r} may not fit the chosen MCU(s): try smaller choices or "
                "another board")
        if len(failures) >= max_consecutive_failures:
            causes = sorted(set(failures))
            raise SearchpruneError(
                f"stopped after {len(failures)} consecutive failed trials; causes: "
                + " | ".join(causes[:5]))
        study.optimize(objective, n_trials=n_trials - _counted(study), catch=(Exception,),
                       callbacks=[watch_failures, progress])


def load_study(name: str, runs_dir: str | Path = DEFAULT_RUNS_DIR) -> SearchResult:
    """Open a finished or running study by name (read only)."""
    path = study_dir(name, runs_dir) / "study.db"
    if not path.is_file():
        known = [p.name for p in Path(runs_dir).glob("*") if (p / "study.db").is_file()]
        raise UnknownNameError(f"study (no {path})", name, known)
    storage = open_storage(storage_url(name, runs_dir))
    return SearchResult(optuna.load_study(study_name=name, storage=storage))
