"""Sparse weight storage: per layer CSR or BSR (block size chosen per layer), one safetensors file
plus a versioned JSON manifest.

Conv weights are flattened the usual way, (out, in·kh·kw). Loading gives back the frozen weights
bit for bit (explicit zeros are +0.0 by construction of the frozen model; BSR keeps the zeros
inside its blocks as they are).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from safetensors.numpy import load_file, save_file

from compress import atomic
from compress.errors import UserError

from .manifest import SPARSE_WEIGHTS, read_manifest as read_checked
from .sections import BLOCKS
from .sparse_check import check_layer, check_layer_set, check_tensor_set

Choice = Literal["best", "csr", "bsr"]


def as_2d(weight: torch.Tensor) -> np.ndarray:
    w = weight.detach().cpu().numpy()
    return w.reshape(w.shape[0], -1)


def to_csr(weight: torch.Tensor) -> sp.csr_array:
    """The weight as a 2-D CSR array (out, rest); only nonzero entries are stored."""
    m = sp.csr_array(as_2d(weight))
    m.sort_indices()
    return m


def to_bsr(weight: torch.Tensor, block: tuple[int, int]) -> sp.bsr_array:
    """The weight as a 2-D BSR array with `block`-sized dense blocks; all-zero blocks are dropped."""
    m = sp.bsr_array(as_2d(weight), blocksize=block)
    m.eliminate_zeros()  # removes all-zero blocks only; zeros inside kept blocks stay
    m.sort_indices()     # eliminate_zeros can leave a row's blocks out of order; readers require order
    return m


def nbytes(m: sp.csr_array | sp.bsr_array) -> int:
    return m.data.nbytes + m.indices.astype(np.int32).nbytes + m.indptr.astype(np.int64).nbytes


def storage_report(weight: torch.Tensor, blocks=BLOCKS) -> dict:
    """Bytes of one weight: dense, CSR, and BSR for every block size that tiles it."""
    rows, cols = as_2d(weight).shape
    bsr = {f"{r}x{c}": nbytes(to_bsr(weight, (r, c))) for r, c in blocks if rows % r == 0 and cols % c == 0}
    best_block = min(bsr, key=bsr.get) if bsr else None
    return {"dense_bytes": weight.numel() * weight.element_size(), "csr_bytes": nbytes(to_csr(weight)),
            "bsr_bytes": bsr, "best_bsr": best_block}


def save_sparse(folder: str | Path, weights: dict[str, torch.Tensor], model_id: str = "", choice: Choice = "best",
                blocks=BLOCKS) -> dict:
    """Write `weights.safetensors` + `manifest.json` into `folder`; returns the manifest.

    choice: csr, bsr (best block size per layer), or best (whichever is smaller per layer).
    """
    folder = Path(folder)
    arrays: dict[str, np.ndarray] = {}
    layers = {}
    for name, w in weights.items():
        report = storage_report(w, blocks)
        bsr_bytes = report["bsr_bytes"].get(report["best_bsr"], float("inf"))
        fmt = "bsr" if report["best_bsr"] is not None and (
            choice == "bsr" or (choice == "best" and bsr_bytes < report["csr_bytes"])) else "csr"
        if choice == "best" and report["dense_bytes"] <= min(bsr_bytes, report["csr_bytes"]):
            fmt = "dense"  # e.g. a layer whose zero channels were cut out: sparse storage would be larger
        block = tuple(int(v) for v in report["best_bsr"].split("x")) if fmt == "bsr" else None
        if fmt == "dense":
            arrays[f"{name}.data"] = np.ascontiguousarray(as_2d(w))
            stored = arrays[f"{name}.data"].nbytes
        else:
            m = to_bsr(w, block) if fmt == "bsr" else to_csr(w)
            arrays[f"{name}.data"] = np.ascontiguousarray(m.data)
            arrays[f"{name}.indices"] = m.indices.astype(np.int32)
            arrays[f"{name}.indptr"] = m.indptr.astype(np.int64)
            stored = nbytes(m)
        layers[name] = {"shape": list(w.shape), "dtype": str(w.dtype).removeprefix("torch."),
                        "format": fmt, "block": list(block) if block else None,
                        "nnz": int((w != 0).sum()), "stored_bytes": stored,
                        "compression": report["dense_bytes"] / max(stored, 1), **report}
    with atomic.atomic_path(folder / "weights.safetensors") as tmp:
        save_file(arrays, str(tmp))
    manifest = {"format": SPARSE_WEIGHTS[0], "version": SPARSE_WEIGHTS[1], "model_id": model_id, "choice": choice,
                "weights_sha256": atomic.sha256_file(folder / "weights.safetensors"), "layers": layers,
                "dense_bytes": sum(v["dense_bytes"] for v in layers.values()),
                "stored_bytes": sum(v["stored_bytes"] for v in layers.values()),
                "csr_bytes": sum(v["csr_bytes"] for v in layers.values())}
    atomic.write_json(folder / "manifest.json", manifest)
    return manifest


def read_manifest(folder: str | Path, model_id: str | None = None) -> dict:
    manifest = read_checked(folder, SPARSE_WEIGHTS, "sparse-format")
    if model_id is not None and manifest.get("model_id") != model_id:
        raise UserError(f"{Path(folder) / 'manifest.json'}: written for model {manifest.get('model_id')!r}, "
                        f"not {model_id!r}")
    return manifest


def load_sparse_arrays(folder: str | Path, model_id: str | None = None,
                       shapes: dict[str, list[int]] | None = None) -> dict[str, sp.csr_array | sp.bsr_array]:
    """The stored scipy arrays (2-D), after checking format, version, (optionally) model id and the
    exact layer set and weight shapes (`shapes`, from the model), the file's hash against the manifest, that the file holds exactly the manifest's
    tensors, and every array's structure and values (sparse_check.py)."""
    folder = Path(folder)
    manifest = read_manifest(folder, model_id)
    path = folder / "weights.safetensors"
    declared = manifest.get("layers")
    if not isinstance(declared, dict):
        raise UserError(f"{folder / 'manifest.json'}: 'layers' is not an object")
    if shapes is not None:
        check_layer_set(declared, shapes, str(folder / "manifest.json"))
    try:
        digest = atomic.sha256_file(path)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    if digest != manifest.get("weights_sha256"):
        raise UserError(f"{path}: content does not match the sha256 in manifest.json (changed or corrupt)")
    try:
        arrays = load_file(str(path))
    except Exception as e:
        raise UserError(f"{path}: cannot read ({str(e)[:200]})") from None
    check_tensor_set(declared, arrays, str(path))
    out = {}
    for name, info in declared.items():
        rows, cols = check_layer(name, info, arrays, str(path))
        if info["format"] == "dense":
            out[name] = sp.csr_array(arrays[f"{name}.data"])  # zeros are +0.0: exact
            continue
        parts = (arrays[f"{name}.data"], arrays[f"{name}.indices"], arrays[f"{name}.indptr"])
        if info["format"] == "bsr":
            out[name] = sp.bsr_array(parts, shape=(rows, cols), blocksize=tuple(info["block"]))
        else:
            out[name] = sp.csr_array(parts, shape=(rows, cols))
    return out


def load_sparse(folder: str | Path, model_id: str | None = None) -> dict[str, torch.Tensor]:
    """Dense tensors back, bit for bit, in the weights' original shapes."""
    manifest = read_manifest(folder, model_id)
    out = {}
    for name, m in load_sparse_arrays(folder, model_id).items():
        dense = m.toarray()
        out[name] = torch.from_numpy(dense.reshape(manifest["layers"][name]["shape"]))
    return out
