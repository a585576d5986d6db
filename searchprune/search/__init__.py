"""Search orchestration: the trial pipeline, the Optuna backend, Pareto fronts."""
from .metrics import DEFAULT_OBJECTIVES, METRICS
from .optuna_backend import load_study, search, search_pruning
from .pareto import hypervolume, non_dominated
from .result import SearchResult

__all__ = ["DEFAULT_OBJECTIVES", "METRICS", "SearchResult", "hypervolume", "load_study",
           "non_dominated", "search", "search_pruning"]
