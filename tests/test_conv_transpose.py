"""Transposed convolutions (weight [in, out, k…]: output channels in dimension 1) are cut exactly as
producers and as consumers, in the harvest, the importance scores and GReg's penalty; a grouped one has
its inputs cut evenly per block and keeps its outputs whole; a depthwise one passes channels through."""
import copy

import pytest
import torch
from torch import nn

from compress.pruners import TrainPlan
from compress.pruners.greg import GRegOptions, GRegPruner
from compress.structured import channel_groups, channel_importance
from compress.structured.structure import harvest
from test_channel_rules import _randomise_norms, blockers, cut_vs_masked


class Decoder(nn.Module):
    """conv → BN → ReLU → ConvTranspose (stride 2) → BN → ReLU → ConvTranspose (stride 2, output padding)
    → 1x1 conv: the first transposed conv consumes one group and produces the next."""

    def __init__(self, groups: int = 1):
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.up1, self.n2 = nn.ConvTranspose2d(8, 6, 2, stride=2, groups=groups), nn.BatchNorm2d(6)
        self.up2 = nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        x = torch.relu(self.n1(self.c1(x)))
        x = torch.relu(self.n2(self.up1(x)))
        return self.head(self.up2(x))


def test_transposed_convs_are_cut_exactly_as_producers_and_consumers():
    torch.manual_seed(0)
    model, x = _randomise_norms(Decoder()), torch.randn(2, 3, 5, 5)
    cut, diff, groups = cut_vs_masked(model, x, ratio=0.5)
    assert cut == 3 and diff < 1e-5
    by_producer = {g.producers[0]: g for g in groups if g.producers}
    assert ("up1", 1) in by_producer["c1"].consumers and ("up2", 1) in by_producer["up1"].consumers


def test_the_cut_changes_the_right_weight_dimensions():
    from compress.structured import remove_channels

    model = Decoder().eval()
    groups = {g.producers[0]: g for g in channel_groups(model, torch.zeros(2, 3, 5, 5)) if g.producers}
    remove_channels(model, groups["c1"], torch.tensor([0, 2, 5]))
    remove_channels(model, groups["up1"], torch.tensor([1, 4]))
    assert tuple(model.up1.weight.shape) == (3, 2, 2, 2) and model.up1.bias.shape == (2,)
    assert (model.up1.in_channels, model.up1.out_channels) == (3, 2)
    assert tuple(model.up2.weight.shape) == (2, 4, 3, 3) and model.up2.in_channels == 2
    assert model(torch.zeros(1, 3, 5, 5)).shape == (1, 2, 20, 20)


def test_importance_reads_the_output_channels_of_a_transposed_weight():
    model = Decoder()
    with torch.no_grad():
        model.up1.weight.zero_()
        model.up1.weight[:, 3] = 1.0  # output channel 3: 8 inputs x 2 x 2 ones
    group = next(g for g in channel_groups(model, torch.zeros(2, 3, 5, 5)) if g.producers == ["up1"])
    assert channel_importance(model, group).tolist() == [0, 0, 0, 32, 0, 0]


def test_harvest_removes_dead_output_channels_of_a_transposed_conv():
    torch.manual_seed(0)
    model = _randomise_norms(Decoder()).eval()
    with torch.no_grad():  # channels 0 and 4 of up1 are dead: no weights, no bias, BN's γ = β = 0
        model.up1.weight[:, [0, 4]] = 0
        model.up1.bias[[0, 4]] = 0
        model.n2.weight[[0, 4]] = 0
        model.n2.bias[[0, 4]] = 0
    x = torch.randn(2, 3, 5, 5)
    want = model(x)
    record = harvest(model, (3, 5, 5))
    assert record["keep"]["up1"] == [1, 2, 3, 5] and model.up1.out_channels == 4 and model.up2.in_channels == 4
    assert torch.allclose(model(x), want, atol=1e-6)


def test_a_constant_channel_read_by_a_transposed_conv_is_not_folded():
    """A dead conv channel followed by BN with β ≠ 0 carries a constant; a transposed conv spreads a
    constant unevenly at its borders (stride 2, padding 1), so the channel must stay."""
    torch.manual_seed(0)
    model = Decoder().eval()
    with torch.no_grad():
        model.up1.weight[:, 2] = 0
        model.up1.bias[2] = 0
        model.n2.bias[2] = 0.5  # relu(0.5): a constant 0.5 into up2
        model.c1.weight[5] = 0  # and a dead channel elsewhere, which goes
        model.c1.bias[5] = 0
        model.n1.bias[5] = 0
    x = torch.randn(2, 3, 5, 5)
    want = model(x)
    record = harvest(model, (3, 5, 5))
    assert "skipped" not in record and record["keep"] == {"c1": [0, 1, 2, 3, 4, 6, 7]}
    assert model.up1.out_channels == 6 and torch.allclose(model(x), want, atol=1e-6)


