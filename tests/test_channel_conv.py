"""A Conv1d sliding along the channels (ECA's gate): the channels kept must be one contiguous run, so
that a kept channel's neighbours past the run are zeros in both the masked and the cut model. Cut
exactly with random runs, refused with any other keep set, picked from the two ends by the pruners and
filled into one run by the harvest."""
import copy

import pytest
import torch
from torch import nn

from compress.ranking import lowest
from compress.structured import channel_groups, harvest, remove_channels
from compress.structured.harvest import _fill_run

from test_channel_rules import _randomise_norms, cut_vs_masked


class Eca(nn.Module):
    """Efficient channel attention, written out: x * sigmoid(conv1d over the channels of mean(x))."""
    def __init__(self, k=3, **conv):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, k, bias=False, **{"padding": (k - 1) // 2, **conv})

    def forward(self, x):
        y = self.conv(x.mean((2, 3)).view(x.shape[0], 1, -1))
        return x * torch.sigmoid(y).view(x.shape[0], -1, 1, 1).expand_as(x)


class EcaNet(nn.Module):
    """conv → BN → ReLU → ECA → conv (+ the ECA input: a residual) → head."""
    def __init__(self, **eca):
        super().__init__()
        self.a, self.bn = nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12)
        self.eca, self.b, self.head = Eca(**eca), nn.Conv2d(12, 12, 3, padding=1), nn.Linear(12, 4)

    def forward(self, x):
        y = torch.relu(self.bn(self.a(x)))
        y = self.b(self.eca(y)) + y
        return self.head(y.mean((2, 3)))


X = torch.randn(2, 3, 8, 8)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("eca", [{}, {"k": 5}, {"k": 3, "dilation": 2, "padding": 2}, {"k": 4, "padding": "same"}])
def test_a_conv_along_the_channels_is_cut_exactly_to_one_run(eca, seed):
    torch.manual_seed(seed)
    model = _randomise_norms(EcaNet(**eca))
    group = next(g for g in channel_groups(model, X) if set(g.producers) == {"a", "b"})
    assert group.contiguous and group.prunable
    cut, diff, _ = cut_vs_masked(model, X, ratio=0.4, seed=seed)
    assert cut == 1 and diff < 1e-5


def test_a_keep_set_that_is_not_one_run_is_refused_and_would_be_wrong():
    torch.manual_seed(0)
    model = _randomise_norms(EcaNet()).eval()
    group = next(g for g in channel_groups(model, X) if set(g.producers) == {"a", "b"})
    with pytest.raises(ValueError, match="one run"):
        remove_channels(copy.deepcopy(model), group, torch.tensor([0, 1, 2, 5, 6, 7, 8, 9]))
    # the refusal is not caution: the same cut with the check off differs from the masked model
    from compress.structured.remove import _cut, zero_channels
    masked, smaller = copy.deepcopy(model), copy.deepcopy(model)
    zero_channels(masked, group, torch.tensor([3, 4, 10, 11]))
    _cut(smaller, group, torch.tensor([0, 1, 2, 5, 6, 7, 8, 9]))
    with torch.no_grad():
        want, got = masked(X), smaller(X)
    assert (got - want).abs().max() / want.abs().max() > 1e-3


@pytest.mark.parametrize("conv, why", [({"padding_mode": "circular"}, "zero-padded"), ({"stride": 2}, "stride-1"),
                                       ({"padding": 0}, "keeping the length")])
def test_other_convs_along_the_channels_keep_them_whole_and_say_why(conv, why):
    torch.manual_seed(0)
    model = EcaNet(**conv) if "stride" not in conv else EcaNet(k=3, stride=2)
    if "stride" in conv:  # a strided gate no longer fits the channels: use it on half of them
        model.eca.forward = lambda x: x * torch.sigmoid(model.eca.conv(x.mean((2, 3)).view(x.shape[0], 1, -1))).repeat(
            1, 1, 2).view(x.shape[0], -1, 1, 1)
    if conv.get("padding") == 0:
        model.eca.forward = lambda x: x * nn.functional.pad(torch.sigmoid(model.eca.conv(
            x.mean((2, 3)).view(x.shape[0], 1, -1))), (1, 1)).view(x.shape[0], -1, 1, 1)
    groups = channel_groups(model.eval(), X)
    group = next(g for g in groups if "a" in g.producers)
    assert not group.prunable and any(why in b for b in group.blockers)
    cut, diff, _ = cut_vs_masked(model, X)
    assert diff < 1e-5


