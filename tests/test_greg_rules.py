"""GReg's official rules on hand-built weights, stepped by hand (no optimizer: the weights only change
where a test changes them), each expected value computed by hand in the comments."""
import pytest
import torch
from torch import nn

from compress.errors import UserError
from compress.models import MLP
from compress.pruners import TrainPlan
from compress.pruners.greg import GRegOptions, GRegPruner
from compress.pruners.groups import pick_pruned, pruned_count


def stepped(pruner: GRegPruner, steps, before_step=None) -> list[dict]:
    """Run the hooks for `steps` with zeroed gradients; per step: phase after it and the gradients."""
    seen = []
    params = [p for m in pruner.model.modules() if isinstance(m, nn.Linear) for p in m.parameters()]
    for step in steps:
        if before_step:
            before_step(step)
        for p in params:
            p.grad = torch.zeros_like(p)
        pruner.after_backward(step)
        pruner.after_step(step, 0.1)
        seen.append({"step": step, "phase": pruner.phase, "done": dict(pruner.done),
                     "grad": [p.grad.clone() for p in params]})
    return seen


@pytest.mark.parametrize("stabilize", [0, 3])
def test_updates_count_from_the_phase_start_and_removal_waits_stabilize_plus_one_steps(stabilize):
    """7 steps an epoch, the penalty phase from epoch 1 (step 7); interval 2: updates at steps 7, 9, 11
    (global step mod 2 would give 8, 10, 12). reg 0.25 → 0.5 → 0.75 > 0.6: done at step 11. The
    penalty applies at steps 11 … 11 + stabilize, then the pruned weights are removed."""
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0], [-5.0, 6.0, -7.0, 8.0]]))
    pruner = GRegPruner(GRegOptions(variant=1, sparsity=0.5, pick_after=0.25, update_reg_interval=2,
                                    reg_granularity_prune=0.25, reg_upper_limit=0.6, stabilize_steps=stabilize))
    pruner.attach(nn.Sequential(layer), ["0"], TrainPlan(4, 7, lambda s: 0.1))
    pruner.begin_epoch(0)
    assert pruner.phase == "dense"
    pruner.begin_epoch(1)
    assert pruner.pruned["0"].tolist() == [[True] * 4, [False] * 4]  # ceil(0.5·8) = 4 lowest |w|
    seen = stepped(pruner, range(7, 20))
    w4 = {r["step"]: float(r["grad"][0][0, 3]) for r in seen}  # grad = reg · w on the pruned w = 4
    assert [w4[s] for s in (7, 8, 9, 10, 11)] == [1.0, 1.0, 2.0, 2.0, 3.0]
    end = 11 + stabilize
    assert all(w4[s] == 3.0 for s in range(11, end + 1)) and w4[end + 1] == 0.0
    phases = {r["step"]: r["phase"] for r in seen}
    assert phases[end] == "finetune" and (stabilize == 0 or phases[end - 1] == "stabilize")
    assert phases[10] == "prune"
    assert layer.weight[0].eq(0).all() and layer.weight[1].ne(0).all()
    assert float(seen[-1]["grad"][0][1, 0]) == 0.0  # kept weights never had a penalty


def two_layer_mlp(first_rows, second_rows) -> tuple[nn.Module, list[str]]:
    """MLP 64 → 4 → 4 → 10, biases 0; every weight of hidden row i of net.1 is first_rows[i] (score
    64·value), of net.3 second_rows[i] (score 4·value)."""
    torch.manual_seed(0)
    model = MLP((1, 8, 8), 10, [4, 4])
    with torch.no_grad():
        for name, rows in (("net.1", first_rows), ("net.3", second_rows)):
            m = model.get_submodule(name)
            m.weight.copy_(torch.tensor(rows).view(-1, 1).expand_as(m.weight))
            m.bias.zero_()
    return model, ["net.1", "net.3", "net.5"]


