"""The sparsity a run ships, counted from the files that ship (convert's CSR/BSR weights and the
sparse ONNX model), never taken from upstream metadata. The files are checked against each other
and against the zeros freeze claims; a disagreement is an error naming both files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import scipy.sparse as sp
from onnx import numpy_helper

from compress.errors import UserError

from .formats import load_sparse_arrays


def onnx_nonzeros(path: Path, layers: list[str]) -> dict[str, int]:
    """Nonzero weights of each layer whose '<layer>.weight' initializer is in the ONNX file."""
    names = {f"{n}.weight": n for n in layers}
    proto = onnx.load(str(path), load_external_data=False)
    return {names[i.name]: int(np.count_nonzero(numpy_helper.to_array(i)))
            for i in proto.graph.initializer if i.name in names}


def stored_bytes(path: Path, layers: list[str]) -> dict[str, int]:
    """Bytes each layer's tensors take in a sparse weights file, from its header (what ships)."""
    from safetensors import safe_open

    out = dict.fromkeys(layers, 0)
    with safe_open(str(path), "np") as f:
        for key in f.keys():
            layer = key.rpartition(".")[0]
            if layer in out:
                t = f.get_slice(key)
                out[layer] += int(np.prod(t.get_shape())) * np.dtype(_NUMPY[t.get_dtype()]).itemsize
    return out


_NUMPY = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64, "I32": np.int32, "I16": np.int16,
          "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def check_values_match(run_dir: Path, arrays: dict, frozen: dict[str, np.ndarray]) -> None:
    """The CSR/BSR weights hold the frozen model's weights: the same nonzero values at the same places.
    (sparse.onnx is compared by nonzero counts only: the exporter may fold a BatchNorm into a conv's
    weights; what it computes is measured by onnxruntime against PyTorch in validate.)"""
    csr_path = run_dir / "sparse" / "weights.safetensors"
    frozen_path = run_dir / "frozen" / "sparse.safetensors"
    for name, weight in frozen.items():
        stored = arrays[name].tocsr()
        stored.eliminate_zeros()
        stored.sort_indices()
        mine = sp.csr_array(weight.reshape(weight.shape[0], -1))
        if not (np.array_equal(stored.indptr, mine.indptr) and np.array_equal(stored.indices, mine.indices)
                and np.array_equal(stored.data, mine.data)):
            raise UserError(f"{csr_path}: layer {name!r} does not hold the weights of {frozen_path}: the two stages "
                            f"disagree (re-run convert)")


def shipped_sparsity(run_dir: Path, shapes: dict[str, list[int]], sizes: dict[str, int],
                     claimed: dict[str, float], frozen: dict[str, np.ndarray] | None = None) -> dict:
    """Per-layer and global fraction of zeros that ship, against each layer's uncut size (`sizes`: entries
    of the layer's weight before any channel cut, so cut channels count as removed). `shapes`: each
    pruned layer's weight shape in the frozen sparse model (the CSR files must match them exactly).

    Refuses CSR and ONNX files that disagree on a layer's nonzeros, and fewer zeros than freeze claims
    (`claimed`, from frozen/sparsity.json; a channel cut can only remove more)."""
    csr_path, onnx_path = run_dir / "sparse" / "weights.safetensors", run_dir / "onnx" / "sparse.onnx"
    layers = list(shapes)
    arrays = load_sparse_arrays(run_dir / "sparse", shapes=shapes)
    if frozen is not None:
        check_values_match(run_dir, arrays, frozen)
    nonzeros = {n: int(np.count_nonzero(arrays[n].data)) for n in layers}
    for name, count in onnx_nonzeros(onnx_path, layers).items():
        if count != nonzeros[name]:
            raise UserError(f"{onnx_path}: layer {name!r} has {count} nonzero weights but {csr_path} stores "
                            f"{nonzeros[name]}: the two stages disagree (re-run export)")
    claims = run_dir / "frozen" / "sparsity.json"
    for name in layers:
        zeros = sizes[name] - nonzeros[name]
        if zeros < round(claimed.get(name, 0.0) * sizes[name]):
            raise UserError(f"{claims}: claims {claimed[name]:.2%} zeros in layer {name!r} but {csr_path} "
                            f"ships {zeros / sizes[name]:.2%}: the two stages disagree (re-run freeze)")
    total = sum(sizes[n] for n in layers)
    return {"global": 1 - sum(nonzeros.values()) / max(total, 1),
            "per_layer": {n: 1 - nonzeros[n] / sizes[n] for n in layers},
            "counted_from": COUNTED_FROM, "stored_bytes": stored_bytes(csr_path, layers)}


COUNTED_FROM = ("zero weights in sparse/weights.safetensors (checked equal to onnx/sparse.onnx), over each pruned "
                "layer's weight entries before any channel cut (cut channels count as zeros); biases and norm "
                "layers not counted")
