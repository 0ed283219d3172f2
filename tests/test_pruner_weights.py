"""Every pruner, trained by the real training loop on real digits: after every optimizer step the
weights its rule prunes are exact zeros, and the rule prunes what it says. Checked on the weights,
never on the pruner's own counters."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from compress.config.prune import PruneConfig
from compress.pruners.filters import FilterOptions
from compress.pruners.gmp import GMPOptions
from compress.pruners.greg import GRegOptions
from compress.pruners.l1 import L1Options
from compress.pruners.lats import LATSOptions
from compress.pruners.magnitude import MagnitudeOptions
from compress.pruners.str_reparam import STROptions
from compress.config.train import TrainConfig
from compress.models import LeNet5
from compress.pruners import MaskPruner, TrainPlan, build_pruner
from compress.pruners.lats import LATSPruner
from compress.pruners.str_reparam import STRPruner
from compress.selection import LayerRule, select_layers
from compress.sparsity import global_sparsity
from compress.train import train

EPOCHS = 6
# method -> (prune config, the sparsity of the selected weights (or of the channels, for channel
# methods) the run must end with)
METHODS = {
    "magnitude": (PruneConfig(method="magnitude", options={"magnitude": MagnitudeOptions(0.8, "layer", 0.25)}), 0.8),
    "magnitude-global": (PruneConfig(method="magnitude", options={"magnitude": MagnitudeOptions(0.8, "global", 0.25)}), 0.8),
    "l1": (PruneConfig(method="l1", options={"l1": L1Options(0.7, "weight", 0.25)}), 0.7),
    "gmp": (PruneConfig(method="gmp", options={"gmp": GMPOptions(0.8, "layer", 0.1, 0.6, 5)}), 0.8),
    "lats": (PruneConfig(method="lats", options={"lats": LATSOptions(target_sparsity=0.8)}), 0.8),
    "str": (PruneConfig(method="str", options={"str": STROptions(target_sparsity=0.8)}), 0.8),
    "greg-1": (PruneConfig(method="greg", options={"greg": GRegOptions(1, "weight", 0.7, 0.2, 0.6)}), 0.7),
    "greg-2": (PruneConfig(method="greg", options={"greg": GRegOptions(2, "weight", 0.7, 0.2, 0.6)}), 0.7),
    "greg-filter": (PruneConfig(method="greg", options={"greg": GRegOptions(1, "filter", 0.5, 0.2, 0.6)}), 0.5),
    "filter": (PruneConfig(method="filter", options={"filter": FilterOptions(ratio=0.5, prune_after=0.25)}), 0.5),
    "l1-filter": (PruneConfig(method="l1", options={"l1": L1Options(0.5, "filter", 0.25)}), 0.5),
}


def rule_pruned(pruner, model: nn.Module) -> dict[str, torch.Tensor]:
    """Per layer, the boolean positions of the weight that the pruner's rule prunes right now."""
    out = {}
    if isinstance(pruner, LATSPruner):
        for n in pruner.layers:
            theta = model.get_submodule(n).parametrizations.weight.original
            out[n] = theta.abs() <= pruner.threshold
    elif isinstance(pruner, STRPruner):
        for n in pruner.layers:
            m = model.get_submodule(n)
            out[n] = m.parametrizations.weight.original.abs() <= m.parametrizations.weight[0].tau()
    for n, mask in getattr(pruner, "masks", {}).items():
        out[n] = ~mask.bool()
    for key, idx in getattr(pruner, "dropped", {}).items():
        for p in pruner.groups[key].producers:
            w = model.get_submodule(p).weight
            rows = torch.zeros_like(w, dtype=torch.bool)
            rows[idx] = True
            out[p] = out.get(p, torch.zeros_like(rows)) | rows
    return out


def watch(pruner, model: nn.Module) -> list[dict]:
    """Record, around every `after_step` the training loop calls, how many weights the rule prunes,
    how many of them the optimizer step had made non-zero, and whether all are zero afterwards."""
    seen: list[dict] = []
    after_step = pruner.after_step

    def observed(step: int, lr: float) -> None:
        before = {n: model.get_submodule(n).weight.detach().clone() for n in pruner.layers}
        after_step(step, lr)
        pruned = rule_pruned(pruner, model)
        seen.append({
            "pruned": sum(int(p.sum()) for p in pruned.values()),
            "revived": sum(int((before[n][p] != 0).sum()) for n, p in pruned.items() if n in before),
            "zero": all(bool((model.get_submodule(n).weight[p] == 0).all()) for n, p in pruned.items()),
            "only": all(bool((model.get_submodule(n).weight[~p] != 0).all()) for n, p in pruned.items())})

    begin_epoch = pruner.begin_epoch

    def observed_epoch(epoch: int) -> None:
        before = {n: model.get_submodule(n).weight.detach().clone() for n in pruner.layers}
        begin_epoch(epoch)
        seen.append({"epoch": epoch, "weights": before, "picked": {k: v.clone() for k, v in
                                                                    getattr(pruner, "pruned", {}).items()}})

    pruner.after_step, pruner.begin_epoch = observed, observed_epoch
    return seen


@pytest.fixture(scope="module")
def runs(digits):
    """Each method trained for EPOCHS on digits (LeNet-5), with what `watch` saw at every step."""
    out = {}
    for name, (cfg, _) in METHODS.items():
        torch.manual_seed(0)
        model = LeNet5(digits.input_shape, digits.num_classes)
        layers = select_layers(model, LayerRule())
        pruner = build_pruner(cfg)
        seen = watch(pruner, model)
        train(model, pruner, digits, TrainConfig(epochs=EPOCHS, lr=0.05), layers, progress=False)
        out[name] = (model, layers, pruner, seen)
    return out