def filter_greg(variant: int, model, layers, **options) -> GRegPruner:
    pruner = GRegPruner(GRegOptions(variant=variant, granularity="filter", sparsity=0.5, pick_after=0.0,
                                    update_reg_interval=1, reg_granularity_prune=0.25, reg_upper_limit=1.0,
                                    **options))
    pruner.attach(model, layers, TrainPlan(1, 20, lambda s: 0.1, (1, 8, 8)))
    pruner.begin_epoch(0)
    assert pruner.units == ["net.1", "net.3"]
    return pruner


def test_greg1_filter_mode_waits_until_every_layer_reaches_the_ratio_limit():
    """net.1 ratio 1.5/1 = 1.5, net.3 ratio 10/1 = 10, limit 2 (their mean 5.75 would pass at once; net.3
    alone would too). Before update 3, net.1's pruned rows drop to 0.1: instant ratio 15, EMA
    0.9·1.5 + 0.1·15 = 2.85 ≥ 2: every layer has reached it, both end at update 3 (step 2)."""
    model, layers = two_layer_mlp([1.0, 1.0, 1.5, 1.5], [1.0, 1.0, 10.0, 10.0])
    pruner = filter_greg(1, model, layers, mag_ratio_limit=2.0)

    def shrink(step):
        if step == 2:
            with torch.no_grad():
                model.net[1].weight[:2] = 0.1

    seen = stepped(pruner, range(4), shrink)
    assert [r["done"] for r in seen[:2]] == [{"net.1": False, "net.3": False}] * 2
    assert seen[2]["done"] == {"net.1": True, "net.3": True} and seen[2]["phase"] == "finetune"
    assert pruner.mag_ratio["net.1"] == pytest.approx(2.85, rel=1e-6)
    assert pruner.mag_ratio["net.3"] == pytest.approx(10.0, rel=1e-6)


def test_greg2_filter_mode_decides_per_layer_and_averages_during_picking():
    """Pick at update 2 (reg 0.25, 0.5 ≥ limit_pick 0.5). net.3: ratio 20 ≥ 10 at its pick: done at
    update 2 while net.1 goes on. net.1: all rows equal while picking (ratio 1, first two rows picked);
    before update 3 its picked rows drop to 0.05: instant ratio 20, but the EMA carries the picking
    phase: 0.9·1 + 0.1·20 = 2.9 < 10. Its penalty then ends it: 0.75, 1.0, 1.25 > 1 at update 5."""
    model, layers = two_layer_mlp([1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 20.0, 20.0])
    pruner = filter_greg(2, model, layers, mag_ratio_limit=10.0, reg_upper_limit_pick=0.5,
                         reg_granularity_pick=0.25, reg_granularity_recover=-0.125)

    def shrink(step):
        if step == 2:
            with torch.no_grad():
                model.net[1].weight[:2] = 0.05

    seen = stepped(pruner, range(6), shrink)
    assert seen[0]["phase"] == "pick" and seen[0]["done"] == {"net.1": False, "net.3": False}
    assert seen[1]["phase"] == "prune" and seen[1]["done"] == {"net.1": False, "net.3": True}
    assert pruner.pruned["net.1"].tolist() == [True, True, False, False]
    assert seen[3]["done"]["net.1"] is False and seen[4]["done"]["net.1"] is True
    assert seen[3]["phase"] == "prune" and seen[4]["phase"] == "finetune"  # stabilize_steps 0: removed after it
    assert pruner.reg["net.1"].tolist() == [1.25, 1.25, -0.125, -0.125]
    assert pruner.reg["net.3"].tolist() == [0.5, 0.5, 0.5, 0.5]  # done at its pick: no more updates
    ema = 2.9
    for _ in range(2):  # updates 4 and 5, instant ratio 20
        ema = 0.9 * ema + 0.1 * 20
    assert pruner.mag_ratio["net.1"] == pytest.approx(ema, rel=1e-6)  # 6.149


