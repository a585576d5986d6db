"""searchprune: hardware-aware NAS and pruning for microcontrollers.

>>> import searchprune as sp
>>> sp.load_profile("stm32f746-tflm-cmsisnn").clock_hz
216000000
"""
from __future__ import annotations

from . import hardware
from .calibration import calibrate
from .cost import CostReport, estimate
from .errors import ConfigError, SearchpruneError, UnknownNameError, UnsupportedOpError
from .hardware import HardwareProfile, list_profiles, load_profile
from .pruning import prune, sparsity
from .search import (SearchResult, hypervolume, load_study, non_dominated, search,
                     search_pruning)
from .spaces import SearchSpace, list_spaces, load_space
from .training import Task, digits_task

__all__ = ["ConfigError", "CostReport", "HardwareProfile", "SearchResult", "SearchSpace",
           "SearchpruneError", "Task", "UnknownNameError", "UnsupportedOpError", "calibrate",
           "digits_task", "estimate", "hardware", "hypervolume", "list_profiles", "list_spaces",
           "load_profile", "load_space", "load_study", "non_dominated", "prune", "search",
           "search_pruning", "sparsity"]
__version__ = "0.1.0"
