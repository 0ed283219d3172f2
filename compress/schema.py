"""Typed, documented config sections: dataclasses whose fields carry docs and ranges.

`parse(cls, table, where)` turns a TOML table into an instance, rejecting unknown
fields, wrong types and out-of-range values with a one-line UserError naming the field.
"""
from __future__ import annotations

import copy
import math
import dataclasses
import types
import typing
from typing import Any, Callable, Literal, TypeVar, get_args, get_origin

from .errors import UserError

T = TypeVar("T")


def opt(default: Any, doc: str, *, lo: float | None = None, hi: float | None = None,
        lo_open: bool = False, hi_open: bool = False, sparsity_goal: bool = False) -> Any:
    """A documented field. lo/hi bound numbers (and every number in a list); *_open excludes the bound.
    `sparsity_goal` marks the pruner option that holds the weight sparsity the user asks for."""
    meta = {"doc": doc, "lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open, "sparsity_goal": sparsity_goal}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def tables(lookup: Callable[[], dict[str, type]], doc: str) -> Any:
    """A field holding named sub-tables of its section (TOML `[section.NAME]`), each parsed by the
    dataclass `lookup()` gives for NAME; names not written get that class's defaults. `lookup` is
    called when a section is built, so a table registered later (a user's pruner) is seen."""
    return dataclasses.field(default_factory=lambda: {n: c() for n, c in lookup().items()},
                             metadata={"doc": doc, "tables": lookup})


def sparsity_goal(options: Any) -> float:
    """The value of the field `opt(..., sparsity_goal=True)` marks in an options dataclass (0.0: none)."""
    if not dataclasses.is_dataclass(options):
        return 0.0
    marked = next((f for f in dataclasses.fields(options) if f.metadata.get("sparsity_goal")), None)
    return float(getattr(options, marked.name) or 0.0) if marked else 0.0


def _short(value: Any, limit: int = 80) -> str:
    """repr(value), cut to `limit` characters: an error line must stay one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _tables_field(cls: type) -> dataclasses.Field | None:
    return next((f for f in dataclasses.fields(cls) if "tables" in f.metadata), None)


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None))
    if get_origin(tp) is list:
        return f"a list of ({_type_name(get_args(tp)[0])})"
    if dataclasses.is_dataclass(tp):
        return "tables with " + ", ".join(f.name for f in dataclasses.fields(tp))
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string", dict: "a table"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    origin = get_origin(tp)
    bad = UserError(f"{path}: expected {_type_name(tp)}, got {_short(value)}")
    if origin is Literal:
        if value not in get_args(tp):
            raise bad
        return value
    if origin in (types.UnionType, typing.Union):
        for arg in get_args(tp):
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except UserError:
                pass
        raise bad
    if origin is list:
        if not isinstance(value, list):
            raise bad
        (item,) = get_args(tp)
        return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is dict:
        if not isinstance(value, dict):
            raise UserError(f"{path}: expected a table, got {_short(value)}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"{path}: expected a table, got {_short(value)}")
        return parse(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if not math.isfinite(value):
            raise UserError(f"{path}: expected a finite number, got {_short(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported field type {tp} at {path}")


def _check_range(value: Any, meta: dict, path: str) -> None:
    values = value if isinstance(value, list) else [value]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        lo, hi = meta.get("lo"), meta.get("hi")
        too_low = lo is not None and (v <= lo if meta.get("lo_open") else v < lo)
        too_high = hi is not None and (v >= hi if meta.get("hi_open") else v > hi)
        if too_low or too_high:
            raise UserError(f"{path}: expected a value in {describe_range(meta)}, got {_short(v)}")


def describe_range(meta: dict) -> str:
    lo, hi = meta.get("lo"), meta.get("hi")
    left = "(" if meta.get("lo_open") else "["
    right = ")" if meta.get("hi_open") else "]"
    return f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"


def field_path(where: str, key: str) -> str:
    """'run.toml' + 'train' → 'run.toml: train'; 'run.toml: train' + 'lr' → 'run.toml: train.lr'."""
    return f"{where}.{key}" if ": " in where else f"{where}: {key}"


def parse(cls: type[T], table: dict, where: str) -> T:
    """Build a `cls` from a TOML table; `where` prefixes every error ('run.toml' or 'run.toml: train')."""
    named = _tables_field(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f is not named}
    hints = typing.get_type_hints(cls)
    sub = {n: c() for n, c in named.metadata["tables"]().items()} if named else {}
    kwargs = {}
    for key, value in table.items():
        path = field_path(where, key)
        if key in fields:
            kwargs[key] = _coerce(value, hints[key], path)
            _check_range(kwargs[key], fields[key].metadata, path)
        elif key in sub:
            sub[key] = _coerce(value, type(sub[key]), path)
        else:
            raise UserError(f"{path}: unknown field (expected one of: {', '.join([*fields, *sub])})")
    if named:
        kwargs[named.name] = sub
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        check(where)
    return obj


def to_dict(obj: Any) -> dict:
    """The resolved section as a plain dict (what gets written to the run's config.toml); named
    sub-tables (`tables`) sit in the section itself, as in the TOML."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if "tables" in f.metadata:
            out.update({n: to_dict(v) for n, v in value.items()})
        else:
            out[f.name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return to_dict(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return copy.deepcopy(value)


def reference(cls: type, prefix: str) -> list[str]:
    """Markdown rows `| field | type | default | meaning |` for the config reference."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if "tables" in f.metadata:
            for name, sub in f.metadata["tables"]().items():
                rows += reference(sub, f"{prefix}{name}.")
            continue
        if dataclasses.is_dataclass(tp):
            rows += reference(tp, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        meta = f.metadata
        rng = f" in {describe_range(meta)}" if meta.get("lo") is not None or meta.get("hi") is not None else ""
        rows.append(f"| `{prefix}{f.name}` | {_type_name(tp)}{rng} | `{default!r}` | {meta.get('doc', '')} |")
    return rows
