"""Ray Tune backend: the same trial pipeline (:func:`run_trial`) on a Ray cluster, with
Optuna's sampler through Tune's OptunaSearch writing into the same Optuna storage, so
``front``, ``report`` and ``dashboard`` work on a Ray-made study unchanged.

Tune hands each worker the sampled parameters; the worker replays them through an
``optuna.trial.FixedTrial`` into :func:`run_trial`, and reports objective values plus the
trial's attributes and constraints, which the searcher writes into the Optuna trial before
telling the study. Needs ``pip install -e ".[ray]"``.
"""
from __future__ import annotations

import base64
import dataclasses
import functools
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from ..errors import SearchpruneError
from ..io import atomic_write_bytes

# Tune drives the study through ask/tell; the storage heartbeat still marks dead trials
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
from .metrics import is_maximized
from .objective import TrialContext, run_trial, sample_candidate


def _define_space(trial: optuna.Trial, ctx: TrialContext) -> dict:
    """Define-by-run space for OptunaSearch: the very sampling run_trial does."""
    sample_candidate(trial, ctx)
    return {"_number": trial.number}


def _trainable(config: dict, ctx: TrialContext) -> None:
    from ray import tune
    import torch
    torch.set_num_threads(1)
    params = {k: v for k, v in config.items() if k != "_number"}
    trial = optuna.trial.FixedTrial(params, number=config["_number"])
    pruned = False
    # the worker may be another machine: the trained model travels back with the result and
    # the driver writes it under the study's runs/<name>/models/
    with tempfile.TemporaryDirectory() as models_dir:
        try:
            values = run_trial(trial, ctx if ctx.models_dir is None else
                               dataclasses.replace(ctx, models_dir=models_dir))
        except optuna.TrialPruned:
            pruned, values = True, [0.0] * len(ctx.objectives)
        saved = Path(models_dir) / f"{trial.number}.pt"
        model = base64.b64encode(saved.read_bytes()).decode() if saved.exists() else None
    result = {f"obj{i}": float(v) for i, v in enumerate(values)}
    # one JSON string: Tune flattens nested dicts in results
    result["searchprune"] = json.dumps({"user_attrs": trial.user_attrs, "model": model,
                                        "constraints": trial.constraints, "pruned": pruned})
    tune.report(result)


def _searcher_class():
    from ray.tune.search.optuna import OptunaSearch

    class RecordingOptunaSearch(OptunaSearch):
        """Copies the worker's attributes and constraints into the Optuna trial first."""

        models_dir: str | None = None

        def on_trial_complete(self, trial_id, result=None, error=False):
            ot_trial = self._ot_trials.get(trial_id)
            payload = json.loads(result["searchprune"]) if result and "searchprune" in result \
                else None
            if ot_trial is not None and payload:
                if payload.get("model") and self.models_dir:
                    atomic_write_bytes(os.path.join(self.models_dir, f"{ot_trial.number}.pt"),
                                       base64.b64decode(payload["model"]))
                for k, v in payload["user_attrs"].items():
                    ot_trial.set_user_attr(k, v)
                for k, v in payload["constraints"].items():
                    ot_trial.set_constraint(k, v)
                if payload["pruned"]:
                    self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
                    self._completed_trials.add(trial_id)
                    return
            if ot_trial is not None and error:
                ot_trial.set_user_attr("error", "the Ray worker failed (after retries)")
            super().on_trial_complete(trial_id, result, error)

    return RecordingOptunaSearch


def run_ray(study: optuna.Study, ctx: TrialContext, n_trials: int, sampler, workers: int,
            ray_address: str | None, cpus_per_trial: float, gpus_per_trial: float,
            max_retries: int, quiet: bool) -> None:
    """Run the missing trials of ``study`` (RDB storage) on Ray Tune."""
    try:
        import ray
        from ray import tune
    except ImportError:
        raise SearchpruneError('the Ray backend needs Ray Tune: pip install -e ".[ray]"') from None
    storage = study._storage
    if isinstance(storage, optuna.storages.InMemoryStorage):
        raise SearchpruneError("the Ray backend needs a database storage (the default "
                               "runs/<name>/study.db), not 'memory'")
    done = sum(1 for _ in study.get_trials(deepcopy=False,
                                           states=(TrialState.COMPLETE, TrialState.PRUNED)))
    remaining = n_trials - done
    if remaining <= 0:
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        kwargs = dict(include_dashboard=False, log_to_driver=not quiet,
                      runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(sys.path)}})
        if ray_address:
            ray.init(address=ray_address, **kwargs)
        else:
            ray.init(num_cpus=max(int(workers * cpus_per_trial), 1), **kwargs)
    storage_for_workers = _picklable_storage(storage)
    ctx = TrialContext(**{**vars(ctx), "completed": functools.partial(
        _completed_trials, storage_for_workers, study.study_name)})
    searcher = _searcher_class()(
        space=functools.partial(_define_space, ctx=ctx),
        metric=[f"obj{i}" for i in range(len(ctx.objectives))],
        mode=["max" if is_maximized(o) else "min" for o in ctx.objectives],
        sampler=sampler, study_name=study.study_name, storage=storage)
    searcher.models_dir = ctx.models_dir
    trainable = tune.with_resources(functools.partial(_trainable, ctx=ctx),
                                    {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
    before = {t.number for t in study.get_trials(deepcopy=False)}
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=remaining,
                                    max_concurrent_trials=workers, reuse_actors=True),
        run_config=tune.RunConfig(
            name=study.study_name, storage_path=tempfile.mkdtemp(prefix="searchprune-ray-"),
            verbose=0 if quiet else 1,
            failure_config=tune.FailureConfig(max_failures=max_retries)))
    try:
        tuner.fit()
    finally:
        # a failed fit leaves its trials RUNNING in the study: record them as failed
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.number not in before:
                storage.set_trial_user_attr(t._trial_id, "error", "Ray run ended during trial")
                storage.set_trial_state_values(t._trial_id, TrialState.FAIL)


def _picklable_storage(storage) -> str:
    url = getattr(storage, "url", None)
    if url is None and hasattr(storage, "engine"):
        url = str(storage.engine.url)
    return url


def _completed_trials(url: str | None, name: str):
    if url is None:
        return []
    study = optuna.load_study(study_name=name, storage=url)
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
