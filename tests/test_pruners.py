"""Pruner behaviour that would break if the method were implemented wrongly."""
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from compress.errors import UserError
from compress.models import LeNet5, MLP
from compress.config.prune import PruneConfig
from compress.pruners import Pruner, TrainPlan, build_pruner
from compress.pruners.lats import LATSOptions, LATSPruner, soft_threshold
from compress.pruners.magnitude import MagnitudeOptions, MagnitudePruner, magnitude_masks
from compress.schedules import lr_at
from compress.schema import parse
from compress.selection import LayerRule, get_module, select_layers
from compress.sparsity import global_sparsity



def pruned_steps(layer, pruner, opt, batches, lr: float = 0.1):
    """One squared-error training step per batch with the pruner's hooks around the optimizer step,
    as the pipeline calls them; yields each step's index after it."""
    for t, (x, y) in enumerate(batches):
        opt.zero_grad()
        ((layer(x) - y) ** 2).mean().backward()
        pruner.after_backward(t)
        opt.step()
        pruner.after_step(t, lr)
        yield t

def plan(epochs=4, steps=10, warmup=5, base=0.1):
    return TrainPlan(epochs, steps, lambda s: lr_at(s, epochs * steps, base, "cosine", warmup))


def lats_mlp(hidden=16, training_plan=None, **options):
    """A seeded MLP on 8x8 inputs with a LATS pruner attached to all its Linear layers."""
    torch.manual_seed(0)
    model = MLP((1, 8, 8), 10, [hidden])
    layers = select_layers(model, LayerRule())
    pruner = LATSPruner(LATSOptions(**options))
    pruner.attach(model, layers, training_plan or plan())
    return model, layers, pruner


def test_lats_gradient_is_straight_through():
    model, layers, pruner = lats_mlp(hidden=32, threshold_final=0.5)
    pruner._set_threshold(0.08)
    layer = model.net[1]
    theta = layer.parametrizations.weight.original
    with parametrize.cached():  # the same effective weight tensor in forward and here
        w = layer.weight
        w.retain_grad()
        model(torch.randn(16, 1, 8, 8)).logsumexp(1).sum().backward()
    pruned = theta.abs() <= 0.08
    assert 0.2 < pruned.float().mean() < 0.9 and torch.all(w[pruned] == 0)
    # ∂L/∂θ = ∂L/∂w everywhere, including where the weight is pruned (so it can regrow).
    assert torch.equal(theta.grad, w.grad)
    assert theta.grad[pruned].abs().sum() > 0


def test_lats_gradient_is_zero_where_theta_is_exactly_zero():
    """The official rule: ∂L/∂θ = ∂L/∂w·sign(θ)², so ∂L/∂w where θ ≠ 0 (pruned or not) and 0 at θ = 0."""
    layer = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.0, 0.05, -0.5], [0.25, -0.0, -0.01]]))
    pruner = LATSPruner(LATSOptions(threshold_final=0.5))
    pruner.attach(nn.Sequential(layer), ["0"], plan())
    pruner._set_threshold(0.1)
    # forward w = [[0, 0, -0.4], [0.15, 0, 0]]; with loss Σ w·g the gradient wrt w is g
    g = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert torch.allclose(layer.weight, torch.tensor([[0.0, 0.0, -0.4], [0.15, 0.0, 0.0]]))
    (layer.weight * g).sum().backward()
    assert layer.parametrizations.weight.original.grad.tolist() == [[0.0, 2.0, 3.0], [4.0, 0.0, 6.0]]


class PassThroughReLU(torch.autograd.Function):
    """The official LATS code's ReLU whose backward is the identity."""
    @staticmethod
    def forward(ctx, x):
        return torch.relu(x)

    @staticmethod
    def backward(ctx, g):
        return g


