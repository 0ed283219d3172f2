"""Bounded reads: every small file sparsepipe parses (config, report, manifest, JSON) is checked to be a
regular file under a size limit before a byte is parsed; nesting too deep to parse is one line."""
from __future__ import annotations

import json
import os
import stat
import tomllib
from typing import Any

from .errors import UserError

MiB = 1 << 20
CONFIG_BYTES = 1 * MiB   # a run config or a run's config.toml
JSON_BYTES = 16 * MiB    # reports, manifests, model.json, structure records


def read_bytes(path: str | os.PathLike, limit: int, what: str) -> bytes:
    """The bytes of `path`, a regular file of at most `limit` bytes (a device, FIFO or folder is refused
    before it is opened, so /dev/zero cannot grow memory and a FIFO cannot hang)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise UserError(f"{path}: cannot read {what} ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{path}: cannot read {what} (not a regular file)")
    if st.st_size > limit:
        raise UserError(f"{path}: {what} is {st.st_size} bytes, more than the {limit} allowed")
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise UserError(f"{path}: cannot read {what} ({e.strerror})") from None
    if len(data) > limit:  # grew while we read it
        raise UserError(f"{path}: {what} is more than the {limit} bytes allowed")
    return data


def read_text(path: str | os.PathLike, limit: int, what: str, problem: str = "cannot read {what}") -> str:
    """read_bytes as UTF-8; bytes that are not text are `problem` (formatted with `what`)."""
    try:
        return read_bytes(path, limit, what).decode()
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: {problem.format(what=what)} (not UTF-8 text: {e.reason} at byte {e.start})") \
            from None


def load_json(path: str | os.PathLike, what: str, limit: int = JSON_BYTES) -> Any:
    """A JSON document of at most `limit` bytes; NaN/Infinity literals refused."""
    text = read_text(path, limit, f"{what} JSON")
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        raise UserError(f"{path}: cannot read {what} JSON ({str(e)[:200]})") from None


def load_toml(path: str | os.PathLike, what: str, limit: int = CONFIG_BYTES) -> dict:
    text = read_text(path, limit, what, "invalid TOML")
    try:
        return tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as e:
        raise UserError(f"{path}: invalid TOML ({e})") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")
