"""Run a sparse-compute ONNX folder (model.onnx + CSR weights + manifest) like a plain session.

onnxruntime rejects sparse initializers and constants as inputs of SparseToDenseMatMul, so the
CSR weights are graph inputs, bound here once as sparse OrtValues and passed on every run. The
weights are read through formats.py, the one CSR reader.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import scipy.sparse as sp

from compress.errors import UserError

from .latency import make_session
from .manifest import SPARSE_COMPUTE, read_manifest


def sparse_value(m: sp.csr_array) -> tuple[ort.OrtValue, tuple[np.ndarray, ...]]:
    """A CSR matrix as an onnxruntime sparse OrtValue (int64 indices, as onnxruntime wants). An all-zero
    matrix is bound as one explicit zero: onnxruntime refuses a CSR with no entries."""
    if m.nnz == 0:
        indptr = np.ones(m.shape[0] + 1, dtype=np.int64)
        indptr[0] = 0
        m = sp.csr_array((np.zeros(1, np.float32), np.zeros(1, np.int64), indptr), shape=m.shape)
    arrays = (np.ascontiguousarray(m.data, dtype=np.float32), m.indices.astype(np.int64), m.indptr.astype(np.int64))
    tensor = ort.SparseTensor.sparse_csr_from_numpy(np.asarray(m.shape, dtype=np.int64), *arrays,
                                                    ort.OrtDevice.make("cpu", 0))
    value = ort.OrtValue.ort_value_from_sparse_tensor(tensor)
    return value, arrays  # OrtValues borrow the arrays' buffers: keep them alive together


class SparseSession:
    """A session plus CSR weights bound to some of its inputs; `run` and `get_inputs` as on
    onnxruntime.InferenceSession (the bound inputs are hidden)."""

    def __init__(self, session: ort.InferenceSession, weights: dict[str, sp.csr_array]):
        self.session = session
        self.weights, self._keep = {}, []
        for name, m in weights.items():
            self.weights[name], arrays = sparse_value(m)
            self._keep.append(arrays)
        self._inputs = [i for i in session.get_inputs() if i.name not in self.weights]
        self._outputs = [o.name for o in session.get_outputs()]

    def get_inputs(self):
        return self._inputs

    def get_outputs(self):
        return self.session.get_outputs()

    def run(self, output_names, feeds: dict) -> list[np.ndarray]:
        if not self.weights:  # every layer stayed dense: a plain session, no extra cost
            return self.session.run(output_names, feeds)
        binding = self.session.io_binding()
        for name, value in self.weights.items():
            binding.bind_ortvalue_input(name, value)
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in output_names or self._outputs:
            binding.bind_output(name)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()


def open_sparse_compute(folder: str | Path, threads: int = 1, profile_prefix: str | None = None) -> SparseSession:
    """A SparseSession for a sparse-compute folder written by onnx_variants.make_sparse_compute."""
    from .formats import load_sparse_arrays

    folder = Path(folder)
    manifest = read_manifest(folder, SPARSE_COMPUTE, "sparse-compute")
    session = make_session(folder / "model.onnx", threads, profile_prefix)
    layers = manifest.get("layers")
    if not isinstance(layers, dict):
        raise UserError(f"{folder / 'manifest.json'}: 'layers' is not an object")
    arrays = load_sparse_arrays(folder / "csr") if layers else {}
    inputs = {i.name for i in session.get_inputs()}
    weights = {}
    for name, info in layers.items():
        m = arrays.get(name)
        if (not isinstance(info, dict) or m is None or not isinstance(info.get("input"), str)
                or info.get("input") not in inputs
                or info.get("csr_shape") != list(m.shape) or info.get("shape") != list(m.shape)[::-1]):
            raise UserError(f"{folder}: layer {name!r} of manifest.json does not match csr/ or model.onnx")
        weights[info["input"]] = m.tocsr()
    if set(weights) != {i for i in inputs if i.endswith(".csr")}:
        raise UserError(f"{folder}: model.onnx expects CSR inputs that manifest.json does not provide")
    return SparseSession(session, weights)


def open_model(path: str | Path, threads: int = 1, profile_prefix: str | None = None):
    """An InferenceSession for a .onnx file, a SparseSession for a sparse-compute folder."""
    path = Path(path)
    if path.is_dir():
        return open_sparse_compute(path, threads, profile_prefix)
    return make_session(path, threads, profile_prefix)