def test_group_count_is_the_official_ceil():
    assert 0.55 * 100 == 55.00000000000001  # the float product the count sees
    assert pruned_count(100, 0.55) == 56 and int(pick_pruned(torch.arange(100.0), 0.55).sum()) == 56
    assert pruned_count(10, 0.5) == 5 and pruned_count(3, 0.99) == 2 and pruned_count(1, 0.9) == 0
    assert pruned_count(8, 0.3, blocks=2) == 4  # ceil(0.3·4) = 2 in each block of 4
    assert pick_pruned(torch.tensor([5.0, 1.0, 1.0, 0.0]), 0.5).tolist() == [False, True, False, True]


def official_greg(variant: int, w0: torch.Tensor, batches, steps: int, k: int, stabilize: int):
    """The official GReg loop (weight groups, one layer), written out from the paper's code: penalty updates
    at t % k == 0 of the phase before that step's penalty; GReg-1 picks the lowest |w| at the start;
    GReg-2 grows reg on all until reg_upper_limit_pick, then picks by current |w| and recovers the kept;
    done when reg.max() > reg_upper_limit; removal after step t_done + stabilize; then fine-tuning with a
    new optimizer (no momentum) and the mask applied after every step, to `steps`. Returns the weights
    after each step and the removal step."""
    layer = nn.Linear(w0.shape[1], w0.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(w0)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    n, count = w0.numel(), 6  # min(ceil(0.5·12), 11)
    reg = torch.zeros(n)
    pruned = torch.argsort(w0.abs().flatten())[:count] if variant == 1 else None
    state, t_done, seen, removed_at = "update_reg", None, [], None
    for t in range(steps):
        if removed_at is not None:  # fine-tuning the pruned layer
            x, y = batches[t]
            opt.zero_grad()
            ((layer(x) - y) ** 2).mean().backward()
            opt.step()
            with torch.no_grad():
                layer.weight.view(-1)[pruned] = 0.0
            seen.append(layer.weight.detach().clone())
            continue
        x, y = batches[t]
        out = layer(x)
        if state == "update_reg" and t % k == 0:
            if pruned is None:
                reg += 0.25
                if reg.max() >= 0.5:
                    pruned = torch.argsort(layer.weight.detach().abs().flatten())[:count]
            else:
                reg[pruned] += 0.25
                if variant == 2:
                    kept = torch.ones(n, dtype=torch.bool)
                    kept[pruned] = False
                    reg[kept] = -0.125
            if pruned is not None and reg.max() > 1.0:
                state, t_done = "stabilize", t
        opt.zero_grad()
        ((out - y) ** 2).mean().backward()
        layer.weight.grad += reg.view_as(layer.weight) * layer.weight.detach()
        opt.step()
        if state == "stabilize" and t - t_done == stabilize:
            with torch.no_grad():
                layer.weight.view(-1)[pruned] = 0.0
            removed_at = t
            opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        seen.append(layer.weight.detach().clone())
    return seen, removed_at


@pytest.mark.parametrize("variant", [1, 2])
def test_a_short_run_is_bit_identical_to_the_official_loop(variant):
    """With reset_optimizer (the official fine-tuning's new optimizer), every step's weights equal the
    official loop's bit for bit: the penalty, the removal and the fine-tuning after it."""
    torch.manual_seed(0)
    w0 = torch.randn(3, 4)
    batches = [(torch.randn(8, 4), torch.randn(8, 3)) for _ in range(30)]
    reference, removed_at = official_greg(variant, w0, batches, 30, k=3, stabilize=4)
    # reg: GReg-1 0.25, 0.5, 0.75, 1.0, 1.25 at t = 0, 3, 6, 9, 12; GReg-2 picks at t = 3 (0.5), then 0.75,
    # 1.0, 1.25 at t = 6, 9, 12: both done at t = 12, removed after step 12 + 4
    assert removed_at == 16

    layer = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        layer.weight.copy_(w0)
    pruner = GRegPruner(GRegOptions(variant=variant, sparsity=0.5, pick_after=0.0, update_reg_interval=3,
                                    reg_granularity_prune=0.25, reg_upper_limit=1.0, reg_granularity_pick=0.25,
                                    reg_upper_limit_pick=0.5, reg_granularity_recover=-0.125, stabilize_steps=4,
                                    reset_optimizer=True))
    pruner.attach(nn.Sequential(layer), ["0"], TrainPlan(1, 30, lambda s: 0.1))
    pruner.begin_epoch(0)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    pruner.bind_optimizer(opt)
    for t, want in enumerate(reference):
        x, y = batches[t]
        opt.zero_grad()
        ((layer(x) - y) ** 2).mean().backward()
        pruner.after_backward(t)
        opt.step()
        pruner.after_step(t, 0.1)
        assert torch.equal(layer.weight.detach(), want), f"step {t}"
    assert len(reference) == 30 and pruner.phase == "finetune" and int((layer.weight == 0).sum()) == 6


def test_without_reset_the_optimizer_keeps_its_momentum_through_the_removal():
    """The default (one training run): the momentum of the penalty phase carries into fine-tuning, so the
    first fine-tuning step differs from a fresh optimizer's; with reset_optimizer the state is empty at
    the removal, and a resumed run (phase already 'finetune') does not clear what it loaded."""
    for reset in (False, True):
        layer = nn.Linear(4, 3, bias=False)
        pruner = GRegPruner(GRegOptions(sparsity=0.5, pick_after=0.0, update_reg_interval=1,
                                        reg_granularity_prune=0.6, reg_upper_limit=1.0, reset_optimizer=reset))
        pruner.attach(nn.Sequential(layer), ["0"], TrainPlan(1, 10, lambda s: 0.1))
        opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
        pruner.bind_optimizer(opt)
        pruner.begin_epoch(0)
        for t in range(3):  # reg 0.6, 1.2 > 1.0 at t = 1: removed after step 1
            opt.zero_grad()
            layer(torch.ones(2, 4)).sum().backward()
            pruner.after_backward(t)
            opt.step()
            pruner.after_step(t, 0.1)
            if t == 1:
                assert pruner.phase == "finetune"
                assert (len(opt.state) == 0) == reset
        state = pruner.state_dict()
        opt.step()  # momentum exists again
        pruner.load_state_dict(state)
        assert len(opt.state) == 1


def test_derived_granularities_spread_the_penalty_over_the_updates():
    """10 epochs of 10 steps, penalty from 25% to 75% of training: 50 steps, interval 7 → 7 updates.
    GReg-1 grows to reg_upper_limit in 7 updates (1.4 / 7 = 0.2); GReg-2 picks in the first half and
    prunes in the second: 7 // 2 = 3 updates each (0.6 / 3 = 0.2 while picking, 1.4 / 3 after)."""
    common = dict(pick_after=0.25, reg_by=0.75, update_reg_interval=7, reg_upper_limit=1.4)
    layer = nn.Linear(4, 2)
    one = GRegPruner(GRegOptions(variant=1, **common))
    one.attach(nn.Sequential(layer), ["0"], TrainPlan(10, 10, lambda s: 0.1))
    assert one.gran_prune == pytest.approx(0.2)
    two = GRegPruner(GRegOptions(variant=2, reg_upper_limit_pick=0.6, **common))
    two.attach(nn.Sequential(layer), ["0"], TrainPlan(10, 10, lambda s: 0.1))
    assert two.gran_pick == pytest.approx(0.2) and two.gran_prune == pytest.approx(1.4 / 3)


@pytest.mark.parametrize("target, granularity, ok", [(0.5, "filter", False), (1.0, "filter", False),
                                                     (1.5, "filter", True), (0.0, "weight", True),
                                                     (2.0, "weight", False)])
def test_latency_target_is_off_or_a_factor_above_one_in_filter_mode(target, granularity, ok):
    options = GRegOptions(granularity=granularity, latency_target=target)
    if ok:
        options.check("prune.greg")
    else:
        with pytest.raises(UserError, match="prune.greg.latency_target"):
            options.check("prune.greg")


def test_widths_are_timed_only_when_a_latency_target_is_set():
    """The pipeline always hands the pruner a latency measure; with latency_target = 0 it is never used."""
    calls = []

    def measure(model, cut):
        calls.append(1)
        return 1.0  # nothing ever gets faster: a target above 1 is out of reach

    model, layers = two_layer_mlp([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0])
    plan = TrainPlan(1, 20, lambda s: 0.1, (1, 8, 8), latency_ratio=measure)
    GRegPruner(GRegOptions(granularity="filter")).attach(model, layers, plan)
    assert calls == []
    with pytest.raises(UserError, match="prune.greg.latency_target"):
        GRegPruner(GRegOptions(granularity="filter", latency_target=2.0)).attach(model, layers, plan)
    assert calls


def test_when_the_budget_ends_mid_penalty_the_picked_groups_are_removed_at_the_last_epoch():
    """A penalty far too slow to finish in 2 epochs: the last epoch's end still removes what was picked
    (the lowest |w| row); before that end the weights are untouched."""
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0], [-5.0, 6.0, -7.0, 8.0]]))
    pruner = GRegPruner(GRegOptions(variant=1, sparsity=0.5, pick_after=0.5, update_reg_interval=1,
                                    reg_granularity_prune=1e-6, reg_upper_limit=1.0))
    pruner.attach(nn.Sequential(layer), ["0"], TrainPlan(2, 3, lambda s: 0.1))
    pruner.begin_epoch(0)
    pruner.end_epoch(0)
    pruner.begin_epoch(1)
    stepped(pruner, range(3, 6))
    assert pruner.phase == "prune" and layer.weight.ne(0).all()
    pruner.end_epoch(1)
    assert pruner.phase == "finetune"
    assert layer.weight[0].eq(0).all() and layer.weight[1].ne(0).all()


