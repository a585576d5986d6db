"""Pruning: structured (channels removed, dependency-aware via torch-pruning), unstructured
and N:M (masks kept through fine-tuning); magnitude, Taylor, Hessian and activation criteria;
one-shot, iterative and lottery-ticket schedules."""
from .criteria import CRITERIA, NEEDS_DATA
from .prune import (MASKS_ATTR, apply_masks, classifier_name, layer_widths, parse_nm,
                    prunable_layers, prune, sparsity)
from .schedules import CURVES, lottery_ticket, prune_iteratively, rewind, schedule_ratios

__all__ = ["CRITERIA", "CURVES", "MASKS_ATTR", "NEEDS_DATA", "apply_masks", "classifier_name",
           "layer_widths", "lottery_ticket", "parse_nm", "prunable_layers", "prune",
           "prune_iteratively", "rewind", "schedule_ratios", "sparsity"]
