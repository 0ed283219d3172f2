"""Pruning methods by name, each behind the `Pruner` protocol (see base.py), found through one
registry (registry.py): a built-in module, a class a user registered, or 'package.module:Class'.
"""
from __future__ import annotations

from .base import MaskPruner, Pruner, TrainPlan
from .registry import build_pruner, option_classes, pruner_class, register_pruner, registered_pruners

__all__ = ["MaskPruner", "Pruner", "TrainPlan", "build_pruner", "option_classes", "pruner_class",
           "register_pruner", "registered_pruners"]
