"""Import a user's object named 'package.module:attr' (a model or dataset factory, a pruner class).

The working directory is importable, as it is for `python -m`, so a module beside the config needs
no PYTHONPATH.
"""
from __future__ import annotations

import importlib
import os
import sys
import traceback
from types import TracebackType
from typing import Any, Callable

from .errors import UserError

# spec and config field of every user object imported, by the file that defines its module
USER_FILES: dict[str, tuple[str, str]] = {}


def load_object(spec: str, field: str) -> object:
    """The object `spec` names; any failure to import it is a one-line UserError naming `field`."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"{field}: expected 'package.module:name', got {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
        obj = getattr(module, attr)
    except (Exception, SystemExit) as e:  # ImportError, AttributeError, or whatever the module does on import
        raise UserError(f"{field}: cannot import {spec!r} ({type(e).__name__}: {_first_line(e)})") from None
    if getattr(module, "__file__", None):
        USER_FILES[os.path.realpath(module.__file__)] = (spec, field)
    return obj


def user_code_error(e: BaseException) -> UserError | None:
    """When `e` was raised inside the code of a user's module (a model's forward, a dataset's
    __getitem__, a pruner's hook, imported through load_object), a one-line UserError naming the config
    field, the file and line and the error; None when no user code is on its traceback."""
    tb: TracebackType | None = e.__traceback__
    where = None
    for frame in traceback.extract_tb(tb):
        owner = USER_FILES.get(os.path.realpath(frame.filename))
        if owner:
            where = (owner, frame)  # the innermost user frame
    if where is None:
        return None
    (spec, field), frame = where
    return UserError(f"{field}: {spec!r}: {type(e).__name__} raised in its code at "
                     f"{os.path.basename(frame.filename)}:{frame.lineno}: {_first_line(e)}")


def call_user(fn: Callable[..., Any], spec: str, field: str, **kwargs: Any) -> Any:
    """fn(**kwargs) for the user's factory `spec`: whatever it raises, and an exit() in it, is a one-line
    UserError naming `field` and `spec` (an exit must not end sparsepipe with its status and no message)."""
    try:
        return fn(**kwargs)
    except KeyboardInterrupt:
        raise
    except SystemExit as e:
        raise UserError(f"{field}: {spec!r} called exit({e.code!r}) instead of returning") from None
    except MemoryError:
        raise UserError(f"{field}: {spec!r} ran out of memory (MemoryError)") from None
    except BaseException as e:  # the user's code: say whose and what, in one line
        raise UserError(f"{field}: {spec!r} raised {type(e).__name__}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]
