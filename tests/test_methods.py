"""Properties of the pruning methods of issue 3 that would fail if a method were wrong."""
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from compress.models import MLP, ModelConfig, build_model
from compress.config.prune import PruneConfig
from compress.pruners import TrainPlan, build_pruner
from compress.pruners.greg import GRegOptions, GRegPruner
from compress.pruners.groups import per_row, pick_pruned
from test_pruners import pruned_steps
from compress.pruners.lats import LATSOptions, LATSPruner
from compress.pruners.l1 import L1Options
from compress.pruners.str_reparam import STROptions, STRPruner
from compress.schedules import cubic_sparsity, lr_at, threshold_fraction
from compress.selection import LayerRule, select_layers
from compress.sparsity import global_sparsity, layer_sparsity
from compress.train import TrainConfig, train


def plan(epochs=4, steps=10):
    return TrainPlan(epochs, steps, lambda s: lr_at(s, epochs * steps, 0.1, "cosine", 5))


def mlp(hidden=32):
    torch.manual_seed(0)
    model = MLP((1, 8, 8), 10, [hidden, hidden])
    return model, select_layers(model, LayerRule())


# ---- LATS family ----

@pytest.mark.parametrize("kind", ["s-lats", "pgh"])
def test_closed_forms_match_their_integrals(kind):
    beta = 10.0
    rate = (lambda u: 1 + math.cos(math.pi * u)) if kind == "s-lats" else (lambda u: beta ** u * (1 + math.cos(math.pi * u)))
    n = 20000
    total = sum(rate((i + 0.5) / n) for i in range(n))
    for x in (0.1, 0.5, 0.9):
        part = sum(rate((i + 0.5) / n) for i in range(int(x * n)))
        assert threshold_fraction(kind, x, beta) == pytest.approx(part / total, abs=1e-4)
    assert threshold_fraction("pgh", 0.37, 1.0) == pytest.approx(threshold_fraction("s-lats", 0.37))


def test_init_mode_keeps_the_initial_function():
    model, layers = mlp()
    x = torch.randn(5, 1, 8, 8)
    before = model(x)
    pruner = LATSPruner(LATSOptions(mode="init", threshold_final=0.05))
    pruner.attach(model, layers, plan())
    assert pruner.threshold == 0.05
    assert torch.allclose(model(x), before, atol=1e-6)  # S_D(sign(w)(|w| + D)) = w


def test_early_mode_fixes_the_mask_after_end_epoch(digits):
    model, layers = mlp()
    pruner = LATSPruner(LATSOptions(mode="early", end_epoch=3, threshold_final=0.05))
    history = train(model, pruner, digits, TrainConfig(epochs=6), layers, progress=False)
    assert 0 < history[1]["threshold"] < 0.05 and history[2]["threshold_final"] == 0.05
    assert pruner.fixed_masks and pruner.threshold == 0.0
    masks_after = [row["sparsity"] for row in history[3:]]
    assert max(masks_after) - min(masks_after) < 1e-9 and masks_after[0] > 0.2


@pytest.mark.parametrize("method, target", [("lats", 0.9), ("lats", 0.95), ("lats", 0.99), ("str", 0.9),
                                            ("str", 0.99)])
def test_target_mode_within_one_point_at_300_steps(digits, method, target):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="mlp"), digits.input_shape, digits.num_classes)
    cfg = PruneConfig(method=method)
    getattr(cfg, method).target_sparsity = target
    pruner = build_pruner(cfg)
    layers = select_layers(model, cfg.layers)
    history = train(model, pruner, digits, TrainConfig(epochs=25, batch_size=128), layers, progress=False)
    assert pruner.plan.total_steps == 300
    assert global_sparsity(pruner.freeze(), layers) == pytest.approx(target, abs=0.01)
    assert pruner.summary()["sparsity_control"] == f"target {target}"
    assert not any("sparsity above" in w for row in history for w in row.get("warnings", []))


