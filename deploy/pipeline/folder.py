"""The run folder as a place on disk: refuse to write where a user's files are, and one process at a time."""
from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

from compress.atomic import file_in_the_way
from compress.errors import UserError
from compress.limits import load_toml

LOCK = ".lock"
# the first line of every config.toml sparsepipe writes into a run folder
HEADER = "# sparsepipe run folder: this config.toml was written by sparsepipe\n"
STAGE_FOLDERS = ("train", "frozen", "sparse", "onnx", "report")


def is_run_folder(path: Path) -> bool:
    """Did sparsepipe make `path`: the lock file every run command takes (a regular file), and a
    config.toml with config_version that starts with sparsepipe's header (or, from before the header,
    beside a stage record)? A user's copy of a run's config.toml in their own folder has no lock."""
    try:
        if not stat.S_ISREG(os.lstat(path / LOCK).st_mode):  # a symlink to someone's file is not our lock
            return False
    except OSError:
        return False
    try:
        if "config_version" not in load_toml(path / "config.toml", "config"):
            return False
        with open(path / "config.toml", encoding="utf-8", errors="replace") as f:
            first = f.readline()
    except (UserError, OSError):
        return False
    # sparsepipe's header, or (a folder from before the header) a stage record sparsepipe wrote
    return first == HEADER or any((path / s / "stage.json").is_file() for s in STAGE_FOLDERS)


def protected_place(path: Path) -> str | None:
    """What `path` is if it is a place a run must never go: the filesystem root, the home folder, or
    the root of the repository the command runs in (their files are the user's, whatever the flags)."""
    where = path.resolve()
    if where == Path(where.anchor):
        return "the filesystem root"
    if where == Path.home().resolve():
        return "the home folder"
    here = Path.cwd().resolve()
    repo = next((p for p in (here, *here.parents) if (p / ".git").exists()), None)
    if where == repo:
        return "the root of the current repository"
    return None


def check_run_dir(path: Path, force: bool = False) -> None:
    """Refuse a file, a path under a file, a protected place, or a non-empty folder that is not a run.
    `force` changes none of this: it re-runs stages, it never lets a run into someone else's files."""
    place = protected_place(path)
    if place is not None:
        raise UserError(f"{path}: is {place}; --out must name a run folder of its own")
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: is a file; --out must name a folder")
    blocker = file_in_the_way(path)
    if blocker is not None:
        raise UserError(f"{path}: is under {blocker}, which is a file; --out must name a folder")
    theirs = [p for p in path.iterdir() if p.name != LOCK] if path.is_dir() else []
    if theirs and not is_run_folder(path):
        raise UserError(f"{path}: not empty and not a sparsepipe run folder (no config.toml written by "
                        "sparsepipe); choose an empty or new folder for --out (--force does not change this)")


class RunLock:
    """An exclusive lock on a run folder for the life of the command (released if the process dies)."""

    def __init__(self, path: Path):
        self.path = path / LOCK

    def __enter__(self) -> "RunLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
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
