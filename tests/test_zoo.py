"""Every model in the zoo builds from the data's shape, trains a step under a pruner, freezes and exports."""
import pytest
import torch

from compress.errors import UserError
from compress.models import ModelConfig, build_model
from compress.config.prune import PruneConfig
from compress.pruners import TrainPlan, build_pruner
from compress.selection import select_layers
from compress.sparsity import global_sparsity
from deploy.export import export_onnx

NAMES = ["mlp", "lenet5", "resnet20", "resnet32", "resnet56", "vgg16", "vgg19", "mobilenet_v1",
         "torchvision:resnet18", "torchvision:mobilenet_v2"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape, classes", [((1, 28, 28), 10), ((3, 32, 32), 100)])
def test_builds_for_the_data(name, shape, classes):
    model = build_model(ModelConfig(name=name, width=0.5), shape, classes).eval()
    assert model(torch.randn(2, *shape)).shape == (2, classes)


@pytest.mark.parametrize("name, method", [("resnet20", "lats"), ("mobilenet_v1", "str"), ("vgg16", "greg")])
def test_prune_freeze_export(tmp_path, name, method):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, width=0.25), (1, 28, 28), 10)
    cfg = PruneConfig(method=method)
    cfg.lats.threshold_final = 0.05
    cfg.str.s_init = -2.5
    cfg.greg.pick_after = 0.0
    pruner = build_pruner(cfg)
    layers = select_layers(model, cfg.layers)
    pruner.attach(model, layers, TrainPlan(1, 4, lambda s: 0.05))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    pruner.begin_epoch(0)
    for step in range(4):
        loss = torch.nn.functional.cross_entropy(model(torch.randn(8, 1, 28, 28)), torch.randint(0, 10, (8,)))
        opt.zero_grad()
        loss.backward()
        pruner.after_backward(step)
        opt.step()
        pruner.after_step(step, 0.05)
    pruner.end_epoch(0)
    frozen = pruner.freeze().eval()
    assert global_sparsity(frozen, pruner.layers) > 0.05
    info = export_onnx(frozen, torch.randn(4, 1, 28, 28), tmp_path / "m.onnx")
    assert info["max_abs_diff_vs_torch"] < 1e-3


def test_unknown_models_are_clear():
    with pytest.raises(UserError, match="torchvision has no model 'nope'"):
        build_model(ModelConfig(name="torchvision:nope"), (3, 32, 32), 10)
    from compress.schema import parse
    with pytest.raises(UserError, match="unknown model 'resnet21'"):
        parse(ModelConfig, {"name": "resnet21"}, "run.toml: model")
