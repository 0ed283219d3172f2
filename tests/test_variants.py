"""ONNX variants of one sparse model: compact (sparse initializers) and compute (SparseToDenseMatMul)."""
import json

import numpy as np
import onnx
import pytest
import torch

from compress.errors import UserError
from compress.models import MLP
from conftest import pruned_mlp
from deploy.cli import main
from deploy.export import export_onnx
from deploy.formats import save_sparse
from deploy.onnx_variants import make_compact, make_sparse_compute
from deploy.runtime import open_model, open_sparse_compute


@pytest.fixture(scope="module")
def sparse_mlp(tmp_path_factory, digits):
    model, layers = pruned_mlp(digits, [512, 512], 0.95)
    folder = tmp_path_factory.mktemp("variants")
    export_onnx(model, digits.test.x[:8], folder / "sparse.onnx")
    save_sparse(folder / "csr", {n: model.get_submodule(n).weight.detach() for n in layers})  # the convert stage
    dense = MLP(digits.input_shape, digits.num_classes, [512, 512]).eval()
    export_onnx(dense, digits.test.x[:8], folder / "dense.onnx")
    return model, folder, digits.test.x[:50]


def run(path, x):
    s = open_model(path)
    return s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]


def test_compact_has_sparse_initializers_and_identical_outputs(sparse_mlp):
    model, folder, x = sparse_mlp
    info = make_compact(folder / "sparse.onnx", folder / "compact.onnx")
    proto = onnx.load(str(folder / "compact.onnx"))
    assert len(proto.graph.sparse_initializer) == 3 and set(info["sparse_initializers"]) == {
        "net.1.weight", "net.3.weight", "net.5.weight"}
    assert info["bytes"] < 0.25 * (folder / "sparse.onnx").stat().st_size
    assert np.array_equal(run(folder / "compact.onnx", x), run(folder / "sparse.onnx", x))


@pytest.mark.parametrize("force", [True, False])
def test_compute_matches_the_frozen_model(sparse_mlp, force, tmp_path):
    model, folder, x = sparse_mlp
    manifest = make_sparse_compute(folder / "sparse.onnx", folder / "csr", tmp_path / "c", batch=1, force=force)
    assert set(manifest["considered"]) == {"net.1.weight", "net.3.weight", "net.5.weight"}
    assert bool(manifest["layers"]) is force
    session = open_sparse_compute(tmp_path / "c")
    assert [i.name for i in session.get_inputs()] == ["input"]  # CSR weights are bound, not fed
    with torch.no_grad():
        want = model(x).numpy()
    assert np.abs(run(tmp_path / "c", x) - want).max() < 1e-5
    ops = {n.op_type for n in onnx.load(str(tmp_path / "c" / "model.onnx")).graph.node}
    assert ("SparseToDenseMatMul" in ops) is force


def test_compute_refuses_csr_weights_that_are_not_the_onnx_weights(sparse_mlp, tmp_path):
    model, folder, _ = sparse_mlp
    other = {n: torch.zeros_like(model.get_submodule(n).weight) for n in ("net.1", "net.3", "net.5")}
    other["net.1"][0, 0] = 1.0
    save_sparse(tmp_path / "other", other)
    with pytest.raises(UserError, match="differs from 'net.1.weight'"):
        make_sparse_compute(folder / "sparse.onnx", tmp_path / "other", tmp_path / "c", batch=1, force=True)


def test_compute_choice_follows_the_measurement(sparse_mlp, tmp_path):
    _, folder, _ = sparse_mlp
    manifest = make_sparse_compute(folder / "sparse.onnx", folder / "csr", tmp_path / "m", batch=1)
    for name, layer in manifest["considered"].items():
        assert layer["dense_ms"] > 0 and layer["sparse_ms"] > 0
        assert layer["sparse"] == (layer["sparse_ms"] < layer["dense_ms"])
        assert (name in manifest["layers"]) == layer["sparse"]


def test_profile_command(sparse_mlp, tmp_path, capsys):
    _, folder, _ = sparse_mlp
    make_sparse_compute(folder / "sparse.onnx", folder / "csr", tmp_path / "c", batch=1, force=True)
    out, png = tmp_path / "p.json", tmp_path / "p.png"
    code = main(["profile", str(tmp_path / "c"), "--baseline", str(folder / "dense.onnx"), "--batch", "1,4",
                 "--seconds", "0.05", "--warmup", "0.01", "--json", str(out), "--png", str(png)])
    assert code == 0
    report = json.loads(out.read_text())
    assert [(r["batch"], r["threads"]) for r in report["results"]] == [(1, 1), (4, 1)]
    for r in report["results"]:
        m = r["models"]["model"]
        assert m["p50_ms"] <= m["p90_ms"] <= m["p99_ms"] and m["runs"] >= 20 and "times_ms" not in m
        assert m["ratio_vs_baseline"] == pytest.approx(m["p50_ms"] / r["models"]["baseline"]["p50_ms"])
    assert "SparseToDenseMatMul" in report["operators"]["model"]
    assert abs(sum(report["operators"]["baseline"].values()) - 1) < 1e-6
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "x" in capsys.readouterr().out
    assert main(["profile", str(folder / "dense.onnx"), "--batch", "one"]) == 2
    (tmp_path / "bad.onnx").write_bytes(b"junk")
    assert main(["profile", str(tmp_path / "bad.onnx")]) == 2
    assert "onnxruntime cannot load this model" in capsys.readouterr().err


def test_a_registered_variant_is_built_validated_and_reported(tmp_path, monkeypatch):
    """Adding an export variant is one registration: export builds it and checks it against its PyTorch
    model, validate runs it, the report carries it."""
    import json
    import shutil

    from conftest import REPO, cli
    from deploy import variants

    monkeypatch.setattr(variants, "_VARIANTS", dict(variants.registered_variants()))

    def build(inputs):
        shutil.copy(inputs.folder / "sparse.onnx", inputs.folder / "sparse-copy.onnx")
        return {"bytes": (inputs.folder / "sparse-copy.onnx").stat().st_size, "files": ["sparse-copy.onnx"]}

    variants.register_variant(variants.Variant("sparse-copy", compared_with="sparse", artifact="sparse-copy.onnx",
                                               enabled=lambda cfg: True, build=build))
    out = tmp_path / "run"
    res = cli("run", REPO / "configs" / "quickstart.toml", "--out", out, "--no-progress", "--set", "train.epochs=2",
              "--set", "model.hidden=[32]", "--set", "validate.runs=5", "--set", "export.compute=false",
              "--set", "gate.min_sparsity=0", "--set", "gate.max_accuracy_drop=1")
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["variants"]["sparse-copy"]["accuracy"] == report["sparse"]["accuracy"]
    assert report["variants"]["sparse-copy"]["agreement_with_torch"] == 1.0
    assert report["artifacts"]["sparse_copy_onnx"] == "onnx/sparse-copy.onnx"
    assert report["size"]["sparse_copy_onnx_bytes"] == report["size"]["sparse_onnx_bytes"]
    exported = json.loads((out / "onnx" / "export.json").read_text())
    assert exported["sparse-copy"]["max_abs_diff_vs_torch"] == exported["sparse"]["max_abs_diff_vs_torch"] < 1e-5
    assert "sparse-compute" not in report["variants"]  # switched off in [export]
