"""ONNX variants of a sparse model, each with the same outputs as sparse.onnx:

- sparse-compact.onnx: weight matrices stored as ONNX sparse initializers (smaller file;
  onnxruntime densifies them at load);
- sparse-compute/: Linear layers (Gemm with a weight initializer) whose measured time says so
  run through com.microsoft.SparseToDenseMatMul on CSR weights; the rest stay dense.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import save_file

from compress import atomic

from .runtime import FORMAT, VERSION

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


def _single_layer(w: np.ndarray, sparse: bool) -> tuple[onnx.ModelProto, dict]:
    """A one-layer model y = x·Wᵀ, dense (Gemm) or sparse (SparseToDenseMatMul + Transpose)."""
    out_f, in_f = w.shape
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
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION), {}


def _sparse_matmul(w_t: str, x: str, out: str) -> onnx.NodeProto:
    """(Wᵀ)ᵀ·xᵀ = W·xᵀ, shape [out, batch], with Wᵀ as CSR. Of the layouts we timed this is the fast
    one (the kernel walks Wᵀ's rows); its shape inference also needs both trans flags set."""
    return helper.make_node("SparseToDenseMatMul", [w_t, x], [out], domain="com.microsoft", transA=1, transB=1)


def _csr(w: np.ndarray) -> dict[str, np.ndarray]:
    """CSR arrays of Wᵀ (the layout _sparse_matmul expects)."""
    import scipy.sparse as sp

    m = sp.csr_array(np.ascontiguousarray(w.T))
    m.sort_indices()
    return {"data": m.data.astype(np.float32), "indices": m.indices.astype(np.int64),
            "indptr": m.indptr.astype(np.int64)}


def time_layer(w: np.ndarray, batch: int, threads: int = 1, runs: int = 50) -> dict:
    """Median ms of this layer alone, dense Gemm vs SparseToDenseMatMul, interleaved."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, w.shape[1])).astype(np.float32)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    sessions = {}
    for kind in ("dense", "sparse"):
        model, _ = _single_layer(w, kind == "sparse")
        sessions[kind] = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    c = _csr(w)
    wv = ort.OrtValue.ort_value_from_sparse_tensor(ort.SparseTensor.sparse_csr_from_numpy(
        np.asarray(w.T.shape, dtype=np.int64), c["data"], c["indices"], c["indptr"], ort.OrtDevice.make("cpu", 0)))
    xv = ort.OrtValue.ortvalue_from_numpy(x)
    calls = {"dense": lambda: sessions["dense"].run(None, {"x": x}),
             "sparse": lambda: sessions["sparse"].run_with_ort_values(["y"], {"w": wv, "x": xv})}
    times = {k: [] for k in calls}
    for i in range(runs + 5):
        for k in (("dense", "sparse") if i % 2 else ("sparse", "dense")):
            t0 = time.perf_counter_ns()
            calls[k]()
            if i >= 5:
                times[k].append((time.perf_counter_ns() - t0) / 1e6)
    return {k: float(np.median(v)) for k, v in times.items()}


def make_sparse_compute(src: str | Path, folder: str | Path, batch: int = 1, threads: int = 1,
                        min_sparsity: float = 0.5, force: bool | None = None) -> dict:
    """Write folder/{model.onnx, weights.safetensors, manifest.json}; returns the manifest.

    Each candidate Linear layer is timed alone at `batch` and `threads`, dense vs sparse; it goes
    sparse only when that is faster (force=True/False overrides, for tests).
    """
    folder = Path(folder)
    model = onnx.load(str(src))
    layers, arrays, new_nodes = {}, {}, {}
    for pos, node, w in _gemm_candidates(model, min_sparsity):
        name = node.input[1]
        timing = time_layer(w, batch, threads)
        use = timing["sparse"] < timing["dense"] if force is None else force
        layers[name] = {"shape": list(w.shape), "csr_shape": list(w.T.shape), "sparsity": float((w == 0).mean()),
                        "dense_ms": timing["dense"], "sparse_ms": timing["sparse"], "sparse": bool(use),
                        "input": f"{name}.csr"}
        if not use:
            continue
        c = _csr(w)
        arrays.update({f"{name}.{k}": v for k, v in c.items()})
        out, t = node.output[0], f"{name}.t"
        replacement = [_sparse_matmul(f"{name}.csr", node.input[0], t)]
        if len(node.input) > 2 and node.input[2]:
            replacement += [helper.make_node("Transpose", [t], [f"{t}.T"], perm=[1, 0]),
                            helper.make_node("Add", [f"{t}.T", node.input[2]], [out])]
        else:
            replacement.append(helper.make_node("Transpose", [t], [out], perm=[1, 0]))
        new_nodes[pos] = replacement
    chosen = {n for n, v in layers.items() if v["sparse"]}
    nodes = [r for pos, node in enumerate(model.graph.node) for r in new_nodes.get(pos, [node])]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    kept = [i for i in model.graph.initializer if i.name not in chosen]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    for name in chosen:
        # Symbolic dims: the contrib op's shape inference ignores transA and would infer [in, batch],
        # which then clashes with the bias Add. The real shape is bound at run time.
        model.graph.input.append(helper.make_sparse_tensor_value_info(
            f"{name}.csr", TensorProto.FLOAT, [f"{name}.in", f"{name}.out"]))
    if chosen and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    model.ir_version = min(model.ir_version, IR_VERSION)
    folder.mkdir(parents=True, exist_ok=True)
    _save(model, folder / "model.onnx")
    with atomic.atomic_path(folder / "weights.safetensors") as tmp:
        save_file({k: v for k, v in arrays.items()} or {"empty": np.zeros(0, np.float32)}, str(tmp))
    manifest = {"format": FORMAT, "version": VERSION, "batch": batch, "threads": threads,
                "layers": {n: v for n, v in layers.items() if v["sparse"]}, "considered": layers}
    atomic.write_json(folder / "manifest.json", manifest)
    return manifest
