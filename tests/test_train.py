import pytest
import torch

from compress.errors import UserError
from compress.models import ModelConfig, build_model
from compress.config.prune import PruneConfig
from compress.pruners import build_pruner
from compress.selection import select_layers
from compress.train import TrainConfig, load_checkpoint, train


class Interrupt(Exception):
    pass


def setup(digits, method="lats"):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="mlp", hidden=[64]), digits.input_shape, digits.num_classes)
    cfg = PruneConfig(method=method.split("-")[0])
    cfg.lats.threshold_final = 0.1
    cfg.filter.schedule, cfg.filter.prune_until = "gradual", 0.8  # channel cuts at epochs 1, 2, 3 and 4
    cfg.greg.granularity = "filter" if method == "greg-filter" else "weight"
    if method.endswith("-target"):  # the target controllers' state must survive a restart too
        getattr(cfg, cfg.method).target_sparsity = 0.9
    return model, build_pruner(cfg), select_layers(model, cfg.layers)


@pytest.mark.parametrize("method", ["lats", "magnitude", "str", "greg", "gmp", "filter", "greg-filter",
                                    "lats-target", "str-target"])
def test_interrupted_training_resumes_to_the_same_result(digits, tmp_path, method):
    cfg = TrainConfig(epochs=6, batch_size=64, lr=0.05)
    model, pruner, layers = setup(digits, method)
    full = train(model, pruner, digits, cfg, layers, out_dir=tmp_path / "full", progress=False)
    reference = {k: v.clone() for k, v in pruner.freeze().state_dict().items()}

    model, pruner, layers = setup(digits, method)
    original_begin = pruner.begin_epoch

    def crash_at_epoch_4(epoch):
        if epoch == 4:
            raise Interrupt
        original_begin(epoch)

    pruner.begin_epoch = crash_at_epoch_4
    with pytest.raises(Interrupt):
        train(model, pruner, digits, cfg, layers, out_dir=tmp_path / "cut", progress=False)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["epoch"] == 4

    model, pruner, layers = setup(digits, method)  # a new process would start from scratch like this
    resumed = train(model, pruner, digits, cfg, layers, out_dir=tmp_path / "cut", progress=False)
    assert [r["epoch"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    assert full[-1]["sparsity"] > 0.1  # the pruner did prune
    assert resumed[-1]["sparsity"] == full[-1]["sparsity"] and resumed[-1]["test_accuracy"] == full[-1]["test_accuracy"]
    for k, v in pruner.freeze().state_dict().items():
        assert torch.equal(v, reference[k]), k


def test_divergence_stops_with_a_clear_message(digits, tmp_path):
    model, pruner, layers = setup(digits, "dense")
    with pytest.raises(UserError, match="diverged at epoch 0"):
        train(model, pruner, digits, TrainConfig(epochs=2, lr=1e12, momentum=0.0), layers, progress=False)


def test_checkpoint_that_is_not_one_is_refused(tmp_path):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"\x80\x04garbage")
    with pytest.raises(UserError, match="not a loadable sparsepipe checkpoint"):
        load_checkpoint(bad)


def _tamper(state: dict, how: str) -> dict:
    if how == "nan":
        state["model"][next(iter(state["model"]))].fill_(float("nan"))
    elif how == "epoch past the end":
        state["epoch"] = 99
    elif how == "negative epoch":
        state["epoch"] = -1
    elif how == "no history":
        del state["history"]
    elif how == "another model":
        state["model"] = {k: torch.zeros(3) for k in state["model"]}
    elif how == "padded":
        state["history"] = [{"pad": "x" * (20 << 20)}]  # a file past the checkpoint size bound
    return state


@pytest.mark.parametrize("how, message", [
    ("nan", "holds NaN or inf"), ("epoch past the end", "past train.epochs = 2"),
    ("negative epoch", "expected a count >= 0"), ("no history", "expected the keys"),
    ("another model", "does not fit this run's model"), ("padded", "more than the"),
])
def test_a_tampered_checkpoint_is_refused_when_resuming(digits, tmp_path, how, message):
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.05)
    model, pruner, layers = setup(digits, "magnitude")
    train(model, pruner, digits, TrainConfig(epochs=1, batch_size=64, lr=0.05), layers, out_dir=tmp_path,
          progress=False)
    ckpt = tmp_path / "checkpoint.pt"
    torch.save(_tamper(torch.load(ckpt, weights_only=True), how), ckpt)
    model, pruner, layers = setup(digits, "magnitude")
    with pytest.raises(UserError, match=message) as e:
        train(model, pruner, digits, cfg, layers, out_dir=tmp_path, progress=False)
    assert "\n" not in str(e.value) and str(ckpt) in str(e.value)


