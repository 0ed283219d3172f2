"""Import a user's object named 'package.module:attr' (a model or dataset factory, a pruner class).

The working directory is importable, as it is for `python -m`, so a module beside the config needs
no PYTHONPATH.
"""
from __future__ import annotations

import importlib
import os
import sys

from .errors import UserError


def load_object(spec: str, field: str) -> object:
    """The object `spec` names; any failure to import it is a one-line UserError naming `field`."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"{field}: expected 'package.module:name', got {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return getattr(importlib.import_module(module_name), attr)
    except Exception as e:  # ImportError, AttributeError, or whatever the user's module raises on import
        raise UserError(f"{field}: cannot import {spec!r} ({type(e).__name__}: {e})") from None
