"""Sparse files from anyone: every array is validated before scipy or onnxruntime sees it."""
import json
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from compress import atomic
from compress.errors import UserError
from conftest import REPO, pruned_mlp
from deploy.export import export_onnx
from deploy.formats import load_sparse, save_sparse
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


@pytest.mark.slow
def test_fuzzing_never_crashes_and_never_returns_a_silently_different_result(work):
    res = subprocess.run([sys.executable, str(REPO / "tests" / "fuzz_sparse.py"), str(work), "20", "7"],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    last = res.stderr.strip().splitlines()[-1:] or [""]
    assert res.returncode == 0, f"died with {res.returncode} on mutation: {last[0]}"  # negative: a signal
    counts = json.loads(res.stdout.strip().splitlines()[-1])
    assert counts["mutations"] >= 100 and counts["error"] > 0
    assert counts["different_unhashed"] == 0, counts  # a file changed behind the manifest's back is an error
    print(counts)
