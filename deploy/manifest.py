"""The format names and versions of the folders deploy writes, and one reader that checks them."""
from __future__ import annotations

from pathlib import Path

from compress.errors import UserError
from compress.limits import load_json

SPARSE_WEIGHTS = ("sparsepipe-sparse", 3)           # convert's CSR/BSR folder (formats.py); 3: sha256, sorted
SPARSE_COMPUTE = ("sparsepipe-sparse-compute", 3)   # an ONNX model with CSR weights bound at run time


def read_manifest(folder: str | Path, kind: tuple[str, int], what: str) -> dict:
    """folder/manifest.json, checked to be `kind` (format, version); a one-line UserError otherwise."""
    path = Path(folder) / "manifest.json"
    manifest = load_json(path, f"{what} manifest")
    name, version = kind
    if not isinstance(manifest, dict) or manifest.get("format") != name or manifest.get("version") != version:
        got = manifest if isinstance(manifest, dict) else {}
        raise UserError(f"{path}: format {got.get('format')!r} version {got.get('version')!r}, "
                        f"expected {name!r} version {version}")
    return manifest