@pytest.mark.parametrize("schedule", ["lats", "s-lats"])
def test_lats_target_mode_holds_its_rate_over_the_last_half(digits, schedule):
    """λ = Δd/η (schedule 'lats'; Δd/Δp for the closed forms) is calibrated, then held within 10%."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="mlp"), digits.input_shape, digits.num_classes)
    pruner = LATSPruner(LATSOptions(target_sparsity=0.95, schedule=schedule))
    seen = []
    original = pruner.after_step

    def spy(step, lr):
        before = pruner.threshold
        original(step, lr)
        seen.append((pruner.threshold - before) / lr if schedule == "lats" else pruner.calibration.rate)

    pruner.after_step = spy
    train(model, pruner, digits, TrainConfig(epochs=25, batch_size=128), select_layers(model, LayerRule()), progress=False)
    last_half = seen[len(seen) // 2:]
    assert min(last_half) > 0 and max(last_half) / min(last_half) <= 1.10
    assert max(seen) / min(seen) > 1.10  # it did calibrate in the first half
    if schedule == "lats":
        assert pruner.summary()["lambda"] == pytest.approx(seen[-1], rel=1e-6)


def test_str_target_mode_keeps_the_learned_layer_differences(digits):
    """Every 1% of training all s are shifted by one amount: the per-layer thresholds move together,
    and past sigmoid(0) = 0.5 when the target needs it."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="mlp"), digits.input_shape, digits.num_classes)
    pruner = STRPruner(STROptions(target_sparsity=0.999, ramp_fraction=0.01))
    layers = select_layers(model, LayerRule())
    pruner.attach(model, layers, plan(epochs=2, steps=50))
    with torch.no_grad():
        for k, s in enumerate(pruner._params()):
            s.fill_(-4.0 - k)
        for n in layers:  # weights larger than 0.5: a threshold below sigmoid(0) cannot reach 99.9%
            pruner.modules[n].parametrizations.weight.original.mul_(3)
    pruner.after_step(0, 0.1)
    after = [float(s.detach()) for s in pruner._params()]
    assert pruner.shift > 4.0 and max(float(torch.sigmoid(torch.tensor(a))) for a in after) > 0.5
    assert [a - (-4.0 - k) for k, a in enumerate(after)] == pytest.approx([pruner.shift] * len(after))
    assert global_sparsity(model, layers) == pytest.approx(0.999, abs=0.002)


# ---- STR ----

def test_str_gradient_is_zero_below_threshold_and_s_learns():
    model, layers = mlp()
    pruner = STRPruner(STROptions(s_init=-3.0))
    pruner.attach(model, layers, plan())
    layer = model.net[1]
    theta = layer.parametrizations.weight.original
    model(torch.randn(16, 1, 8, 8)).logsumexp(1).sum().backward()
    below = theta.abs() <= torch.sigmoid(torch.tensor(-3.0))
    assert 0.3 < below.float().mean() < 1.0
    assert torch.all(theta.grad[below] == 0) and theta.grad[~below].abs().sum() > 0
    pruner.after_backward(0)  # the pruner gives s its gradient
    assert layer.parametrizations.weight[0].s.grad is not None  # s is a trained parameter


def test_str_learns_different_per_layer_sparsity(digits):
    model, layers = mlp(64)
    pruner = STRPruner(STROptions(s_init=-4.0, s_weight_decay=0.05))
    train(model, pruner, digits, TrainConfig(epochs=15), layers, progress=False)
    thresholds = pruner.summary()["thresholds"]
    assert len({round(t, 4) for t in thresholds.values()}) == len(layers)
    per_layer = layer_sparsity(pruner.freeze(), layers)
    assert max(per_layer.values()) - min(per_layer.values()) > 0.05
    assert not any(parametrize.is_parametrized(model.get_submodule(n)) for n in layers)


