"""Run a sparse-compute ONNX folder (model.onnx + CSR weights + manifest) like a plain session.

onnxruntime rejects sparse initializers and constants as inputs of SparseToDenseMatMul, so the
CSR weights are graph inputs, bound here once as sparse OrtValues and passed on every run.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from safetensors.numpy import load_file

from compress.errors import UserError

FORMAT, VERSION = "sparsepipe-sparse-compute", 1


class SparseSession:
    """`run(output_names, feeds)` and `get_inputs()` as on onnxruntime.InferenceSession."""

    def __init__(self, folder: str | Path, threads: int = 1, profile_prefix: str | None = None):
        from .latency import make_session

        folder = Path(folder)
        try:
            self.manifest = json.loads((folder / "manifest.json").read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"{folder / 'manifest.json'}: cannot read sparse-compute manifest ({str(e)[:200]})") \
                from None
        if self.manifest.get("format") != FORMAT or self.manifest.get("version") != VERSION:
            raise UserError(f"{folder}: not a sparse-compute folder of version {VERSION}")
        self.session = make_session(folder / "model.onnx", threads, profile_prefix)
        arrays = load_file(str(folder / "weights.safetensors")) if self.manifest["layers"] else {}
        self._keep = arrays  # OrtValues borrow these buffers
        self.weights = {}
        for name, info in self.manifest["layers"].items():
            tensor = ort.SparseTensor.sparse_csr_from_numpy(
                np.asarray(info["csr_shape"], dtype=np.int64), arrays[f"{name}.data"],
                arrays[f"{name}.indices"], arrays[f"{name}.indptr"], ort.OrtDevice.make("cpu", 0))
            self.weights[info["input"]] = ort.OrtValue.ort_value_from_sparse_tensor(tensor)
        self._inputs = [i for i in self.session.get_inputs() if i.name not in self.weights]
        self._outputs = [o.name for o in self.session.get_outputs()]

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


def open_model(path: str | Path, threads: int = 1, profile_prefix: str | None = None):
    """An InferenceSession for a .onnx file, a SparseSession for a sparse-compute folder."""
    from .latency import make_session

    path = Path(path)
    if path.is_dir():
        return SparseSession(path, threads, profile_prefix)
    return make_session(path, threads, profile_prefix)
