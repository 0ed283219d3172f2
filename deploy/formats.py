"""CSR storage of pruned weights: one safetensors file plus a versioned JSON manifest.

Conv weights are flattened the usual way, (out, in·kh·kw). Loading gives back the frozen
weights bit for bit (explicit zeros are +0.0 by construction of the frozen model).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from safetensors.numpy import load_file, save_file

from compress import atomic
from compress.errors import UserError

FORMAT = "sparsepipe-csr"
VERSION = 1


def to_csr(weight: torch.Tensor) -> sp.csr_array:
    """The weight as a 2-D CSR array (out, rest); only nonzero entries are stored."""
    w = weight.detach().cpu().numpy()
    return sp.csr_array(w.reshape(w.shape[0], -1))


def csr_bytes(m: sp.csr_array) -> int:
    return m.data.nbytes + m.indices.nbytes + m.indptr.nbytes


def save_csr(folder: str | Path, weights: dict[str, torch.Tensor], model_id: str = "") -> dict:
    """Write `weights.safetensors` + `manifest.json` into `folder`; returns the manifest."""
    folder = Path(folder)
    arrays: dict[str, np.ndarray] = {}
    layers = {}
    for name, w in weights.items():
        m = to_csr(w)
        m.sort_indices()
        arrays[f"{name}.data"] = m.data
        arrays[f"{name}.indices"] = m.indices.astype(np.int32)
        arrays[f"{name}.indptr"] = m.indptr.astype(np.int64)
        dense = w.numel() * w.element_size()
        layers[name] = {"shape": list(w.shape), "dtype": str(w.dtype).removeprefix("torch."),
                        "nnz": int(m.nnz), "dense_bytes": dense, "csr_bytes": csr_bytes(m),
                        "compression": dense / max(csr_bytes(m), 1)}
    with atomic.atomic_path(folder / "weights.safetensors") as tmp:
        save_file(arrays, str(tmp))
    manifest = {"format": FORMAT, "version": VERSION, "model_id": model_id, "layers": layers,
                "dense_bytes": sum(v["dense_bytes"] for v in layers.values()),
                "csr_bytes": sum(v["csr_bytes"] for v in layers.values())}
    atomic.write_json(folder / "manifest.json", manifest)
    return manifest


def load_csr(folder: str | Path, model_id: str | None = None) -> dict[str, torch.Tensor]:
    """Dense tensors back from a CSR folder, checking format, version and (optionally) model id."""
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{manifest_path}: cannot read sparse-format manifest ({str(e)[:200]})") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise UserError(f"{manifest_path}: format {manifest.get('format')!r} version {manifest.get('version')!r}, "
                        f"expected {FORMAT!r} version {VERSION}")
    if model_id is not None and manifest.get("model_id") != model_id:
        raise UserError(f"{manifest_path}: written for model {manifest.get('model_id')!r}, not {model_id!r}")
    try:
        arrays = load_file(str(folder / "weights.safetensors"))
    except Exception as e:
        raise UserError(f"{folder / 'weights.safetensors'}: cannot read ({str(e)[:200]})") from None
    out = {}
    for name, info in manifest["layers"].items():
        shape = info["shape"]
        try:
            m = sp.csr_array((arrays[f"{name}.data"], arrays[f"{name}.indices"], arrays[f"{name}.indptr"]),
                             shape=(shape[0], int(np.prod(shape[1:])) if len(shape) > 1 else 1))
        except (KeyError, ValueError) as e:
            raise UserError(f"{folder}: layer {name!r} is missing or malformed ({e})") from None
        out[name] = torch.from_numpy(m.toarray().reshape(shape))
    return out