@pytest.mark.parametrize("shape", [(120, 400), (6, 1, 5, 5)])
def test_str_threshold_equals_the_papers_formula_in_value_and_gradient(shape):
    """STR's weight and the gradients of θ and s (s's set by the pruner after the backward pass) are
    what autograd gives for sign(θ)·ReLU(|θ| − sigmoid(s)), including at θ = 0 and exactly at the
    threshold."""
    torch.manual_seed(0)
    theta, s = torch.randn(shape, dtype=torch.float64) * 0.5, torch.tensor(-0.375, dtype=torch.float64)  # exact in float32
    theta.view(-1)[0], theta.view(-1)[1] = 0.0, float(torch.sigmoid(s))
    grad = torch.randn(shape, dtype=torch.float64)
    t, v = theta.clone().requires_grad_(), s.clone().requires_grad_()
    ref = torch.sign(t) * torch.relu(t.abs() - torch.sigmoid(v))
    ref.backward(grad)

    layer = (nn.Linear(shape[1], shape[0], bias=False) if len(shape) == 2 else
             nn.Conv2d(shape[1], shape[0], shape[2], bias=False)).double()
    with torch.no_grad():
        layer.weight.copy_(theta)
    model = nn.Sequential(layer)
    pruner = STRPruner(STROptions(s_init=float(s)))
    pruner.attach(model, ["0"], TrainPlan(1, 1, lambda step: 0.1, None))
    ours = layer.weight
    ours.backward(grad)
    assert layer.parametrizations.weight[0].s.grad is None  # s is set by the pruner, not autograd
    pruner.after_backward(0)
    ours_t, ours_s = layer.parametrizations.weight.original.grad, layer.parametrizations.weight[0].s.grad
    assert torch.equal(ref.detach(), ours.detach()) and torch.equal(t.grad, ours_t)
    assert float(ours_s) == pytest.approx(float(v.grad), rel=1e-7)  # s is a float32 parameter
    assert ours.view(-1)[:2].eq(0).all() and ours_t.view(-1)[:2].eq(0).all()


def test_str_sigmoid_is_stable_for_any_s():
    from compress.pruners.str_reparam import s_gradient, sigmoid
    assert sigmoid(0.0) == 0.5 and sigmoid(math.log(3)) == pytest.approx(0.75, rel=1e-15)
    assert sigmoid(-math.log(3)) == pytest.approx(0.25, rel=1e-15)
    assert sigmoid(-3200.0) == 0.0 and sigmoid(3200.0) == 1.0  # math.exp(3200) would overflow
    # sigmoid'(40) = e^-40 / (1 + e^-40)^2 ≈ 4.248354255291589e-18 (1 − sigmoid(40) is 0.0 in double)
    theta, grad = torch.tensor([0.5, -0.25, 0.0]), torch.tensor([2.0, 4.0, 8.0])  # Σ grad·sign(θ) = 2 − 4 = −2
    assert float(s_gradient(theta, grad, 40.0)) == pytest.approx(2 * 4.248354255291589e-18, rel=1e-6)
    assert float(s_gradient(theta, grad, 0.0)) == pytest.approx(2 * 0.25)


def test_str_paper_s_init_minus_3200_trains_with_threshold_zero():
    """ImageNet's s_init = −3200: threshold 0 (w = θ), s's loss gradient 0 (sigmoid' underflows), so the
    first step moves s by weight decay only: s₁ = s₀ − lr·wd·s₀ (SGD's first momentum step is the gradient)."""
    model, layers = mlp()
    pruner = STRPruner(STROptions(s_init=-3200.0))
    pruner.attach(model, layers, plan())
    layer = model.net[1]
    theta = layer.parametrizations.weight.original
    assert torch.equal(layer.weight, theta)
    model(torch.randn(16, 1, 8, 8)).logsumexp(1).sum().backward()
    pruner.after_backward(0)
    s = layer.parametrizations.weight[0].s
    assert s.grad is not None and torch.isfinite(s.grad).all() and float(s.grad) == 0.0
    assert torch.isfinite(theta.grad).all() and theta.grad.abs().sum() > 0
    opt = torch.optim.SGD([{"params": pruner._params(), "weight_decay": 1e-3}], lr=0.5, momentum=0.9)
    opt.step()
    assert float(s) == pytest.approx(-3200.0 * (1 - 0.5 * 1e-3), rel=1e-7)  # −3198.4
    assert pruner.thresholds()[layers[0]] == 0.0