def test_lats_weight_and_gradient_equal_the_official_formula():
    """w = sign(θ)·PassThroughReLU(|θ| − d), PassThroughReLU's backward the identity (the official code):
    the same weights and the same ∂L/∂θ, zeros of θ included, by autograd on that formula."""
    torch.manual_seed(0)
    theta = torch.randn(20, 30)
    theta.view(-1)[:40] = 0.0
    grad_w = torch.randn(20, 30)
    t = theta.clone().requires_grad_()
    official = torch.sign(t) * PassThroughReLU.apply(t.abs() - 0.3)
    official.backward(grad_w)
    layer = nn.Linear(30, 20, bias=False)
    with torch.no_grad():
        layer.weight.copy_(theta)
    pruner = LATSPruner(LATSOptions(threshold_final=0.5))
    pruner.attach(nn.Sequential(layer), ["0"], plan())
    pruner._set_threshold(0.3)
    ours = layer.weight
    ours.backward(grad_w)
    assert torch.equal(ours.detach(), official.detach())
    assert torch.equal(layer.parametrizations.weight.original.grad, t.grad)


def test_lats_threshold_tracks_summed_learning_rate():
    p = plan()
    _, _, pruner = lats_mlp(training_plan=p, l1_lambda=0.3)
    prev = 0.0
    for step in range(p.total_steps):
        pruner.after_step(step, p.lr_at(step))
        # λ = Δd_t / η_t is constant through warm-up and cosine decay.
        assert (pruner.threshold - prev) / p.lr_at(step) == pytest.approx(0.3)
        prev = pruner.threshold
    assert pruner.threshold == pytest.approx(0.3 * p.lr_sum(0, p.total_steps))


def test_lats_final_threshold_reached_exactly_and_start_epoch():
    p = plan()
    _, _, pruner = lats_mlp(training_plan=p, threshold_final=0.2, start_epoch=2)
    for step in range(p.total_steps):
        pruner.after_step(step, p.lr_at(step))
        if step < 2 * p.steps_per_epoch:
            assert pruner.threshold == 0.0
    assert pruner.threshold == pytest.approx(0.2)


def test_lats_threshold_lives_in_state_dicts():
    model, layers, pruner = lats_mlp(threshold_final=0.2)
    for step in range(7):
        pruner.after_step(step, 0.1)
    sd = model.state_dict()
    keys = [k for k in sd if k.endswith("threshold")]
    assert len(keys) == len(layers) and all(float(sd[k]) == pytest.approx(pruner.threshold) for k in keys)
    other_model, _, other = lats_mlp(threshold_final=0.2)
    other_model.load_state_dict(sd)
    other.load_state_dict(pruner.state_dict())
    assert other.threshold == pruner.threshold and other.lr_accumulated == pruner.lr_accumulated
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(other_model(x), model(x))


def test_lats_freeze_is_soft_threshold_not_mask():
    torch.manual_seed(0)
    model = LeNet5((1, 8, 8), 10)
    layers = select_layers(model, LayerRule())
    pruner = LATSPruner(LATSOptions(threshold_final=0.2))
    pruner.attach(model, layers, plan())
    pruner._set_threshold(0.05)
    x = torch.randn(8, 1, 8, 8)
    before = model(x)
    thetas = {n: model.get_submodule(n).parametrizations.weight.original.detach().clone() for n in layers}
    frozen = pruner.freeze()
    assert not any(parametrize.is_parametrized(frozen.get_submodule(n)) for n in layers)
    for n in layers:
        w = frozen.get_submodule(n).weight
        assert type(w) is nn.Parameter
        assert torch.equal(w, soft_threshold(thetas[n], 0.05))
        assert not torch.any(torch.signbit(w[w == 0]))  # +0.0 only
    assert torch.equal(frozen(x), before)


def test_magnitude_global_and_layerwise_counts():
    torch.manual_seed(0)
    model = LeNet5((1, 28, 28), 10)
    layers = select_layers(model, LayerRule())
    masks = magnitude_masks(model, layers, 0.9, "global")
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.9 * total)
    per_layer = {n: 1 - m.float().mean().item() for n, m in masks.items()}
    assert max(per_layer.values()) - min(per_layer.values()) > 0.05  # global cut: layers differ
    # kept weights are all larger than removed ones
    kept = torch.cat([model.get_submodule(n).weight.detach().abs()[m] for n, m in masks.items()])
    dropped = torch.cat([model.get_submodule(n).weight.detach().abs()[~m] for n, m in masks.items()])
    assert kept.min() >= dropped.max()
    layer_masks = magnitude_masks(model, layers, 0.75, "layer")
    for n, m in layer_masks.items():
        assert int((~m).sum()) == round(0.75 * m.numel())


