"""ONNX export and onnxruntime validation on a real sparse LeNet-5 (digits)."""
import numpy as np
import onnx
import pytest
import torch

from compress.errors import UserError
from compress.models import LeNet5
from compress.pruners.magnitude import magnitude_masks
from compress.selection import LayerRule, select_layers
from compress.sparsity import global_sparsity
from deploy.export import export_onnx
from deploy.latency import compare_latency, make_session
from deploy.validate import ValidateConfig, array_batches, validate


@pytest.fixture(scope="module")
def models(digits):
    torch.manual_seed(0)
    dense = LeNet5(digits.input_shape, digits.num_classes).eval()
    sparse = LeNet5(digits.input_shape, digits.num_classes).eval()
    sparse.load_state_dict(dense.state_dict())
    layers = select_layers(sparse, LayerRule())
    with torch.no_grad():
        for n, m in magnitude_masks(sparse, layers, 0.8, "global").items():
            sparse.get_submodule(n).weight.mul_(m)
    return {"dense": dense, "sparse": sparse, "layers": layers}


@pytest.fixture(scope="module")
def exported(models, digits, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    info = {v: export_onnx(models[v], digits.test.x[:32], folder / f"{v}.onnx", opset=18) for v in ("dense", "sparse")}
    return folder, info


def test_export_checks_and_matches_torch(exported, models):
    folder, info = exported
    for v in ("dense", "sparse"):
        onnx.checker.check_model(str(folder / f"{v}.onnx"), full_check=True)
        assert info[v]["max_abs_diff_vs_torch"] < 1e-4
        assert info[v]["opset"] == 18
    # sparsity survives in the file as exact zeros
    assert info["sparse"]["initializer_sparsity"] == pytest.approx(global_sparsity(models["sparse"], models["layers"]),
                                                                 abs=0.02)
    assert info["dense"]["initializer_sparsity"] < 0.01


def test_dynamic_batch(exported, digits):
    folder, _ = exported
    session = make_session(folder / "sparse.onnx")
    for batch in (1, 7, 100):
        out = session.run(None, {"input": digits.test.x[:batch].numpy()})[0]
        assert out.shape == (batch, 10)


def test_validate_reports_accuracy_agreement_latency(exported, models, digits):
    folder, _ = exported
    x, y = digits.test.x.numpy(), digits.test.y.numpy()
    cfg = ValidateConfig(runs=30, warmup_runs=3, latency_batch_size=4)
    res = validate({v: folder / f"{v}.onnx" for v in ("dense", "sparse")}, models, array_batches(x, y, 100), cfg)
    with torch.no_grad():
        expect = float((models["sparse"](digits.test.x).argmax(1) == digits.test.y).float().mean())
    assert res["sparse"]["torch_accuracy"] == pytest.approx(expect)
    assert res["sparse"]["accuracy"] == pytest.approx(expect, abs=1 / len(y))
    assert res["sparse"]["agreement_with_torch"] >= 0.99
    lat = res["latency"]
    assert lat["batch_size"] == 4 and lat["dense"]["runs"] == 30
    assert 0 < lat["dense"]["p50_ms"] <= lat["dense"]["p90_ms"] <= lat["dense"]["p99_ms"]
    assert lat["ratio"] == pytest.approx(lat["sparse"]["p50_ms"] / lat["dense"]["p50_ms"])


def test_input_mismatch_is_clear(exported, models):
    folder, _ = exported
    wrong = np.zeros((4, 1, 28, 28), dtype=np.float32)
    with pytest.raises(UserError, match="does not match the data"):
        validate({"dense": folder / "dense.onnx"}, models, array_batches(wrong, np.zeros(4, dtype=np.int64), 4),
                 ValidateConfig())


def test_compare_latency_interleaves(exported, digits):
    folder, _ = exported
    sessions = {v: make_session(folder / f"{v}.onnx") for v in ("dense", "sparse")}
    out = compare_latency(sessions, digits.test.x[:1].numpy(), warmup=1, runs=5)
    assert set(out) == {"dense", "sparse"} and all(out[v]["runs"] == 5 for v in out)
