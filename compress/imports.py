"""Import a user's object named 'package.module:attr' (a model or dataset factory, a pruner class).

The working directory is importable, as it is for `python -m`, so a module beside the config needs
no PYTHONPATH.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Callable

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
    except (Exception, SystemExit) as e:  # ImportError, AttributeError, or whatever the module does on import
        raise UserError(f"{field}: cannot import {spec!r} ({type(e).__name__}: {_first_line(e)})") from None


def call_user(fn: Callable[..., Any], spec: str, field: str, **kwargs: Any) -> Any:
    """fn(**kwargs) for the user's factory `spec`: whatever it raises, and an exit() in it, is a one-line
    UserError naming `field` and `spec` (an exit must not end sparsepipe with its status and no message)."""
    try:
        return fn(**kwargs)
    except SystemExit as e:
        raise UserError(f"{field}: {spec!r} called exit({e.code!r}) instead of returning") from None
    except MemoryError:
        raise UserError(f"{field}: {spec!r} ran out of memory (MemoryError)") from None
    except Exception as e:  # the user's code: say whose and what, in one line
        raise UserError(f"{field}: {spec!r} raised {type(e).__name__}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]