def test_a_checkpoint_from_before_reg_start_resumes_counting_from_step_0():
    """Checkpoints written before the phase-relative count have no reg_start: they counted updates on
    the global step, which is reg_start = 0."""
    layer = nn.Linear(4, 2)
    pruner = GRegPruner(GRegOptions(variant=1))
    pruner.attach(nn.Sequential(layer), ["0"], TrainPlan(4, 7, lambda s: 0.1))
    state = pruner.state_dict()
    del state["reg_start"]
    pruner.reg_start = 9
    pruner.load_state_dict(state)
    assert pruner.reg_start == 0


def official_greg_filters(variant: int, net0: nn.Sequential, batches, steps: int, k: int, stabilize: int,
                          count: int):
    """The official GReg loop in filter mode on Linear(4, 6) → ReLU → Linear(6, 3), written out from the
    paper's code: one penalty per filter (row) of the first layer, grad += reg·w on its weight; GReg-1 picks
    the lowest-L1 rows at the start, GReg-2 grows reg on all rows to reg_upper_limit_pick, picks by current
    L1 and recovers the kept; done when reg.max() > reg_upper_limit; after step t_done + stabilize a
    smaller network (rows and the next layer's columns gone) is fine-tuned with a new optimizer.
    Returns per step the kept parameters and the removal step."""
    import copy
    net = copy.deepcopy(net0)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    reg = torch.zeros(6)
    scores = lambda: net[0].weight.detach().abs().sum(1)  # noqa: E731
    pruned = torch.argsort(scores())[:count] if variant == 1 else None
    state, t_done, removed_at, seen = "update_reg", None, None, []
    for t in range(steps):
        if state == "update_reg" and t % k == 0:
            if pruned is None:
                reg += 0.25
                if reg.max() >= 0.5:
                    pruned = torch.argsort(scores())[:count]
            else:
                reg[pruned] += 0.25
                if variant == 2:
                    kept = torch.ones(6, dtype=torch.bool)
                    kept[pruned] = False
                    reg[kept] = -0.125
            if pruned is not None and reg.max() > 1.0:
                state, t_done = "stabilize", t
        x, y = batches[t]
        opt.zero_grad()
        ((net(x) - y) ** 2).mean().backward()
        if removed_at is None:
            net[0].weight.grad += reg[:, None] * net[0].weight.detach()
        opt.step()
        if state == "stabilize" and removed_at is None and t - t_done == stabilize:
            keep = torch.tensor([i for i in range(6) if i not in set(pruned.tolist())])
            small = nn.Sequential(nn.Linear(4, len(keep)), nn.ReLU(), nn.Linear(len(keep), 3))
            with torch.no_grad():
                small[0].weight.copy_(net[0].weight[keep])
                small[0].bias.copy_(net[0].bias[keep])
                small[2].weight.copy_(net[2].weight[:, keep])
                small[2].bias.copy_(net[2].bias)
            net, removed_at = small, t
            opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        seen.append({"keep": None if removed_at is None else keep,
                     "params": [p.detach().clone() for p in net.parameters()]})
    return seen, removed_at