def test_str_target_shift_reaches_from_the_papers_s_init():
    """|θ| = 0.1, 0.2, 0.3, 0.4 and s = −3200: half pruned needs 0.2 ≤ sigmoid(−3200 + c) < 0.3, so
    c in [3200 + logit(0.2), 3200 + logit(0.3)) = [3198.614, 3199.153) (a ±30 range would stop at 30)."""
    from compress.pruners.target import solve_shift
    c = solve_shift([torch.tensor([0.1, -0.2, 0.3, -0.4])], [-3200.0], 0.5)
    assert 3200 + math.log(0.2 / 0.8) - 1e-6 <= c < 3200 + math.log(0.3 / 0.7)  # float32 rounds 0.2 up


def test_str_s_has_its_own_weight_decay(digits):
    model, layers = mlp()
    pruner = STRPruner(STROptions(s_weight_decay=0.123))
    train(model, pruner, digits, TrainConfig(epochs=1, weight_decay=1e-4), layers, progress=False)
    groups = {g.get("name"): g["weight_decay"] for g in pruner.optimizer.param_groups}
    assert groups["str_s"] == 0.123 and groups[None] in (1e-4, 0.0)


def _str(layers_model=None, **options):
    model, layers = layers_model or mlp()
    pruner = STRPruner(STROptions(**options))
    pruner.attach(model, layers, TrainPlan(2, 151, lambda s: 0.1))
    return model, layers, pruner


def test_str_s_decay_of_its_own_round_trips_through_the_state_and_shows_in_the_log():
    """Negative s_weight_decay (the default) means train.weight_decay: no key in the log, None for the
    optimizer; 0 is a decay of its own (none); a state carries either to another pruner."""
    default, zero, own = (_str(s_weight_decay=d)[2] for d in (-1.0, 0.0, 1e-4))
    assert "s_weight_decay" not in default.log_state() and "s_shift" not in default.log_state()
    assert default.param_groups()[0]["weight_decay"] is None
    assert zero.log_state()["s_weight_decay"] == 0.0 and own.log_state()["s_weight_decay"] == 1e-4
    for source, want in ((own, 1e-4), (zero, 0.0), (default, None)):
        other = _str(s_weight_decay=0.5)[2]
        other.load_state_dict(source.state_dict())
        assert other.log_state().get("s_weight_decay") == want, (source.options.s_weight_decay, want)


def test_str_options_accept_their_documented_ranges_and_refuse_outside():
    from compress.schema import parse

    def options(**o):
        return parse(PruneConfig, {"method": "str", "str": o}, "prune").str

    assert (options().s_weight_decay, options().target_sparsity, options().ramp_fraction) == (-1.0, 0.0, 0.75)
    for ok in ({"target_sparsity": 0.99}, {"ramp_fraction": 1.0}, {"s_init": -3200.0}):
        options(**ok)
    for bad in ({"target_sparsity": 1.0}, {"target_sparsity": 1.5}, {"ramp_fraction": 0.0}, {"ramp_fraction": 1.5}):
        with pytest.raises(Exception, match="str." + next(iter(bad)) + ": expected"):
            options(**bad)


def test_str_target_mode_shifts_every_hundredth_of_training_and_at_its_last_step():
    """302 steps: a shift after every 3rd step (k + 1 divisible by 302 // 100 = 3) and after the last one
    (k = 301), never elsewhere; weights growing 0.2% a step keep every shift non-zero. At step 75 the
    sparsity is on the cubic ramp s = 0.8 + (s₀ − 0.8)(1 − 75/227)³ (ramp end ⌈0.75·302⌉ = 227)."""
    model, layers, pruner = _str(target_sparsity=0.8)
    latents = pruner._latents()
    s0 = global_sparsity(model, layers)
    moved = []
    for k in range(302):
        before = pruner._s_values()
        pruner.after_step(k, 0.1)
        if pruner._s_values() != before:
            moved.append(k)
        if k == 74:
            assert global_sparsity(model, layers) == pytest.approx(0.8 + (s0 - 0.8) * (1 - 75 / 227) ** 3, abs=0.01)
        with torch.no_grad():
            for t in latents:
                t.mul_(1.002)
    assert moved == [k for k in range(302) if (k + 1) % 3 == 0 or k == 301], moved
    assert global_sparsity(model, layers) == pytest.approx(0.8, abs=0.01)  # as the last shift left it
    assert "s_shift" in pruner.log_state()