@pytest.mark.parametrize("method", list(METHODS))
def test_the_pruned_weights_are_zero_after_every_optimizer_step(runs, method):
    model, layers, pruner, seen = runs[method]
    seen = [s for s in seen if "pruned" in s]
    started = next(i for i, s in enumerate(seen) if s["pruned"])  # pruning began at some step ...
    assert started < len(seen) - 10  # ... with steps to spare
    assert all(s["zero"] for s in seen[started:]), [i for i, s in enumerate(seen) if not s["zero"]][:5]
    assert all(s["only"] for s in seen[started:])  # and nothing else is zero: the rule, not more
    if isinstance(pruner, MaskPruner) and pruner.masks:
        # the optimizer's step moves masked weights off zero (momentum, weight decay): re-applying matters
        assert any(s["revived"] for s in seen[started + 1:])


@pytest.mark.parametrize("method", list(METHODS))
def test_the_run_ends_at_the_requested_sparsity_in_the_weights(runs, method):
    model, layers, pruner, _ = runs[method]
    target = METHODS[method][1]
    frozen = pruner.freeze()
    if getattr(pruner, "groups", None):  # channel methods: whole output channels are zero
        rows = [frozen.get_submodule(p).weight.flatten(1) for g in pruner.groups.values() for p in g.producers[:1]]
        dead = sum(int((r == 0).all(1).sum()) for r in rows) / sum(len(r) for r in rows)
        assert dead == pytest.approx(target, abs=0.1)
    else:
        tolerance = 0.06 if method in ("lats", "str") else 1e-3  # the adaptive ones steer to it
        assert global_sparsity(frozen, layers) == pytest.approx(target, abs=tolerance)


def smallest_first(before: torch.Tensor, zeroed: torch.Tensor) -> bool:
    """Whether every zeroed entry had a magnitude no larger than every kept entry's."""
    return bool(before.abs()[zeroed].max() <= before.abs()[~zeroed].min())


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_magnitude_zeroes_exactly_the_smallest_weights(digits, scope):
    torch.manual_seed(0)
    model = LeNet5(digits.input_shape, digits.num_classes)
    layers = select_layers(model, LayerRule())
    train(model, build_pruner(PruneConfig(method="dense")), digits, TrainConfig(epochs=1), layers, progress=False)
    before = {n: model.get_submodule(n).weight.detach().clone() for n in layers}
    pruner = build_pruner(PruneConfig(method="magnitude", options={"magnitude": MagnitudeOptions(0.6, scope, 0.5)}))
    pruner.attach(model, layers, TrainPlan(4, 1, lambda s: 0.1))
    pruner.begin_epoch(2)
    zeroed = {n: model.get_submodule(n).weight == 0 for n in layers}
    if scope == "layer":
        for n in layers:
            assert int(zeroed[n].sum()) == round(0.6 * zeroed[n].numel()) and smallest_first(before[n], zeroed[n])
    else:
        flat_before = torch.cat([before[n].flatten() for n in layers])
        flat_zeroed = torch.cat([zeroed[n].flatten() for n in layers])
        assert int(flat_zeroed.sum()) == round(0.6 * flat_zeroed.numel()) and smallest_first(flat_before, flat_zeroed)
        assert len({round(float(z.float().mean()), 2) for z in zeroed.values()}) > 1  # one cut, not per layer


@pytest.mark.parametrize("method", ["l1", "greg-1"])
def test_weight_groups_picked_are_the_smallest_and_end_as_zeros(runs, method):
    model, layers, pruner, seen = runs[method]
    ratio = METHODS[method][0].l1.sparsity if method == "l1" else METHODS[method][0].greg.sparsity
    frozen = pruner.freeze()
    if method == "l1":  # one-shot at begin_epoch: what became zero then was the smallest
        at = next(s for s in seen if "epoch" in s and s["epoch"] == pruner.options.prune_after * EPOCHS // 1)
        picked = {n: ~pruner.masks[n] for n in layers}
    else:  # GReg-1 picks by |w| when regularisation starts and pushes those to zero
        at = next(s for s in seen if "epoch" in s and s["picked"])
        picked = at["picked"]
    for n in layers:
        assert smallest_first(at["weights"][n], picked[n])
        assert int(picked[n].sum()) == min(-(-ratio * picked[n].numel() // 1), picked[n].numel() - 1)
        assert torch.equal(frozen.get_submodule(n).weight == 0, picked[n])


@pytest.mark.parametrize("method", ["greg-filter", "filter"])
def test_channel_methods_zero_the_lowest_norm_channels_they_picked(runs, method):
    model, layers, pruner, seen = runs[method]
    frozen = pruner.freeze()
    at = next(s for s in seen if "epoch" in s and (s["picked"] if method == "greg-filter" else
                                                    s["epoch"] == int(pruner.options.prune_after * EPOCHS)))
    assert sum(len(d) for d in pruner.dropped.values()) > 0
    for key, group in pruner.groups.items():
        dropped = pruner.dropped[key]
        if method == "filter":  # the widths planned at attach (ratio, rounded to whole blocks)
            assert len(dropped) == group.size - pruner.final_keep[key]
        norms = sum(at["weights"][p].flatten(1).abs().sum(1) for p in group.producers if p in at["weights"])
        gone = torch.zeros(group.size, dtype=torch.bool)
        gone[dropped] = True
        if method == "filter" and len(dropped):  # L1 of the producing filters when the cut is made
            assert smallest_first(norms, gone)
        for p in group.producers:
            rows = frozen.get_submodule(p).weight.flatten(1)
            assert torch.equal((rows == 0).all(1), gone)
