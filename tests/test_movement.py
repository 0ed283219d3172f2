"""Movement pruning: the score rule on a hand-computed case, and the target reached on real digits."""
import pytest
import torch
from torch import nn

from compress.config.prune import PruneConfig
from compress.config.train import TrainConfig
from compress.models import MLP
from compress.pruners import TrainPlan, build_pruner
from compress.pruners.movement import MovementOptions, MovementPruner
from compress.schema import parse
from compress.selection import LayerRule, select_layers
from compress.sparsity import global_sparsity, layer_sparsity
from compress.train import evaluate, train

from test_gmp import zeros_after_each_step


def test_scores_accumulate_minus_weight_times_gradient_by_hand():
    """L = Σ W'x, so ∂L/∂W' = x: after x1 = (3, 1) and x2 = (−1, 2) with W = (1, −2) held fixed,
    S = −W·x1 − W·x2 = (−3, 2) + (1, 4) = (−2, 6), also for a weight the mask hides."""
    layer = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0]]))
    model = nn.Sequential(layer)
    pruner = MovementPruner(MovementOptions(target_sparsity=0.5, start=0.0, end=0.5, frequency=1))
    pruner.attach(model, ["0"], TrainPlan(1, 4, lambda s: 0.1))
    for x in ([3.0, 1.0], [-1.0, 2.0]):
        model.zero_grad()
        model(torch.tensor([x])).sum().backward()
        pruner.after_backward(0)
    assert pruner.scores["0"].tolist() == [[-2.0, 6.0]]
    pruner.after_step(2, 0.1)  # step == end: the target, 1 of 2 weights, the lower score goes
    assert layer.weight.tolist() == [[0.0, -2.0]]
    model.zero_grad()
    model(torch.tensor([[5.0, 1.0]])).sum().backward()
    pruner.after_backward(3)
    assert pruner.scores["0"].tolist() == [[-7.0, 8.0]]  # the hidden weight still scores: −1·5
    latent = layer.parametrizations.weight.original
    assert latent.grad.tolist() == [[0.0, 1.0]]  # but its latent weight gets no gradient


def test_soft_sets_one_threshold_over_all_layers():
    from compress.pruners.movement import top_scores
    scores = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([0.5, 5.0])}
    masks, tau = top_scores(scores, 0.5, "soft")
    assert masks["a"].tolist() == [False, False, True, True] and masks["b"].tolist() == [False, True] and tau == 2.0
    hard, none = top_scores(scores, 0.5, "hard")
    assert hard["a"].tolist() == [False, False, True, True] and hard["b"].tolist() == [False, True] and none is None


def test_config_names_the_method_and_its_options():
    cfg = parse(PruneConfig, {"method": "movement", "movement": {"target_sparsity": 0.95, "variant": "soft"}}, "prune")
    pruner = build_pruner(cfg)
    assert type(pruner) is MovementPruner and pruner.options.target_sparsity == 0.95
    with pytest.raises(Exception, match="run.toml: prune.movement.variant: expected one of"):
        parse(PruneConfig, {"movement": {"variant": "medium"}}, "run.toml: prune")


@pytest.fixture(scope="module")
def pretrained(digits):
    torch.manual_seed(0)
    model = MLP(digits.input_shape, digits.num_classes, [64])
    train(model, build_pruner(PruneConfig(method="dense")), digits, TrainConfig(epochs=6, batch_size=64),
          select_layers(model, LayerRule()), progress=False)
    return model.state_dict(), evaluate(model, digits.test)[0]


@pytest.mark.parametrize("variant", ["hard", "soft"])
def test_fine_tuning_reaches_the_target_on_digits(digits, pretrained, variant):
    weights, dense_accuracy = pretrained
    model = MLP(digits.input_shape, digits.num_classes, [64])
    model.load_state_dict(weights)
    layers = select_layers(model, LayerRule())
    pruner = MovementPruner(MovementOptions(target_sparsity=0.9, variant=variant, start=0.0, end=0.6))
    train(model, pruner, digits, TrainConfig(epochs=5, batch_size=64, lr=0.05), layers, progress=False)
    frozen = pruner.freeze()
    assert not any("parametrizations" in k for k in frozen.state_dict())  # a plain model
    assert global_sparsity(frozen, layers) == pytest.approx(0.9, abs=1e-3)
    per_layer = layer_sparsity(frozen, layers)
    if variant == "hard":
        assert all(v == pytest.approx(0.9, abs=1e-3) for v in per_layer.values())
    else:
        assert max(per_layer.values()) - min(per_layer.values()) > 0.01  # one threshold, layers differ
    accuracy = evaluate(frozen, digits.test)[0]
    assert accuracy > dense_accuracy - 0.1, (accuracy, dense_accuracy)


def test_options_accept_their_documented_ranges_and_refuse_outside():
    """target_sparsity in [0, 1), start in [0, 1), end in (0, 1]; the defaults are 0.9 / 0.1 / 0.7."""
    def parse_movement(**options):
        return parse(PruneConfig, {"method": "movement", "movement": options}, "prune").movement

    defaults = parse_movement()
    assert (defaults.target_sparsity, defaults.start, defaults.end) == (0.9, 0.1, 0.7)
    for ok in ({"target_sparsity": 0.0}, {"target_sparsity": 0.99}, {"start": 0.0}, {"start": 0.5},
               {"end": 1.0}):
        parse_movement(**ok)
    for bad in ({"target_sparsity": 1.0}, {"target_sparsity": -0.1}, {"target_sparsity": 1.5}, {"start": 1.0},
                {"start": -0.1}, {"end": 0.0}, {"frequency": 0}):
        with pytest.raises(Exception, match="movement." + next(iter(bad)) + ": expected"):
            parse_movement(**bad)


def test_the_mask_changes_only_every_frequency_steps_from_start_and_at_end():
    """20 steps, start 0.2 (step 4), end 0.6 (step 12), every 3 steps: the mask moves at steps 7, 10 and 12
    (at step 4 the cubic schedule is still 0) and nowhere else; from step 12 on it holds the target."""
    torch.manual_seed(0)
    layer = nn.Linear(20, 10, bias=False)
    model = nn.Sequential(layer)
    pruner = MovementPruner(MovementOptions(target_sparsity=0.9, start=0.2, end=0.6, frequency=3))
    pruner.attach(model, ["0"], TrainPlan(1, 20, lambda s: 0.1))
    pruner.scores["0"] = torch.randn(10, 20)  # fixed scores: the mask follows the schedule alone
    zeros, moved, _ = zeros_after_each_step(pruner, layer, 20)
    assert moved == [7, 10, 12] and zeros[-1] == 180, (moved, zeros)