# ---- GReg and its L1 baseline ----

@pytest.mark.parametrize("granularity", ["weight", "filter"])
def test_greg1_penalty_grows_only_on_picked_groups_and_separates_magnitudes(digits, granularity):
    model, layers = mlp(64)
    pruner = GRegPruner(GRegOptions(variant=1, granularity=granularity, sparsity=0.5, pick_after=0.25, reg_by=0.9))
    cfg = TrainConfig(epochs=8)
    seen = []
    original = pruner.after_step

    def spy(step, lr):
        original(step, lr)
        if pruner.phase == "prune" and step % 25 == 0:
            seen.append({n: r.clone() for n, r in pruner.reg.items()})

    pruner.after_step = spy
    history = train(model, pruner, digits, cfg, layers, progress=False)
    assert len(seen) > 3
    for n in pruner.units:
        picked = pruner.pruned[n]
        assert torch.all(seen[-1][n][~picked] == 0) and torch.all(seen[-1][n][picked] > seen[0][n][picked])
    ratios = [r["mag_ratio_mean"] for r in history if "mag_ratio_mean" in r]
    assert ratios[-1] > 10 * ratios[0]
    assert history[-1]["phase"] == "finetune"


def test_l1_baseline_removes_exactly_grego1s_groups(digits):
    picks = {}
    for method in ("greg", "l1"):
        model, layers = mlp(64)
        cfg = PruneConfig(method=method)
        cfg.options |= {"greg": GRegOptions(variant=1, sparsity=0.7, pick_after=0.25),
                        "l1": L1Options(sparsity=0.7, prune_after=0.25)}
        pruner = build_pruner(cfg)
        train(model, pruner, digits, TrainConfig(epochs=4), layers, progress=False)
        picks[method] = {n: ~m for n, m in pruner.masks.items()}
    assert picks["greg"].keys() == picks["l1"].keys()
    for n in picks["greg"]:
        assert torch.equal(picks["greg"][n], picks["l1"][n])


def test_l1_filter_baseline_removes_exactly_greg1s_channels_and_counts(digits):
    """Same training (seed, decay on biases as GReg's) and the same pick epoch: the same channels. Counts
    are GReg's min(ceil(0.55·n), n−1) with no rounding to multiples of 8: hidden 100 → 0.55·100 =
    55.00000000000001 → 56 removed (44 kept; rounding to 8 would keep 48), hidden 30 → ceil(16.5) = 17."""
    removed = {}
    for method in ("greg", "l1"):
        torch.manual_seed(0)
        model = MLP((1, 8, 8), 10, [100, 30])
        layers = select_layers(model, LayerRule())
        cfg = PruneConfig(method=method)
        cfg.greg = GRegOptions(variant=1, granularity="filter", sparsity=0.55, pick_after=0.25)
        cfg.l1 = L1Options(granularity="filter", sparsity=0.55, prune_after=0.25)
        pruner = build_pruner(cfg)
        train(model, pruner, digits, TrainConfig(epochs=4), layers, progress=False)
        removed[method] = ({k: torch.nonzero(v).flatten().tolist() for k, v in pruner.pruned.items()}
                           if method == "greg" else {k: v.tolist() for k, v in pruner.dropped.items()})
    assert {k: len(v) for k, v in removed["l1"].items()} == {"net.1": 56, "net.3": 17}
    assert removed["greg"] == removed["l1"]


def test_greg2_logs_overlap_with_l1(digits):
    model, layers = mlp(64)
    pruner = GRegPruner(GRegOptions(variant=2, sparsity=0.8, pick_after=0.25))
    history = train(model, pruner, digits, TrainConfig(epochs=8), layers, progress=False)
    assert 0.0 < history[-1]["l1_overlap"] <= 1.0
    assert global_sparsity(pruner.freeze(), pruner.layers) == pytest.approx(0.8, abs=0.01)