def test_a_grouped_transposed_conv_has_its_inputs_cut_evenly_and_its_outputs_kept():
    torch.manual_seed(0)
    model, x = _randomise_norms(Decoder(groups=2)), torch.randn(2, 3, 5, 5)
    fresh = {g.producers[0]: g for g in channel_groups(model, x) if g.producers}
    assert fresh["c1"].blocks == 2 and ("up1", 1) in fresh["c1"].consumers
    assert any("output channels of a grouped transposed conv (2 groups" in b
               for b in next(g for g in channel_groups(model, x) if g.size == 6 and not g.producers).blockers)
    cut, diff, groups = cut_vs_masked(model, x, ratio=0.5)
    assert cut == 2 and diff < 1e-5  # c1's output (two per block of up1's input) and up2's output
    smaller = copy.deepcopy(model).eval()
    from compress.structured import remove_channels
    group = next(g for g in channel_groups(smaller, x) if g.producers == ["c1"])
    remove_channels(smaller, group, torch.tensor([1, 2, 4, 7]))
    assert tuple(smaller.up1.weight.shape) == (4, 3, 2, 2) and smaller.up1.in_channels == 4
    assert torch.equal(smaller.up1.weight, model.up1.weight[[1, 2, 4, 7]])
    with pytest.raises(ValueError, match="same number of channels kept in each of its 2 blocks"):
        remove_channels(copy.deepcopy(model), group, torch.tensor([0, 1, 2, 4]))


class DepthwiseUp(nn.Module):
    """conv → BN → depthwise ConvTranspose (a learnt upsampling per channel) → BN → ReLU → 1x1 conv."""

    def __init__(self):
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.up, self.n2 = nn.ConvTranspose2d(8, 8, 4, stride=2, padding=1, groups=8), nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(torch.relu(self.n2(self.up(self.n1(self.c1(x))))))


def test_a_depthwise_transposed_conv_passes_its_channels_through():
    torch.manual_seed(0)
    model, x = _randomise_norms(DepthwiseUp()), torch.randn(2, 3, 5, 5)
    group = next(g for g in channel_groups(model, x) if g.producers == ["c1"])
    assert "up" in group.passthrough and group.consumers == [("head", 1)]
    cut, diff, _ = cut_vs_masked(model, x, ratio=0.5)
    assert cut == 1 and diff < 1e-5
    from compress.structured import remove_channels
    smaller = copy.deepcopy(model).eval()
    remove_channels(smaller, next(g for g in channel_groups(smaller, x) if g.producers == ["c1"]), torch.tensor([0, 3, 6]))
    up = smaller.up
    assert (up.in_channels, up.out_channels, up.groups) == (3, 3, 3) and tuple(up.weight.shape) == (3, 1, 4, 4)
    assert smaller(x).shape == (2, 2, 10, 10)


def test_greg_penalises_the_output_channels_of_a_transposed_weight():
    """Filter-mode GReg adds reg · w to the gradient of the picked channels' weights: for up1 that is
    the columns weight[:, c], not the rows."""
    torch.manual_seed(0)
    model = Decoder()
    pruner = GRegPruner(GRegOptions(granularity="filter", sparsity=0.5, pick_after=0.0, update_reg_interval=1,
                                    reg_granularity_prune=0.5))
    pruner.attach(model, ["c1", "up1", "up2"], TrainPlan(1, 10, lambda s: 0.1, (3, 5, 5)))
    pruner.begin_epoch(0)
    unit = next(u for u in pruner.units if "up1" in pruner.groups[u].producers)
    picked = torch.nonzero(pruner.pruned[unit]).flatten()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    pruner.after_backward(0)
    grad, w = model.up1.weight.grad, model.up1.weight.detach()
    others = [c for c in range(6) if c not in picked.tolist()]
    assert torch.allclose(grad[:, picked], 0.5 * w[:, picked]) and grad[:, others].eq(0).all()