def test_user_model_by_import_path(digits):
    model = build_model(ModelConfig(name="custom_model:make"), digits.input_shape, digits.num_classes)
    assert model(digits.test.x[:3]).shape == (3, 10)
    with pytest.raises(UserError, match="not a torch.nn.Module"):
        build_model(ModelConfig(name="custom_model:not_a_model"), digits.input_shape, digits.num_classes)
    with pytest.raises(UserError, match="cannot import 'no_such_module:make'"):
        build_model(ModelConfig(name="no_such_module:make"), digits.input_shape, digits.num_classes)


@pytest.mark.parametrize("method, decay_1d, bias_after", [("lats", None, 0.95), ("str", None, 0.95),
                                                          ("greg", None, 0.95), ("magnitude", None, 1.0),
                                                          ("lats", False, 1.0), ("greg", False, 1.0)])
def test_weight_decay_on_1d_parameters_follows_each_papers_setting(method, decay_1d, bias_after):
    """LATS, STR and GReg decay every parameter as their official code (biases too); the others and
    decay_1d = false decay weights only. One SGD step with zero loss gradient, lr 0.1, wd 0.5:
    w = 2 → 2 − 0.1·0.5·2 = 1.9; b = 1 → 0.95 when decayed, else 1."""
    from compress.pruners import TrainPlan
    from compress.train import _optimizer
    layer = torch.nn.Linear(1, 1)
    with torch.no_grad():
        layer.weight.fill_(2.0)
        layer.bias.fill_(1.0)
    cfg = PruneConfig(method=method)
    if decay_1d is not None:
        getattr(cfg, method).decay_1d = decay_1d
    pruner = build_pruner(cfg)
    pruner.attach(torch.nn.Sequential(layer), [], TrainPlan(1, 1, lambda s: 0.1))
    optimizer = _optimizer(layer, pruner, TrainConfig(lr=0.1, weight_decay=0.5, momentum=0.9))
    for p in layer.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert layer.weight.item() == pytest.approx(1.9) and layer.bias.item() == pytest.approx(bias_after)


def test_distillation_teaches_what_the_labels_do_not(digits):
    """Train labels shifted by one class: from them alone a model learns the shift; with the dense
    model's outputs as the whole loss (distill = 1) it learns the true classes."""
    import dataclasses

    from compress.data import Data
    from compress.dataset import Split
    from compress.pruners import Pruner

    def mlp():
        torch.manual_seed(0)
        return build_model(ModelConfig(name="mlp", hidden=[64]), digits.input_shape, digits.num_classes)

    cfg = TrainConfig(epochs=6, batch_size=32, lr=0.05)
    teacher = mlp()
    train(teacher, Pruner(), digits, cfg, [], progress=False)
    wrong = Data(Split(digits.train.x, (digits.train.y + 1) % digits.num_classes), digits.test,
                 digits.num_classes, digits.input_shape)
    alone, taught = mlp(), mlp()
    labels_only = train(alone, Pruner(), wrong, cfg, [], progress=False, teacher=teacher)  # distill 0: unused
    distilled = train(taught, Pruner(), wrong, dataclasses.replace(cfg, distill=1.0), [], progress=False,
                      teacher=teacher)
    assert labels_only[-1]["test_accuracy"] < 0.2 < 0.85 < distilled[-1]["test_accuracy"]
