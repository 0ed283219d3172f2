"""ONNX variants of a sparse model, each with the same outputs as sparse.onnx:

- sparse-compact.onnx: weight matrices stored as ONNX sparse initializers (smaller file;
  onnxruntime densifies them at load);
- sparse-compute/: Linear layers (Gemm with a weight initializer) whose measured time says so
  run through com.microsoft.SparseToDenseMatMul on the CSR weights of the convert stage; the rest
  stay dense.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
import scipy.sparse as sp
import torch

from compress import atomic
from compress.errors import UserError

from .formats import load_sparse_arrays, save_sparse
from .latency import Timer, compare_latency
from .manifest import SPARSE_COMPUTE
from .runtime import SparseSession

IR_VERSION = 10  # the newest onnxruntime 1.31 loads (onnx 1.23 writes 14 by default)


def _save(model: onnx.ModelProto, path: Path) -> None:
    with atomic.atomic_path(path) as tmp:
        onnx.save(model, str(tmp))


def make_compact(src: str | Path, dst: str | Path, min_sparsity: float = 0.3) -> dict:
    """Move weight initializers with ≥ min_sparsity zeros into COO sparse initializers."""
    model = onnx.load(str(src))
    dense, moved = [], []
    for init in model.graph.initializer:
        a = numpy_helper.to_array(init)
        if a.ndim >= 2 and a.size and (a == 0).mean() >= min_sparsity:
            idx = np.flatnonzero(a).astype(np.int64)
            values = numpy_helper.from_array(a.reshape(-1)[idx], init.name)
            indices = numpy_helper.from_array(idx, f"{init.name}.indices")
            model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, list(a.shape)))
            moved.append(init.name)
        else:
            dense.append(init)
    del model.graph.initializer[:]
    model.graph.initializer.extend(dense)
    _save(model, Path(dst))
    return {"path": Path(dst).name, "bytes": Path(dst).stat().st_size, "sparse_initializers": moved}


def _gemm_candidates(model: onnx.ModelProto, min_sparsity: float) -> list[tuple[int, onnx.NodeProto, np.ndarray]]:
    """(position, node, weight) of every Gemm y = x·Wᵀ + b whose W is an initializer with enough zeros."""
    inits = {i.name: i for i in model.graph.initializer}
    out = []
    for pos, node in enumerate(model.graph.node):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type == "Gemm" and attrs.get("transA", 0) == 0 and attrs.get("transB", 0) == 1
                and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and node.input[1] in inits):
            w = numpy_helper.to_array(inits[node.input[1]])
            # an all-zero W stays dense: onnxruntime rejects an empty CSR tensor
            if w.ndim == 2 and (w == 0).mean() >= min_sparsity and w.any():
                out.append((pos, node, w))
    return out


def _single_layer(w_shape: tuple[int, int], sparse: bool, w: np.ndarray | None = None) -> onnx.ModelProto:
    """A one-layer model y = x·Wᵀ, dense (Gemm with W) or sparse (SparseToDenseMatMul on a bound Wᵀ)."""
    out_f, in_f = w_shape
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", in_f])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    if sparse:
        wi = helper.make_sparse_tensor_value_info("w", TensorProto.FLOAT, ["in", "out"])
        nodes = [_sparse_matmul("w", "x", "t"), helper.make_node("Transpose", ["t"], ["y"], perm=[1, 0])]
        graph = helper.make_graph(nodes, "layer", [wi, x], [y])
    else:
        graph = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)], "layer", [x], [y],
                                  [numpy_helper.from_array(w, "w")])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION)


def _sparse_matmul(w_t: str, x: str, out: str) -> onnx.NodeProto:
    """(Wᵀ)ᵀ·xᵀ = W·xᵀ, shape [out, batch], with Wᵀ as CSR. Of the layouts we timed this is the fast
    one (the kernel walks Wᵀ's rows); its shape inference also needs both trans flags set."""
    return helper.make_node("SparseToDenseMatMul", [w_t, x], [out], domain="com.microsoft", transA=1, transB=1)


def time_layer(w: np.ndarray, w_t: sp.csr_array, batch: int, threads: int = 1, runs: int = 50,
               timer: Timer = compare_latency) -> dict:
    """Median ms of this layer alone, dense Gemm (W) vs SparseToDenseMatMul (Wᵀ as CSR), interleaved."""
    x = np.random.default_rng(0).standard_normal((batch, w.shape[1])).astype(np.float32)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3

    def session(model: onnx.ModelProto) -> ort.InferenceSession:
        return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    sessions = {"dense": session(_single_layer(w.shape, False, w)),
                "sparse": SparseSession(session(_single_layer(w.shape, True)), {"w": w_t})}
    timing = timer(sessions, x, warmup=5, runs=runs)
    return {k: v["p50_ms"] for k, v in timing.items()}


def _layer_of(initializer: str, arrays: dict) -> str | None:
    """The layer (as named in convert's output) whose weight this ONNX initializer is."""
    name = initializer.removesuffix(".weight")
    return name if name in arrays else None


def make_sparse_compute(src: str | Path, sparse_folder: str | Path, folder: str | Path, batch: int = 1,
                        threads: int = 1, min_sparsity: float = 0.5, force: bool | None = None,
                        timer: Timer = compare_latency) -> dict:
    """Write folder/{model.onnx, csr/, manifest.json}; returns the manifest.

    The CSR weights come from convert's output (`sparse_folder`, read and checked by formats.py) and
    must equal the ONNX file's weights. Each candidate Linear layer is timed alone at `batch` and
    `threads`, dense vs sparse; it goes sparse only when that is faster (force=True/False overrides).
    """
    folder = Path(folder)
    model = onnx.load(str(src))
    stored = load_sparse_arrays(sparse_folder)
    layers, chosen_t, new_nodes = {}, {}, {}
    for pos, node, w in _gemm_candidates(model, min_sparsity):
        name, layer = node.input[1], _layer_of(node.input[1], stored)
        if layer is None:
            layers[name] = {"shape": list(w.shape), "sparse": False, "reason": "not in convert's output"}
            continue
        if stored[layer].shape != w.shape or not np.array_equal(stored[layer].toarray(), w):
            raise UserError(f"{sparse_folder}: layer {layer!r} differs from {name!r} in {src} "
                            "(convert and export were made from different weights)")
        w_t = stored[layer].T.tocsr()
        w_t.sort_indices()
        timing = time_layer(w, w_t, batch, threads, timer=timer)
        use = timing["sparse"] < timing["dense"] if force is None else force
        layers[name] = {"shape": list(w.shape), "csr_shape": list(w_t.shape), "sparsity": float((w == 0).mean()),
                        "dense_ms": timing["dense"], "sparse_ms": timing["sparse"], "sparse": bool(use),
                        "input": f"{name}.csr", "layer": layer}
        if not use:
            continue
        chosen_t[name] = w_t
        out, t = node.output[0], f"{name}.t"
        replacement = [_sparse_matmul(f"{name}.csr", node.input[0], t)]
        if len(node.input) > 2 and node.input[2]:
            replacement += [helper.make_node("Transpose", [t], [f"{t}.T"], perm=[1, 0]),
                            helper.make_node("Add", [f"{t}.T", node.input[2]], [out])]
        else:
            replacement.append(helper.make_node("Transpose", [t], [out], perm=[1, 0]))
        new_nodes[pos] = replacement
    nodes = [r for pos, node in enumerate(model.graph.node) for r in new_nodes.get(pos, [node])]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    kept = [i for i in model.graph.initializer if i.name not in chosen_t]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    for name in chosen_t:
        # Symbolic dims: the contrib op's shape inference ignores transA and would infer [in, batch],
        # which then clashes with the bias Add. The real shape is bound at run time.
        model.graph.input.append(helper.make_sparse_tensor_value_info(
            f"{name}.csr", TensorProto.FLOAT, [f"{name}.in", f"{name}.out"]))
    if chosen_t and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    model.ir_version = min(model.ir_version, IR_VERSION)
    folder.mkdir(parents=True, exist_ok=True)
    _save(model, folder / "model.onnx")
    save_sparse(folder / "csr", {n: torch.from_numpy(m.toarray()) for n, m in chosen_t.items()}, choice="csr")
    manifest = {"format": SPARSE_COMPUTE[0], "version": SPARSE_COMPUTE[1], "batch": batch, "threads": threads,
                "weights_from": str(sparse_folder), "layers": {n: v for n, v in layers.items() if v["sparse"]},
                "considered": layers}
    atomic.write_json(folder / "manifest.json", manifest)
    return manifest
