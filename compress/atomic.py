"""Write files so that a crash never leaves a half-written artifact behind."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        if disk_full(e, path.parent):
            raise UserError(f"{path}: no space left on device") from None
        raise
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; a file we ship gets the usual mode
        with open(tmp_path, "rb+") as f:     # on disk before the rename: a power cut leaves old or new
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except Exception as e:
        if disk_full(e, path.parent):
            raise UserError(f"{path}: no space left on device (the previous file, if any, is unchanged)") from None
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def disk_full(error: BaseException, folder: Path) -> bool:
    """Did `error` come from a full disk? torch.save and safetensors say so in their own words
    (e.g. '[enforce fail at inline_container.cc]'), so a nearly empty filesystem also counts."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if "No space left" in str(error):
        return True
    try:
        return isinstance(error, (RuntimeError, OSError)) and shutil.disk_usage(folder).free < (1 << 20)
    except OSError:
        return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_in_the_way(path: str | os.PathLike) -> Path | None:
    """The first of `path`'s parents that exists and is not a folder (so nothing can be written under it)."""
    return next((p for p in Path(path).parents if p.exists() and not p.is_dir()), None)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