def test_magnitude_prunes_once_then_keeps_mask():
    torch.manual_seed(0)
    model = MLP((1, 8, 8), 10, [32])
    layers = select_layers(model, LayerRule())
    pruner = MagnitudePruner(MagnitudeOptions(sparsity=0.8, prune_after=0.5))
    pruner.attach(model, layers, plan(epochs=4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for epoch in range(4):
        pruner.begin_epoch(epoch)
        loss = model(torch.randn(8, 1, 8, 8)).pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
        pruner.after_step(epoch, 0.1)
        expected = 0.8 if epoch >= 2 else 0.0
        assert global_sparsity(model, layers) == pytest.approx(expected, abs=1e-3)


def test_layer_selection_rules_and_ddp_names():
    model = LeNet5((1, 28, 28), 10)
    all_layers = select_layers(model, LayerRule())
    assert all_layers == ["features.0", "features.3", "classifier.0", "classifier.2", "classifier.4"]
    assert select_layers(model, LayerRule(keep_first_dense=True, keep_last_dense=True)) == all_layers[1:-1]
    assert select_layers(model, LayerRule(types=["conv"])) == ["features.0", "features.3"]
    assert select_layers(model, LayerRule(exclude=["classifier.*"])) == ["features.0", "features.3"]
    wrapped = nn.Module()
    wrapped.module = model  # what DDP does to names
    assert select_layers(wrapped, LayerRule()) == all_layers
    with pytest.raises(UserError, match="matches no layer"):
        select_layers(model, LayerRule(exclude=["*"]))


def test_registry_builds_each_method():
    for method, cls in (("dense", Pruner), ("lats", LATSPruner), ("magnitude", MagnitudePruner)):
        assert type(build_pruner(PruneConfig(method=method))) is cls


def test_lats_options_refuse_lambda_beside_another_schedule_or_a_target():
    def lats(**options):
        return parse(PruneConfig, {"method": "lats", "lats": options}, "prune").lats

    assert lats().threshold_final == 0.05 and lats().l1_lambda == 0.0
    for ok in ({"schedule": "linear"}, {"l1_lambda": 0.1}, {"target_sparsity": 0.5}, {"threshold_final": 1e-4}):
        lats(**ok)
    for bad, field in (({"l1_lambda": 0.1, "schedule": "linear"}, "l1_lambda"),
                       ({"l1_lambda": 0.1, "target_sparsity": 0.5}, "target_sparsity"),
                       ({"threshold_final": 0.0}, "threshold_final")):
        with pytest.raises(UserError, match=f"lats.{field}"):
            lats(**bad)


@pytest.mark.parametrize("schedule", ["linear", "constant"])
def test_lats_closed_form_schedules_give_the_threshold_after_each_step_by_hand(schedule):
    """4 epochs of 5 steps, start_epoch 1 (step 5): after step k the linear ramp is
    D·(k + 1 − 5) / 15 (0 before step 5, D from step 19); the constant schedule is D once past step 5."""
    p = TrainPlan(4, 5, lambda s: 0.1)
    _, _, pruner = lats_mlp(training_plan=p, schedule=schedule, threshold_final=0.3, start_epoch=1)
    for k in range(p.total_steps):
        pruner.after_step(k, 0.1)
        if schedule == "linear":
            want = 0.0 if k < 5 else 0.3 * min(k + 1 - 5, 15) / 15
        else:
            want = 0.0 if k + 1 <= 5 else 0.3
        assert pruner.threshold == pytest.approx(want), (k, pruner.threshold, want)


def test_lats_early_mode_fixes_the_mask_at_half_the_epochs_by_default():
    p = TrainPlan(4, 5, lambda s: 0.1)
    _, _, pruner = lats_mlp(training_plan=p, mode="early", schedule="linear", threshold_final=0.3)
    assert pruner.window == (0, 10)
    for epoch in range(4):
        for k in range(epoch * 5, epoch * 5 + 5):
            pruner.after_step(k, 0.1)
        pruner.end_epoch(epoch)
        assert bool(pruner.fixed_masks) == (epoch >= 1), epoch


def _q(model, layers, fraction):
    """The |θ| below which `fraction` of the latent weights lie (what target mode aims the threshold at)."""
    flat = torch.cat([get_module(model, n).parametrizations.weight.original.detach().abs().flatten() for n in layers])
    return float(flat.sort().values[round(fraction * flat.numel()) - 1])


def test_lats_target_mode_on_still_weights_ramps_the_threshold_to_their_quantile():
    """Weights that do not move: the quantile q at the target is where d must end, every calibration
    predicts q again, so with the linear schedule d = q·(k + 1 − 105) / 105 after step k of the window
    [105, 210), and the projected final threshold is q at every step."""
    p = TrainPlan(2, 105, lambda s: 0.1)
    model, layers, pruner = lats_mlp(training_plan=p, schedule="linear", target_sparsity=0.6, start_epoch=1)
    q = _q(model, layers, 0.6)
    for k in range(p.total_steps):
        pruner.after_step(k, 0.1)
        want = 0.0 if k < 105 else q * (k + 1 - 105) / 105
        assert pruner.threshold == pytest.approx(want, rel=1e-9, abs=1e-12), k
        if k >= 105:
            assert pruner.final == pytest.approx(q, rel=1e-9), k
    assert pruner.summary()["sparsity_control"] == "target 0.6"


def test_lats_target_mode_recalibrates_its_rate_every_fiftieth_of_the_window_only():
    """Weights growing 1% a step: the rate Δd/Δp changes only after a calibration, which comes when a
    multiple of (315 − 105) // 50 = 4 window steps are done (k + 1 − 105 divisible by 4), never in between."""
    p = TrainPlan(3, 105, lambda s: 0.1)
    model, layers, pruner = lats_mlp(training_plan=p, schedule="linear", target_sparsity=0.6, start_epoch=1)
    latents = [get_module(model, n).parametrizations.weight.original for n in layers]
    rates, prev = [], 0.0
    for k in range(105, 315):
        pruner.after_step(k, 0.1)
        rates.append((pruner.threshold - prev) * 210)  # Δd / Δp, Δp = 1/210 a step
        prev = pruner.threshold
        with torch.no_grad():
            for t in latents:
                t.mul_(1.01)
    changed = [105 + i for i in range(1, len(rates)) if rates[i] != pytest.approx(rates[i - 1], rel=1e-9)]
    assert changed and all((k - 105) % 4 == 0 for k in changed), changed  # k = the step after a calibration


def test_lats_summary_names_what_controls_sparsity():
    assert lats_mlp(l1_lambda=0.3)[2].summary()["sparsity_control"] == "l1_lambda"
    assert lats_mlp(threshold_final=0.2)[2].summary()["sparsity_control"] == "threshold_final"


def test_a_short_s_lats_run_is_bit_identical_to_the_official_loop():
    """The official S-LATS loop written out: at iteration t the threshold is D·(sin(πx)/π + x), x = t/T;
    w = sign(θ)·PassThroughReLU(|θ| − d) (gradient straight through, 0 where θ is exactly 0); SGD with
    momentum and weight decay on θ. Every step's weights equal the pruner's bit for bit."""
    import math

    torch.manual_seed(0)
    theta0, steps, final = torch.randn(5, 8) * 0.5, 12, 0.4
    batches = [(torch.randn(16, 8), torch.randn(16, 5)) for _ in range(steps)]

    theta = theta0.clone().requires_grad_()
    opt = torch.optim.SGD([theta], lr=0.1, momentum=0.9, weight_decay=1e-3)
    official = []
    for t, (x, y) in enumerate(batches):
        d = final * (math.sin(math.pi * t / steps) / math.pi + t / steps)
        w = torch.sign(theta) * PassThroughReLU.apply(theta.abs() - d)
        opt.zero_grad()
        ((x @ w.t() - y) ** 2).mean().backward()
        opt.step()
        official.append(theta.detach().clone())

    layer = nn.Linear(8, 5, bias=False)
    with torch.no_grad():
        layer.weight.copy_(theta0)
    pruner = LATSPruner(LATSOptions(schedule="s-lats", threshold_final=final))
    pruner.attach(nn.Sequential(layer), ["0"], TrainPlan(1, steps, lambda s: 0.1))
    latent = layer.parametrizations.weight.original
    opt = torch.optim.SGD([latent], lr=0.1, momentum=0.9, weight_decay=1e-3)
    pruner.begin_epoch(0)
    for t in pruned_steps(layer, pruner, opt, batches):
        assert torch.equal(latent.detach(), official[t]), f"step {t}"
    assert 0 < float((layer.weight == 0).float().mean()) < 1  # the threshold did prune
