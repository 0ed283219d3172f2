"""What decides a stage's result beyond its config: the content of the files and code it names.

A stage's fingerprint includes, for the config sections it reads: the weights file's hash
(model.weights), the data files' listing (path, size, modification time; the root's hash when it
is a single file), the source of a user's module named 'package.module:name' (model, dataset,
pruner), and the library versions. Change any of them and the stage runs again.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
from importlib.metadata import version as package_version
from pathlib import Path

from compress import atomic
from compress.errors import UserError

from .run import Run
from .stage import Stage


PACKAGES = ("sparsepipe", "torch", "onnx", "onnxruntime", "numpy")


def versions() -> dict:
    """Python and the library versions that decide a result."""
    return {"python": platform.python_version(), **{p: package_version(p) for p in PACKAGES}}


def listing_digest(root: Path) -> str:
    """Hash of every file under `root`: relative path, size and modification time (cheap at any size)."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            try:
                st = path.stat()
            except OSError as e:  # e.g. a dangling symbolic link
                raise UserError(f"data.root: {path}: cannot read ({e.strerror}"
                                f"{'; a dangling symbolic link' if path.is_symlink() else ''})") from None
            h.update(f"{path.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def module_digest(spec: str) -> str | None:
    """Hash of the source file of the module in 'package.module:name' (None: not a user module)."""
    module = spec.partition(":")[0]
    if ":" not in spec or module == "torchvision":
        return None
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    origin = found.origin if found else None
    return atomic.sha256_file(origin) if origin and os.path.isfile(origin) else None


def stage_inputs(run: Run, stage: Stage) -> dict:
    cfg, out = run.cfg, {"versions": versions()}
    if "model" in stage.config:
        if cfg.model.weights:
            out["model.weights"] = atomic.sha256_file(cfg.model.weights)
        out["model.name"] = module_digest(cfg.model.name)
    if "data" in stage.config:
        root = Path(cfg.data.root) if cfg.data.root else None
        if root is not None and root.is_file():
            out["data.root"] = atomic.sha256_file(root)
        elif root is not None and root.is_dir():
            out["data.root"] = listing_digest(root)
        out["data.name"] = module_digest(cfg.data.name)
    if "prune" in stage.config:
        out["prune.method"] = module_digest(cfg.prune.method)
    return out
