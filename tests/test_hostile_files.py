"""Sparse files from anyone: every array is validated before scipy or onnxruntime sees it."""
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from safetensors.numpy import load_file, save_file

from compress import atomic
from compress.errors import UserError
from conftest import REPO, pruned_mlp
from deploy.export import export_onnx
from deploy.formats import load_sparse, load_sparse_arrays, save_sparse
from deploy.onnx_variants import make_sparse_compute
from deploy.runtime import open_model


@pytest.fixture(scope="module")
def work(tmp_path_factory, digits):
    """A pruned MLP's convert folder, its sparse-compute folder (every layer sparse) and an input."""
    model, layers = pruned_mlp(digits, [64, 64], 0.9)
    folder = tmp_path_factory.mktemp("hostile")
    save_sparse(folder / "sparse", {n: model.get_submodule(n).weight.detach() for n in layers}, choice="csr")
    export_onnx(model, digits.test.x[:8], folder / "sparse.onnx")
    make_sparse_compute(folder / "sparse.onnx", folder / "sparse", folder / "compute", force=True)
    np.save(folder / "x.npy", digits.test.x[:16].numpy())
    from test_gate import REPORT_JSON
    (folder / "report.json").write_text(json.dumps({**REPORT_JSON, "classes": 10, "gate": {
        "passed": True, "failures": [], "checks": [], "thresholds": {"max_accuracy_drop": 0.02, "min_sparsity": 0.5}}}))
    return folder


def craft(folder, key, value):
    """Replace one array and re-stamp the manifest's hash, as a crafted file would."""
    arrays = load_file(str(folder / "weights.safetensors"))
    arrays[key] = value
    save_file(arrays, str(folder / "weights.safetensors"))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["weights_sha256"] = atomic.sha256_file(folder / "weights.safetensors")
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("key,change,words", [
    ("net.1.indices", lambda a: np.where(np.arange(a.size) == 3, 10**6, a).astype(np.int32), "outside [0, 64)"),
    ("net.1.indices", lambda a: np.where(np.arange(a.size) == 3, -1, a).astype(np.int32), "outside [0, 64)"),
    ("net.1.indices", lambda a: np.where(np.arange(a.size) == 3, 64, a).astype(np.int32), "outside [0, 64)"),
    ("net.3.indices", lambda a: np.where(np.arange(a.size) == 0, 222 % 64, a).astype(np.int32),
     "not strictly increasing"),
    ("net.1.indptr", lambda a: a[::-1].copy(), "not monotone"),
    ("net.1.indptr", lambda a: a[:-1].copy(), "entries, expected"),
    ("net.1.data", lambda a: a[:-1].copy(), "values for"),
    ("net.1.indices", lambda a: a.astype(np.int64), "expected int32"),
])
def test_crafted_csr_is_refused_naming_file_and_tensor(work, tmp_path, key, change, words):
    import shutil
    folder = tmp_path / "s"
    shutil.copytree(work / "sparse", folder)
    arrays = load_file(str(folder / "weights.safetensors"))
    craft(folder, key, change(arrays[key]))
    with pytest.raises(UserError, match="weights.safetensors: layer") as e:
        load_sparse(folder)
    assert words in str(e.value) and key.split(".")[0] in str(e.value)


def test_a_changed_file_without_a_matching_manifest_is_refused(work, tmp_path):
    import shutil
    folder = tmp_path / "s"
    shutil.copytree(work / "sparse", folder)
    arrays = load_file(str(folder / "weights.safetensors"))
    arrays["net.1.data"] = arrays["net.1.data"] * 2  # valid structure, other weights
    save_file(arrays, str(folder / "weights.safetensors"))
    with pytest.raises(UserError, match="does not match the sha256"):
        load_sparse(folder)


def test_sparse_compute_manifest_must_match_its_weights(work, tmp_path):
    import shutil
    folder = tmp_path / "c"
    shutil.copytree(work / "compute", folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    name = next(iter(manifest["layers"]))
    manifest["layers"][name]["csr_shape"] = [1, 1]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="does not match csr/ or model.onnx"):
        open_model(folder)