def test_greg2_kept_groups_get_the_recover_penalty_after_the_pick(digits):
    model, layers = mlp(64)
    recover = -3e-4
    pruner = GRegPruner(GRegOptions(variant=2, sparsity=0.5, pick_after=0.25, reg_granularity_recover=recover))
    seen = []

    class Spy(GRegPruner):  # look at the penalties after every penalty update of the prune phase
        def after_backward(self, step):
            pruning = self.phase == "prune"
            super().after_backward(step)
            if pruning and (step - self.reg_start) % self.options.update_reg_interval == 0:
                seen.extend(float(v) for n in self.units if not self.done[n]
                            for v in self.reg[n][~self.pruned[n]].unique())

    spy = Spy(pruner.options)
    train(model, spy, digits, TrainConfig(epochs=8), layers, progress=False)
    assert seen and all(v == pytest.approx(recover) for v in seen)


def test_greg_updates_its_penalty_at_steps_0_k_2k_of_its_phase_before_they_apply(digits):
    """Counted from the first step of the penalty phase (epoch 1 of 4 here, step 23 with 23 steps an
    epoch), not on the global step modulo k (which would put the first update at step 25)."""
    model, layers = mlp(64)
    pruner = GRegPruner(GRegOptions(variant=1, sparsity=0.5, pick_after=0.25, update_reg_interval=5))
    updates = []

    class Spy(GRegPruner):
        def _update_reg(self):
            updates.append(self.current)
            super()._update_reg()

        def after_backward(self, step):
            self.current = step
            super().after_backward(step)

    spy = Spy(pruner.options)
    train(model, spy, digits, TrainConfig(epochs=4), layers, progress=False)
    assert spy.plan.steps_per_epoch == 23
    assert len(updates) > 3 and updates == list(range(23, updates[-1] + 1, 5))


def test_greg2_filter_mode_ends_with_channels_cut_out(digits):
    from compress.structured import channel_groups, harvest_channels
    model, layers = mlp(64)
    pruner = GRegPruner(GRegOptions(variant=2, granularity="filter", sparsity=0.5, pick_after=0.25))
    history = train(model, pruner, digits, TrainConfig(epochs=8), layers, progress=False)
    assert history[-1]["phase"] == "finetune" and 0.0 < history[-1]["l1_overlap"] <= 1.0
    frozen = pruner.freeze().eval()
    shape = digits.input_shape
    harvest_channels(frozen, channel_groups(frozen, torch.zeros(2, *shape)), shape)
    hidden = [m.out_features for m in frozen.modules() if isinstance(m, torch.nn.Linear)][:-1]
    assert hidden == [32, 32]  # half of every hidden layer's neurons physically gone, the logits whole


def test_greg_filter_mode_finishes_when_a_width_target_leaves_a_layer_whole(digits):
    """A latency target can keep every channel of a layer (its rounding lands on the full width); the
    prune phase must pass over that layer, not take the max of its empty pruned set."""
    model, layers = mlp(64)

    class WholeFirst(GRegPruner):
        def _pick_unit(self, unit, scores):
            picked = super()._pick_unit(unit, scores)
            return torch.zeros_like(picked) if unit == self.units[0] else picked

    pruner = WholeFirst(GRegOptions(variant=2, granularity="filter", sparsity=0.5, pick_after=0.25))
    history = train(model, pruner, digits, TrainConfig(epochs=8), layers, progress=False)
    assert history[-1]["phase"] == "finetune"
    first, second = (pruner.pruned[n] for n in pruner.units)
    assert not first.any() and second.any()


