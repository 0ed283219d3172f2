"""Spiking networks: trained and pruned like any model, exported without state, validated in onnxruntime."""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("spikingjelly", reason="spiking models need the snn extra (tools/bootstrap.sh installs it)")

from compress.models import ModelConfig, build_model  # noqa: E402
from compress.models.spiking import firing_rates  # noqa: E402
from compress.config.prune import PruneConfig
from compress.pruners import build_pruner  # noqa: E402
from compress.selection import select_layers  # noqa: E402
from compress.train import TrainConfig, train  # noqa: E402
from conftest import REPO, cli  # noqa: E402
from deploy.export import export_onnx  # noqa: E402
from deploy.latency import make_session  # noqa: E402


@pytest.fixture(scope="module")
def trained_snn(digits):
    """A spiking CNN (T=4, LIF) trained on digits with LATS: it fires, and it is sparse."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="spiking_cnn", time_steps=4), digits.input_shape, digits.num_classes)
    cfg = PruneConfig(method="lats")
    cfg.lats.target_sparsity = 0.8
    pruner = build_pruner(cfg)
    layers = select_layers(model, cfg.layers)
    history = train(model, pruner, digits, TrainConfig(epochs=12, lr=0.1), layers, progress=False)
    return pruner.freeze().eval(), history, layers


def test_trains_prunes_and_fires(trained_snn, digits):
    model, history, layers = trained_snn
    assert history[-1]["test_accuracy"] > 0.85 and history[-1]["sparsity"] > 0.75
    assert all(type(model.get_submodule(n)).__module__.startswith("spikingjelly") for n in layers)  # neurons kept
    rates = firing_rates(model, digits.test.x[:64])
    assert len(rates) == 3 and all(0 < r < 1 for r in rates.values())


def test_stateless_export_matches_and_keeps_no_state(trained_snn, digits, tmp_path):
    model, _, _ = trained_snn
    x1, x2 = digits.test.x[:40], digits.test.x[40:80]
    with torch.no_grad():
        assert torch.equal(model.export_copy().eval()(x1), model(x1))
        assert torch.equal(model(x1), model(x1))  # state is reset on every call
    info = export_onnx(model, x1, tmp_path / "snn.onnx")
    assert info["argmax_agreement_vs_torch"] >= 0.97 and info["mean_abs_diff_vs_torch"] < 0.02
    assert info["initializer_sparsity"] > 0.7  # sparsity carried into the ONNX weights
    used = make_session(tmp_path / "snn.onnx")
    used.run(None, {"input": x1.numpy()})
    after_other_input = used.run(None, {"input": x2.numpy()})[0]
    fresh = make_session(tmp_path / "snn.onnx").run(None, {"input": x2.numpy()})[0]
    assert np.array_equal(after_other_input, fresh)  # no membrane potential baked in or carried over


@pytest.mark.slow
def test_sew_resnet18_pipeline_end_to_end(tmp_path):
    out = tmp_path / "sew"
    res = cli(
        "run", REPO / "configs" / "quickstart.toml", "--out", out, "--no-progress",
        "--set", "model.name='sew_resnet18'", "--set", "model.time_steps=2", "--set", "model.neuron='if'",
        "--set", "train.epochs=2", "--set", "train.lr=0.05", "--set", "data.train_limit=400",
        "--set", "data.test_limit=100", "--set", "prune.lats.threshold_final=0.02", "--set", "export.compute=false",
        "--set", "validate.runs=5", "--set", "gate.min_sparsity=0", "--set", "gate.max_accuracy_drop=1",
        "--set", "gate.min_above_chance=0")  # accuracy is not under test here (400 images, 2 epochs)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    r = json.loads((out / "report" / "report.json").read_text())
    assert r["export"]["sparse"]["initializer_sparsity"] > 0.05
    assert r["sparse"]["agreement_with_torch"] >= 0.95
    assert set(r["spiking"]["firing_rates"]["sparse"]) and r["spiking"]["time_steps"] == 2
    assert "Spiking network (T = 2)" in (out / "report" / "report.md").read_text()
