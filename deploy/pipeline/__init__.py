"""The staged pipeline over a run folder: train → freeze → convert → export → validate.

Each stage is one declared `Stage` (the table in stage.py), its work in its own module; `cache.py`
holds the manifests and the skip rule; `runner.py` runs stages in order; `run.py` is the run
folder and its config. Importing this package is light: the names below load on first use.
"""
from __future__ import annotations

import importlib

_EXPORTS = {"Run": "run", "open_run": "run", "run_pipeline": "runner", "run_stage": "runner",
            "STAGES": "stage", "BY_NAME": "stage", "Stage": "stage"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
