"""SearchResult: the study's trials and Pareto fronts as pandas DataFrames."""
from __future__ import annotations

import math

import optuna
import pandas as pd

from .metrics import COST_METRICS, is_maximized, retarget
from .pareto import non_dominated


class SearchResult:
    """Read-only view of one study: ``trials``, ``pareto``, ``pareto_for(profile)``.

    Metric columns are named after the metrics (``accuracy``, ``latency_ms``, ...) for the
    first profile, and ``latency_ms@<profile>`` for every chosen profile.
    """

    def __init__(self, study: optuna.Study):
        self.study = study
        attrs = study.user_attrs
        self.name: str = study.study_name
        self.profiles: list[str] = list(attrs["profiles"])
        self.objectives: list[str] = list(attrs["objectives"])
        self.budgets: dict = attrs.get("budgets", {})
        self._frozen: pd.DataFrame | None = None

    def snapshot(self) -> "SearchResult":
        """This result with its trials read from the storage once: every view built from it
        (a report's plots, fronts and tables) shows the same trials, even while the study
        runs on, and none rereads the storage."""
        snap = SearchResult(self.study)
        snap._frozen = self.trials
        return snap

    def __repr__(self) -> str:
        return (f"SearchResult({self.name!r}, trials={len(self.study.trials)}, "
                f"profiles={self.profiles}, objectives={self.objectives})")

    @property
    def trials(self) -> pd.DataFrame:
        """Every trial: number, state, duration (s), feasible, trained, metrics, params."""
        if self._frozen is not None:
            return self._frozen.copy()
        rows = []
        first = self.profiles[0]
        for t in self.study.get_trials(deepcopy=False):
            a = t.user_attrs
            m = a.get("metrics", {})
            row = {"number": t.number, "state": t.state.name,
                   "duration": t.duration.total_seconds() if t.duration else math.nan,
                   "feasible": bool(a.get("feasible", False)) and t.state.name == "COMPLETE",
                   "trained": bool(a.get("trained", False))}
            for key in ("accuracy", "accuracy_int8"):
                row[key] = math.nan if m.get(key) is None else m[key]
            for metric in COST_METRICS:
                row[metric] = m.get(f"{metric}@{first}", math.nan)
            for p in self.profiles:
                for metric in COST_METRICS:
                    row[f"{metric}@{p}"] = m.get(f"{metric}@{p}", math.nan)
                cons = a.get("constraints", {})
                row[f"feasible@{p}"] = bool(cons) and all(
                    v <= 0 for k, v in cons.items() if k.endswith(f"@{p}") or "@" not in k)
            row["violations"] = ", ".join(a.get("violations", []))
            row["sparsity"] = a.get("sparsity", math.nan)
            for k, v in t.params.items():
                row[f"params_{k}"] = v
            if "error" in a:
                row["error"] = a["error"]
            rows.append(row)
        df = pd.DataFrame(rows)
        if df.empty:
            return pd.DataFrame(columns=["number", "state", "duration", "feasible", "trained",
                                         "accuracy", *COST_METRICS])
        return df

    def _front(self, objectives: list[str], feasible_col: str) -> pd.DataFrame:
        df = self.trials
        if df.empty:
            return df
        ok = df[(df["state"] == "COMPLETE") & df[feasible_col] & df["trained"]]
        if ok.empty:
            return ok
        values = ok[objectives].to_numpy(dtype=float)
        mask = non_dominated(values, [is_maximized(o) for o in objectives])
        front = ok[mask]
        sort_col = "accuracy" if "accuracy" in front else objectives[0]
        return front.sort_values(sort_col, ascending=False).reset_index(drop=True)

    @property
    def pareto(self) -> pd.DataFrame:
        """Non-dominated trials among those feasible on every chosen profile."""
        return self._front(self.objectives, "feasible")

    def pareto_for(self, profile: str) -> pd.DataFrame:
        """The front for one chosen profile: objectives and feasibility on that MCU."""
        if profile not in self.profiles:
            from ..errors import UnknownNameError
            raise UnknownNameError("profile of this study", profile, self.profiles)
        objectives = [retarget(o, profile) for o in self.objectives]
        return self._front(objectives, f"feasible@{profile}")

    def plot_pareto(self, x: str = "latency_ms", y: str = "accuracy", profile: str | None = None):
        """A plotly figure of every trial on one MCU with the front marked (needs plotly)."""
        from ..report import plot_pareto
        return plot_pareto(self, x=x, y=y, profile=profile)

    def write_report(self, path):
        """Write the self-contained HTML report (as ``searchprune report``); returns its path."""
        from ..report import write_report
        return write_report(self, path)

    def export(self, trial: int, out, runs_dir="runs", qat_epochs: int | None = None,
               task=None):
        """Export one trained trial for deployment (see :func:`searchprune.export.export_trial`)."""
        from ..export import export_trial
        return export_trial(self, trial, out, runs_dir=runs_dir, qat_epochs=qat_epochs,
                            task=task)

    def front_table(self, profile: str | None = None) -> pd.DataFrame:
        """The front with its key columns only, for printing."""
        front = self.pareto if profile is None else self.pareto_for(profile)
        p = profile or self.profiles[0]
        cols = ["number", "accuracy"] + [f"{m}@{p}" for m in
                                         ("latency_ms", "peak_ram_bytes", "flash_bytes",
                                          "energy_uj", "macs", "params")]
        cols += [c for c in front.columns if c.startswith("params_") and "ratio." not in c]
        if front.empty:
            return pd.DataFrame(columns=cols)
        out = front[[c for c in cols if c in front.columns]].copy()
        return out.rename(columns={f"{m}@{p}": m for m in COST_METRICS})
