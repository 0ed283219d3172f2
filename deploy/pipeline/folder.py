"""The run folder as a place on disk: refuse to write where a user's files are, and one process at a time."""
from __future__ import annotations

import fcntl
import os
import tomllib
from pathlib import Path

from compress.atomic import file_in_the_way
from compress.errors import UserError

LOCK = ".lock"


def is_run_folder(path: Path) -> bool:
    """Does `path` hold a config.toml that sparsepipe wrote (it has config_version)?"""
    try:
        return "config_version" in tomllib.loads((path / "config.toml").read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False


def check_run_dir(path: Path, force: bool) -> None:
    """Refuse a file, a path under a file, or a non-empty folder that is not a run (unless `force`)."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: is a file; --out must name a folder")
    blocker = file_in_the_way(path)
    if blocker is not None:
        raise UserError(f"{path}: is under {blocker}, which is a file; --out must name a folder")
    theirs = [p for p in path.iterdir() if p.name != LOCK] if path.is_dir() else []
    if theirs and not is_run_folder(path) and not force:
        raise UserError(f"{path}: not empty and not a sparsepipe run folder; choose another --out, or pass "
                        "--force to add a run to it (files sparsepipe did not write are never deleted)")


class RunLock:
    """An exclusive lock on a run folder for the life of the command (released if the process dies)."""

    def __init__(self, path: Path):
        self.path = path / LOCK

    def __enter__(self) -> "RunLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"{self.path.parent}: cannot use as a run folder ({e.strerror})") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise UserError(f"{self.path.parent}: run folder in use by PID {holder}") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