def test_fuzzing_manifests_and_reports_never_crashes_nor_loads_other_arrays(work, tmp_path):
    import shutil
    shutil.copytree(work, tmp_path / "w")  # the fuzzer rewrites files in place
    res = subprocess.run([sys.executable, str(REPO / "tests" / "fuzz_json.py"), str(tmp_path / "w"), "150", "11"],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert res.returncode == 0, f"exit {res.returncode}: {res.stderr[-2000:]}"  # negative: a signal
    counts = json.loads(res.stdout.strip().splitlines()[-1])
    assert counts["mutations"] == 450 and counts["report: error"] > 0 and counts["sparse manifest: error"] > 0
    assert not any(k.endswith(("different", "traceback")) or "exit" in k for k in counts), counts


@pytest.mark.slow
def test_fuzzing_never_crashes_and_never_returns_a_silently_different_result(work, tmp_path):
    import shutil
    shutil.copytree(work, tmp_path / "w")  # the fuzzer rewrites files in place: the other tests share `work`
    res = subprocess.run([sys.executable, str(REPO / "tests" / "fuzz_sparse.py"), str(tmp_path / "w"), "200", "7"],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    last = res.stderr.strip().splitlines()[-1:] or [""]
    assert res.returncode == 0, f"died with {res.returncode} on mutation: {last[0]}"  # negative: a signal
    counts = json.loads(res.stdout.strip().splitlines()[-1])
    assert counts["mutations"] == 200 and counts["error"] > 0
    assert counts["different_unhashed"] == 0, counts  # a file changed behind the manifest's back is an error
    print(counts)


def craft_manifest(folder, change):
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused_even_with_a_restamped_hash(work, tmp_path, value):
    import shutil
    folder = tmp_path / "s"
    shutil.copytree(work / "sparse", folder)
    data = load_file(str(folder / "weights.safetensors"))["net.3.data"].copy()
    data[1] = value
    craft(folder, "net.3.data", data)
    with pytest.raises(UserError, match="net.3.data holds NaN or infinite values"):
        load_sparse(folder)


def _layer_shapes(folder):
    return {n: v["shape"] for n, v in json.loads((folder / "manifest.json").read_text())["layers"].items()}


@pytest.mark.parametrize("change,words", [
    (lambda m: m["layers"]["net.1"].update(shape=[64, 128]), "layer 'net.1' has shape [64, 128], the model's"),
    (lambda m: m["layers"].pop("net.5"), "layer 'net.5' is missing"),
    (lambda m: m["layers"]["net.3"].update(nnz=1), "declares nnz 1"),
    (lambda m: m["layers"]["net.3"].update(dtype="float16"), "dtype 'float16'"),
])
def test_a_manifest_must_match_its_arrays_and_the_model_exactly(work, tmp_path, change, words):
    import shutil
    folder = tmp_path / "s"
    shutil.copytree(work / "sparse", folder)
    shapes = _layer_shapes(folder)
    craft_manifest(folder, change)
    with pytest.raises(UserError, match="manifest.json|weights.safetensors") as e:
        load_sparse_arrays(folder, shapes=shapes)
    assert words in str(e.value)


def test_a_tensor_the_manifest_does_not_describe_is_refused(work, tmp_path):
    import shutil
    folder = tmp_path / "s"
    shutil.copytree(work / "sparse", folder)
    craft(folder, "smuggled.data", np.zeros(3, np.float32))
    with pytest.raises(UserError, match="tensor 'smuggled.data' is not described"):
        load_sparse(folder)


def test_an_empty_csr_declaring_a_huge_shape_is_refused_before_it_is_materialised(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    save_file({"fc.data": np.zeros(0, np.float32), "fc.indices": np.zeros(0, np.int32),
               "fc.indptr": np.zeros(46001, np.int64)}, str(folder / "weights.safetensors"))
    (folder / "manifest.json").write_text(json.dumps({
        "format": "sparsepipe-sparse", "version": 3, "model_id": "", "weights_sha256":
        atomic.sha256_file(folder / "weights.safetensors"),
        "layers": {"fc": {"shape": [46000, 46000], "dtype": "float32", "format": "csr", "nnz": 0}}}))
    with pytest.raises(UserError, match=r"shape \[46000, 46000\] has 2116000000 elements, more than"):
        load_sparse(folder)


def test_a_sparse_compute_layer_with_no_stored_values_runs_as_zeros(work, tmp_path, digits):
    import shutil

    import onnxruntime as ort
    folder = tmp_path / "c"
    shutil.copytree(work / "compute", folder)
    csr = folder / "csr"
    arrays = load_file(str(csr / "weights.safetensors"))
    name = "net.3.weight"
    arrays[f"{name}.indptr"] = np.zeros_like(arrays[f"{name}.indptr"])
    craft(csr, f"{name}.indices", np.zeros(0, np.int32))
    craft(csr, f"{name}.indptr", arrays[f"{name}.indptr"])
    craft(csr, f"{name}.data", np.zeros(0, np.float32))
    craft_manifest(csr, lambda m: m["layers"][name].update(nnz=0))
    x = digits.test.x[:4].numpy()
    got = open_model(folder).run(None, {"input": x})[0]
    # the same model with that layer's weight zeroed, in plain onnxruntime
    proto = onnx.load(str(work / "sparse.onnx"))
    for init in proto.graph.initializer:
        if init.name == name:
            init.CopyFrom(onnx.numpy_helper.from_array(np.zeros_like(onnx.numpy_helper.to_array(init)), name))
    want = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.allclose(got, want, atol=1e-5)