def test_a_conv_along_the_channels_read_by_a_layer_marks_the_group_shifted():
    """Its output at a removed channel mixes kept neighbours: only a product with the channels' own
    zeros (ECA's x * gate) clears it; read by a Linear it is no zero, so a plain cut is refused."""
    class Read(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.conv, self.head = nn.Conv2d(3, 8, 1), nn.Conv1d(1, 1, 3, padding=1), nn.Linear(8, 2)

        def forward(self, x):
            y = self.a(x).mean((2, 3))
            return self.head(self.conv(y.view(y.shape[0], 1, -1)).view(y.shape[0], -1))

    group = next(g for g in channel_groups(Read().eval(), X) if g.producers == ["a"])
    assert group.shifts and group.contiguous
    with pytest.raises(ValueError, match="constant"):
        remove_channels(Read().eval(), group, torch.arange(2, 6))


def test_pruners_drop_from_the_two_ends_the_cheapest_way():
    scores = torch.tensor([5.0, 0.1, 0.2, 9.0, 9.0, 0.3, 0.1, 0.1])
    assert lowest(scores, 3).tolist() == [1, 6, 7]
    assert lowest(scores, 3, contiguous=True).tolist() == [5, 6, 7]
    assert lowest(scores, 4, contiguous=True).tolist() == [0, 1, 6, 7]  # 5.3: less than 5.5 ([0, 5, 6, 7]), 5.4
    assert lowest(scores, 0, contiguous=True).tolist() == []


def test_the_harvest_fills_dead_channels_into_one_run():
    mask = torch.tensor([False, True, False, True, True, False, False])
    assert _fill_run(mask).tolist() == [False, True, True, True, True, False, False]
    assert _fill_run(mask, round_to=3).tolist() == [False, True, True, True, True, True, True]
    torch.manual_seed(0)
    model = _randomise_norms(EcaNet()).eval()
    with torch.no_grad():  # dead channels 0, 1 (an end), 5 (inside the run) and 11 (the other end)
        for c in (0, 1, 5, 11):
            model.a.weight[c], model.a.bias[c], model.bn.weight[c], model.bn.bias[c] = 0, 0, 0, 0
            model.b.weight[c], model.b.bias[c] = 0, 0
        want = model(X)
        record = harvest(model, (3, 8, 8))
        assert record["keep"]["b"] == list(range(2, 11))  # 5 stays: inside the run
        assert torch.allclose(model(X), want, atol=1e-5)


@pytest.mark.parametrize("name", ["ecaresnet26t"])
def test_timm_eca_models_cut_their_residual_streams_exactly(name):
    """ecaresnet26t lost 37% of its MACs before (its streams kept whole by ECA), as for Torch-Pruning."""
    import timm  # the [test] extra installs it

    from compress.flops import count_macs
    from compress.structured.budget import cut_copy, keep_counts

    torch.manual_seed(0)
    model = _randomise_norms(timm.create_model(name, num_classes=10)).eval()
    x = torch.randn(2, 3, 64, 64)
    cut, diff, _ = cut_vs_masked(model, x, ratio=0.3)
    assert diff < 1e-4
    prunable = [g for g in channel_groups(model, x) if g.prunable]
    assert sum(g.contiguous for g in prunable) == 4  # a stream per stage
    smaller = cut_copy(model, prunable, keep_counts(prunable, 0.3))
    assert count_macs(smaller, (3, 64, 64))["dense"] / count_macs(model, (3, 64, 64))["dense"] < 0.55


@pytest.mark.parametrize("method", ["filter", "greg"])
def test_the_filter_pruner_and_greg_pick_one_run_of_an_eca_models_channels(method):
    from compress.pruners import TrainPlan
    from compress.pruners.filters import FilterOptions, FilterPruner
    from compress.pruners.greg import GRegOptions, GRegPruner
    from compress.selection import LayerRule, select_layers

    torch.manual_seed(0)
    model = _randomise_norms(EcaNet())
    plan = TrainPlan(1, 4, lambda s: 0.1, (3, 8, 8))
    if method == "filter":
        pruner = FilterPruner(FilterOptions(ratio=0.5, prune_after=0.0, round_to=1))
        pruner.attach(model, select_layers(model, LayerRule()), plan)
        pruner.begin_epoch(0)
        dropped = next(v for k, v in pruner.dropped.items() if set(pruner.groups[k].producers) == {"a", "b"})
    else:
        pruner = GRegPruner(GRegOptions(granularity="filter", sparsity=0.5, pick_after=0.0, update_reg_interval=1,
                                        reg_granularity_prune=0.5))
        pruner.attach(model, select_layers(model, LayerRule()), plan)
        pruner.begin_epoch(0)
        unit = next(k for k, g in pruner.groups.items() if set(g.producers) == {"a", "b"})
        dropped = torch.nonzero(pruner.pruned[unit]).flatten()
    kept = sorted(set(range(12)) - set(dropped.tolist()))
    assert len(kept) == 6 and kept[-1] - kept[0] == 5  # one run


# --- a hostile pass: each model below was cut wrongly before the fixes --------------------------

class Gate(nn.Module):
    """conv a → ReLU → y * sigmoid(gate over the channels of mean(y)) → conv b; `mode` picks the gate."""
    def __init__(self, mode):
        super().__init__()
        self.mode, self.a, self.b = mode, nn.Conv2d(3, 12, 3, padding=1), nn.Conv2d(12, 4, 1)
        self.c1, self.c2 = nn.Conv1d(1, 1, 3, padding=1, bias=False), nn.Conv1d(1, 1, 3, padding=1, bias=False)
        if mode == "timm_mlp":
            from timm.layers import EcaModule  # the [test] extra installs timm
            self.eca = EcaModule(12, kernel_size=3, use_mlp=True)

    def forward(self, x):
        y = torch.relu(self.a(x))
        if self.mode == "timm_mlp":
            return self.b(self.eca(y))
        v = y.mean((2, 3)).view(y.shape[0], 1, -1)
        v = {"stacked": lambda: self.c2(self.c1(v)), "sigmoid_first": lambda: self.c1(torch.sigmoid(v)),
             "plus_one": lambda: self.c1(v + 1)}[self.mode]()
        return self.b(y * torch.sigmoid(v).view(y.shape[0], -1, 1, 1))


@pytest.mark.parametrize("mode", ["timm_mlp", "stacked", "sigmoid_first", "plus_one"])
def test_a_conv_along_channels_that_are_not_zero_keeps_them_whole(mode):
    """A bias, a second conv along the channels, or an f(0) != 0 before the conv: removed channels
    are not zero where it reads them, so the masked model mixes them into kept ones (0.5-3% off)."""
    torch.manual_seed(0)
    model = Gate(mode).eval()
    group = next(g for g in channel_groups(model, X) if g.producers == ["a"])
    assert not group.prunable and any("along the channels" in b for b in group.blockers)
    cut, diff, _ = cut_vs_masked(model, X)
    assert diff < 1e-5


def test_the_harvest_keeps_a_constant_channel_a_conv_along_the_channels_reads():
    """A dead filter after BatchNorm with β = 1: a constant 1 that the gate mixes into its neighbours,
    so it cannot be folded into the next (1x1) conv's bias (harvest_channels was 2.6% off)."""
    from compress.structured import harvest_channels

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.bn, self.eca, self.b = nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12), Eca(), nn.Conv2d(12, 4, 1)

        def forward(self, x):
            return self.b(self.eca(torch.relu(self.bn(self.a(x))))).mean((2, 3))

    torch.manual_seed(0)
    model = _randomise_norms(Net()).eval()
    with torch.no_grad():
        model.a.weight[10:], model.a.bias[10:], model.bn.bias[10:] = 0, 0, 1.0  # constant, not zero
        model.a.weight[0], model.a.bias[0], model.bn.bias[0], model.bn.weight[0] = 0, 0, 0, 0  # zero: goes
        want = model(X)
        result = harvest_channels(model, channel_groups(model, X), (3, 8, 8))
        assert result.keep["a"] == list(range(1, 12)) and torch.allclose(model(X), want, atol=1e-5)


def test_a_conv_along_channels_a_grouped_conv_reads_in_blocks_keeps_them_whole():
    class Grouped(EcaNet):
        def __init__(self):
            super().__init__()
            self.b = nn.Conv2d(12, 12, 3, padding=1, groups=4)

    group = next(g for g in channel_groups(Grouped().eval(), X) if "a" in g.producers)
    assert not group.prunable and any("equal blocks" in b for b in group.blockers)


def test_the_harvest_rounds_a_run_from_its_own_ends():
    mask = torch.tensor([False, False, False, True, True, False, True, True, True, True, True, False])
    assert _fill_run(mask, round_to=4).nonzero().flatten().tolist() == list(range(3, 11))


def test_a_structure_record_keeping_no_run_is_refused_naming_the_group():
    from compress.structured.structure import apply_structure
    with pytest.raises(ValueError, match=r"keep\.b: .*one run"):
        apply_structure(EcaNet().eval(), {"keep": {"b": [0, 1, 2, 5, 6, 7]}}, (3, 8, 8))