def test_pick_pruned_keeps_at_least_one_group():
    scores = torch.tensor([3.0, 1.0, 2.0])
    assert pick_pruned(scores, 0.99).tolist() == [False, True, True]  # n−1 at most: the best group stays
    assert pick_pruned(scores, 0.3).tolist() == [False, True, False]  # ceil(0.3·3) = 1, the lowest
    w = torch.arange(24.0).view(4, 6)
    assert per_row(torch.arange(4.0), w).shape == (4, 6) and per_row(torch.arange(4.0), w)[2].eq(2).all()


# ---- GMP ----

def test_cubic_schedule_and_gmp_reaches_target(digits):
    values = [cubic_sparsity(s, 10, 110, 0.9) for s in range(0, 130)]
    assert values[9] == 0 and values[110] == pytest.approx(0.9) and values[-1] == pytest.approx(0.9)
    assert all(b >= a for a, b in zip(values, values[1:]))
    model, layers = mlp()
    cfg = PruneConfig(method="gmp")
    cfg.gmp.sparsity = 0.85
    pruner = build_pruner(cfg)
    history = train(model, pruner, digits, TrainConfig(epochs=8), layers, progress=False)
    sparsities = [r["sparsity"] for r in history]
    assert all(b >= a - 1e-9 for a, b in zip(sparsities, sparsities[1:]))
    assert sparsities[-1] == pytest.approx(0.85, abs=1e-3)


def test_block_magnitude_prunes_whole_blocks():
    from compress.pruners.magnitude import magnitude_masks
    from compress.models import LeNet5
    torch.manual_seed(0)
    model = LeNet5((1, 28, 28), 10)
    layers = ["classifier.0", "classifier.2"]  # 120x400 and 84x120: both tile by 4x4
    masks = magnitude_masks(model, layers, 0.9, "global", (4, 4))
    split = 0
    for n, m in masks.items():
        blocks = m.reshape(m.shape[0] // 4, 4, m.shape[1] // 4, 4).float().mean((1, 3))
        split += int(((blocks > 0) & (blocks < 1)).sum())
    assert split <= 1  # whole blocks, except at most the one at the cut
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.9 * total)


def test_a_short_str_run_matches_the_official_loop():
    """The official STR loop written out: w = sign(θ)·ReLU(|θ| − sigmoid(s)) by autograd (true gradient,
    s learned through it), SGD with momentum and the same weight decay on θ and s. Every step's θ and s
    equal the pruner's within 1e-6 (it computes sigmoid(s) in double and s's gradient as a dot)."""
    from compress.pruners.str_reparam import STROptions, STRPruner
    from compress.train import optimizer_groups

    torch.manual_seed(0)
    theta0, steps = torch.randn(6, 10), 15
    batches = [(torch.randn(16, 10), torch.randn(16, 6)) for _ in range(steps)]
    theta = theta0.clone().requires_grad_()
    s = torch.tensor(-2.0, requires_grad=True)
    opt = torch.optim.SGD([theta, s], lr=0.1, momentum=0.9, weight_decay=5e-4)
    official = []
    for x, y in batches:
        w = torch.sign(theta) * torch.relu(theta.abs() - torch.sigmoid(s))
        opt.zero_grad()
        ((x @ w.t() - y) ** 2).mean().backward()
        opt.step()
        official.append((theta.detach().clone(), float(s)))

    layer = nn.Linear(10, 6, bias=False)
    with torch.no_grad():
        layer.weight.copy_(theta0)
    pruner = STRPruner(STROptions(s_init=-2.0))
    model = nn.Sequential(layer)
    pruner.attach(model, ["0"], TrainPlan(1, steps, lambda step: 0.1))
    opt = torch.optim.SGD(optimizer_groups(model, pruner, 5e-4), lr=0.1, momentum=0.9)
    pruner.bind_optimizer(opt)
    latent, reparam = layer.parametrizations.weight.original, layer.parametrizations.weight[0]
    for t in pruned_steps(layer, pruner, opt, batches):
        want_theta, want_s = official[t]
        assert (latent.detach() - want_theta).abs().max() <= 1e-6, f"step {t}"
        assert abs(float(reparam.s) - want_s) <= 1e-6, f"step {t}"
    assert float(reparam.s) != -2.0 and 0 < float((layer.weight == 0).float().mean()) < 1