@pytest.mark.parametrize("variant", [1, 2])
def test_filter_mode_run_matches_the_official_loop_with_its_smaller_fine_tuned_network(variant):
    """Filter mode with reset_optimizer against the official loop that removes the filters physically and
    fine-tunes the smaller network with a new optimizer: equal bit for bit up to the removal and within
    1e-6 after it (the smaller matmuls add in another order), the removed channels exact zeros."""
    torch.manual_seed(1)
    net0 = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    batches = [(torch.randn(8, 4), torch.randn(8, 3)) for _ in range(30)]
    reference, removed_at = official_greg_filters(variant, net0, batches, 30, k=3, stabilize=4, count=3)
    assert removed_at == 16  # as the weight-mode loop: done at t = 12, removed after step 12 + 4

    import copy
    net = copy.deepcopy(net0)
    pruner = GRegPruner(GRegOptions(variant=variant, granularity="filter", sparsity=0.5, pick_after=0.0,
                                    update_reg_interval=3, reg_granularity_prune=0.25, reg_upper_limit=1.0,
                                    reg_granularity_pick=0.25, reg_upper_limit_pick=0.5,
                                    reg_granularity_recover=-0.125, stabilize_steps=4, reset_optimizer=True))
    pruner.attach(net, ["0", "2"], TrainPlan(1, 30, lambda s: 0.1, input_shape=(4,)))
    assert list(pruner.groups) and len(pruner.units) == 1  # the logits stay whole: one channel group
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    pruner.bind_optimizer(opt)
    pruner.begin_epoch(0)
    for t, want in enumerate(reference):
        x, y = batches[t]
        opt.zero_grad()
        ((net(x) - y) ** 2).mean().backward()
        pruner.after_backward(t)
        opt.step()
        pruner.after_step(t, 0.1)
        got = [p.detach() for p in net.parameters()]
        if want["keep"] is None:
            assert all(torch.equal(g, w) for g, w in zip(got, want["params"])), f"step {t}"
            continue
        keep = want["keep"]
        dropped = torch.tensor([i for i in range(6) if i not in set(keep.tolist())])
        assert not got[0][dropped].any() and not got[1][dropped].any(), f"step {t}"
        for g, w in zip([got[0][keep], got[1][keep], got[2][:, keep], got[3]], want["params"]):
            assert torch.allclose(g, w, atol=1e-6, rtol=0), f"step {t}: {(g - w).abs().max()}"
    assert pruner.phase == "finetune"
