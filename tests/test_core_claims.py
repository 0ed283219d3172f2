"""The claims the tool exists to make, each checked against the shipped files by an independent reader:
the onnxruntime accuracy is onnxruntime's on the file in the run folder, and the report's sparsity is
the zeros in the exported files."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from conftest import REPO, cli
from deploy.formats import load_sparse_arrays
from deploy.pipeline.run import open_run
from deploy.pipeline.validate import validate_stage

# magnitude at 70% per layer: no hidden unit loses all its weights, so no channel is cut and every pruned
# weight is still in the files (a cut folds dead units away; test_pipeline checks that case as an inequality)
QUICK = ["--no-progress", "--set", "train.epochs=10", "--set", "validate.runs=10", "--set", "prune.method='magnitude'",
         "--set", "prune.magnitude.sparsity=0.7", "--set", "prune.magnitude.scope='layer'",
         "--set", "gate.min_sparsity=0.5", "--set", "gate.max_accuracy_drop=0.05"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("claims") / "run"
    res = cli("run", REPO / "configs" / "quickstart.toml", "--out", out, *QUICK)
    assert res.returncode == 0, res.stdout + res.stderr
    return out


def initializers(path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def ort_accuracy(path, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of the ONNX file at `path`, computed here with a fresh onnxruntime session."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: x})[0]
    return float((logits.argmax(1) == y).mean())


def test_validate_reports_onnxruntimes_accuracy_of_the_shipped_file(run_dir, tmp_path):
    """Tamper with onnx/sparse.onnx (one logit's bias made huge): PyTorch's accuracy cannot see it,
    onnxruntime's must, and the report must carry onnxruntime's."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    before = json.loads((run / "report" / "report.json").read_text())
    path = run / "onnx" / "sparse.onnx"
    model = onnx.load(str(path))
    last_gemm = [n for n in model.graph.node if n.op_type == "Gemm"][-1]
    bias = next(i for i in model.graph.initializer if i.name == last_gemm.input[2])
    values = numpy_helper.to_array(bias).copy()
    values[3] += 1e4  # every sample is now classified "3" by the file
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    onnx.save(model, str(path))

    r = open_run(run, progress=False, log=lambda _: None)
    r.stage_dir = tmp_path / "report"
    r.stage_dir.mkdir()
    validate_stage(r)
    after = json.loads((r.stage_dir / "report.json").read_text())
    x, y = r.data.test.x.numpy(), r.data.test.y.numpy()
    expected = ort_accuracy(path, x, y)
    assert expected == pytest.approx(float((y == 3).mean()))  # the tampering took effect in onnxruntime
    assert after["sparse"]["accuracy"] == pytest.approx(expected, abs=1e-12)
    assert after["sparse"]["torch_accuracy"] == before["sparse"]["torch_accuracy"] > expected + 0.5
    assert after["sparse"]["agreement_with_torch"] < 0.2
    assert after["dense"]["accuracy"] == before["dense"]["accuracy"]  # the untouched file keeps its number
    assert not after["gate"]["passed"] and any("accuracy drop" in f for f in after["gate"]["failures"])


def test_report_sparsity_is_the_zeros_in_the_exported_files(run_dir):
    report = json.loads((run_dir / "report" / "report.json").read_text())
    assert report["structure"]["channels_removed"] == 0
    dense, sparse = initializers(run_dir / "onnx" / "dense.onnx"), initializers(run_dir / "onnx" / "sparse.onnx")
    csr = load_sparse_arrays(run_dir / "sparse")
    kept_total = size_total = 0
    for layer, sparsity in report["sparsity"]["per_layer"].items():
        size = dense[f"{layer}.weight"].size
        kept = int(np.count_nonzero(sparse[f"{layer}.weight"]))
        assert kept == round((1 - sparsity) * size), layer
        assert int(np.count_nonzero(csr[layer].toarray())) == kept  # the CSR/BSR file holds the same weights
        kept_total, size_total = kept_total + kept, size_total + size
    assert report["sparsity"]["global"] == pytest.approx(1 - kept_total / size_total, abs=1e-12)
    assert report["sparsity"]["global"] == pytest.approx(0.7, abs=1e-3)
    assert "sparse/weights.safetensors" in report["sparsity"]["counted_from"]  # the report says how it counted
    assert "Counted from zero weights in sparse/weights.safetensors" in (run_dir / "report" / "report.md").read_text()
