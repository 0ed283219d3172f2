"""Tracing the Python real models are written in: branches on shapes, modules fx cannot follow,
same padding and upsampling, and the harvest's own check that a cut changed nothing.

Each cut is compared with the masked model (tests/test_channel_rules.py's helper); a rule that lies
about a user's module must make the harvest refuse the cut, never ship a different model."""
import copy

import pytest
import torch
from torch import nn

from compress.structured import channel_groups, remove_channels
from compress.structured.rules import elementwise_rule
from compress.structured.structure import harvest

from test_channel_rules import blockers, cut_vs_masked, registered


class ShapeBranch(nn.Module):
    """timm's ConvMlp: pool only when the input is smaller than the layer expects (a branch on a shape)."""
    def __init__(self, size=6):
        super().__init__()
        self.size = size
        self.c1, self.c2, self.head = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 12, 3), nn.Linear(12, 4)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        if x.shape[-1] > self.size:
            x = nn.functional.adaptive_avg_pool2d(x, self.size)
        return self.head(torch.relu(self.c2(x)).mean((2, 3)))


class ValueBranch(nn.Module):
    """Control flow on tensor values, inside a submodule: fx cannot follow it."""
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x


class OpaqueInside(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.odd, self.c2 = nn.Conv2d(3, 16, 3, padding=1), ValueBranch(), nn.Conv2d(16, 16, 3, padding=1)
        self.c3, self.head = nn.Conv2d(16, 8, 1), nn.Linear(8, 3)

    def forward(self, x):
        x = self.odd(torch.relu(self.c1(x)))
        x = torch.relu(self.c3(torch.relu(self.c2(x))))
        return self.head(x.mean((2, 3)))


class SamePadUpsample(nn.Module):
    """timm's Conv2dSame (padding computed from the input size) and an upsampling between convs."""
    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 16, 3, stride=2), nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 6, 1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear")

    def forward(self, x):
        ih = x.shape[-1]
        pad = max((-(-ih // 2) - 1) * 2 + 3 - ih, 0)
        x = nn.functional.pad(x, [pad // 2, pad - pad // 2, pad // 2, pad - pad // 2])
        x = torch.relu(self.c1(x))
        x = nn.functional.interpolate(torch.relu(self.c2(x)), scale_factor=0.5)
        return self.c3(self.up(x))


class ChannelFlip(nn.Module):
    """Reverses the channel order: NOT element-wise, whatever a user registers it as."""
    def forward(self, x):
        return x.flip(1)


class LyingRule(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.flip, self.c2 = nn.Conv2d(3, 8, 3, padding=1), ChannelFlip(), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c2(self.flip(torch.relu(self.c1(x))))


@torch.no_grad()
def _dead(layer: nn.Module, n: int) -> None:
    """The first `n` output channels of `layer` carry zeros (weights and bias), as pruning leaves them."""
    layer.weight[:n] = 0
    layer.bias[:n] = 0


def test_a_branch_on_a_shape_takes_the_examples_way_and_cuts_exactly():
    torch.manual_seed(0)
    for size in (16, 4):  # the pooling branch taken, and not taken
        cut, diff, groups = cut_vs_masked(ShapeBranch(), torch.randn(2, 3, size, size))
        assert cut == 2 and diff < 1e-5, size


def test_a_branch_on_values_keeps_that_module_whole_naming_it():
    torch.manual_seed(0)
    model, x = OpaqueInside(), torch.randn(2, 3, 8, 8)
    cut, diff, groups = cut_vs_masked(model, x)
    why = blockers(groups, "c1")
    assert any("odd (ValueBranch): fx cannot trace its forward" in b for b in why), why
    # the rest of the model stays open: c2 and c3 are cut, exactly
    assert cut == 2 and diff < 1e-5
    assert next(g for g in groups if "c2" in g.producers).prunable


def test_a_branch_on_values_in_the_models_own_forward_is_a_one_line_refusal():
    with pytest.raises(ValueError, match="cannot trace ValueBranch with torch.fx"):
        channel_groups(ValueBranch(), torch.randn(2, 3, 4, 4))


class CountBranch(nn.Module):
    """Code that reads a channel count to choose its way: a cut would send it the other way."""
    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.other = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 1), nn.Conv2d(16, 8, 1)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        if x.size(1) == 16:
            return self.c2(x)
        return self.other(x) * 5


class CountAssert(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 1)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        b, c, h, w = x.shape
        x = x.reshape(b, c, h * w).reshape(b, c, h, w)  # a reshape reading c is no branch
        torch._assert(x.shape[1] == 16, "16 channels expected")
        return self.c2(x)


def test_a_branch_on_a_channel_count_keeps_those_channels():
    for model in (CountBranch(), CountAssert()):
        groups = channel_groups(model, torch.randn(2, 3, 8, 8))
        assert any("branches on the channel count" in b for b in blockers(groups, "c1")), blockers(groups, "c1")
    # a branch on the spatial size reads no channel count: nothing blocked for it
    class SpatialBranch(ShapeBranch):  # as timm's Conv2dSame reads it: x.size()[-2:]
        def forward(self, x):
            x = torch.relu(self.c1(x))
            h, w = x.size()[-2:]
            if max(h, w) > self.size:
                x = nn.functional.adaptive_avg_pool2d(x, self.size)
            return self.head(torch.relu(self.c2(x)).mean((2, 3)))

    class ReshapedThenBranch(ShapeBranch):  # the reshape upstream reads c; the branch only the width
        def forward(self, x):
            x = torch.relu(self.c1(x))
            b, c, h, w = x.shape
            x = x.reshape(b, c, h * w).reshape(b, c, h, w)
            if x.shape[-1] > self.size:
                x = nn.functional.adaptive_avg_pool2d(x, self.size)
            return self.head(torch.relu(self.c2(x)).mean((2, 3)))

    for model in (ShapeBranch(), SpatialBranch(), ReshapedThenBranch()):
        groups = channel_groups(model, torch.randn(2, 3, 16, 16))
        assert not any("branches" in b for g in groups for b in g.blockers), type(model).__name__


def test_channel_counts_read_through_a_computed_dim_or_a_tensor_sized_by_them_block_too():
    class ComputedDim(CountBranch):
        def forward(self, x):
            x = torch.relu(self.c1(x))
            return self.c2(x) if x.size(x.dim() - 3) == 16 else self.other(x) * 5

    class SizedByIt(CountBranch):
        def forward(self, x):
            x = torch.relu(self.c1(x))
            return self.c2(x) if torch.arange(x.shape[1]).shape[0] == 16 else self.other(x) * 5

    for model in (ComputedDim(), SizedByIt()):
        groups = channel_groups(model, torch.randn(2, 3, 8, 8))
        assert any("branches on the channel count" in b for b in blockers(groups, "c1")), type(model).__name__


class ValueShaped(nn.Module):
    """Branches on shapes that depend on values: the example's way says nothing about other inputs."""
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def forward(self, x):
        if self.kind == "mask":
            n = x[x > 0].shape[0]
        elif self.kind == "bincount":
            n = torch.bincount((x > 5).flatten().long()).shape[0]
        else:  # a size given by a value
            n = torch.arange(x.max().long() + 1).shape[0]
        return x * 2 if n > 1 else x


@pytest.mark.parametrize("kind", ["mask", "bincount", "arange"])
def test_a_branch_on_a_shape_that_depends_on_values_is_not_taken_from_the_example(kind):
    with pytest.raises(ValueError, match="cannot trace ValueShaped"):
        channel_groups(ValueShaped(kind), torch.randn(2, 3, 4, 4))


def test_tracing_and_harvest_leave_batchnorm_statistics_and_every_training_flag_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4))
    model.train()
    model[4].eval()  # a frozen BatchNorm inside a training model
    _dead(model[0], 2)
    with torch.no_grad():
        model[1].bias[:2] = 0  # the dead channels stay zero through the BatchNorm
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    flags = [m.training for m in model.modules()]
    channel_groups(model, torch.randn(2, 3, 8, 8))
    record = harvest(model, (3, 8, 8))
    assert record["keep"], record
    assert [m.training for m in model.modules()] == flags
    assert torch.equal(model[4].running_mean, stats["4.running_mean"])
    assert int(model[1].num_batches_tracked) == int(stats["1.num_batches_tracked"])


def test_same_padding_and_upsampling_pass_channels_through():
    torch.manual_seed(0)
    model, x = SamePadUpsample(), torch.randn(2, 3, 15, 15)
    cut, diff, groups = cut_vs_masked(model, x)
    assert cut == 2 and diff < 1e-5
    assert all(g.prunable for g in groups if g.producers and g.producers[0] in ("c1", "c2"))


def test_padding_the_channel_axis_blocks():
    class PadChannels(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 8, 1), nn.Conv2d(10, 4, 1)

        def forward(self, x):
            return self.c2(nn.functional.pad(self.c1(x), [0, 0, 0, 0, 1, 1]))
    groups = channel_groups(PadChannels(), torch.randn(2, 3, 4, 4))
    assert any("pad" in b and "channel axis" in b for b in blockers(groups, "c1"))


def test_the_harvest_refuses_a_cut_that_changes_the_output():
    """A user registers a channel-mixing module as element-wise: the graph believes it, the harvest's
    check against the uncut model does not, and the model stays as it was."""
    torch.manual_seed(0)
    model = LyingRule().eval()
    _dead(model.c1, 3)
    with registered(ChannelFlip, elementwise_rule):
        assert next(g for g in channel_groups(model, torch.zeros(2, 3, 6, 6)) if "c1" in g.producers).prunable
        before = copy.deepcopy(model)
        record = harvest(model, (3, 6, 6))
    assert record["keep"] == {} and "changed the model's output" in record["skipped"]
    assert model.c1.out_channels == 8 and model.c2.in_channels == 8
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(model(x), before(x))


def test_the_harvest_keeps_an_exact_cut():
    torch.manual_seed(0)
    model = SamePadUpsample().eval()
    _dead(model.c2, 5)
    record = harvest(model, (3, 15, 15))
    assert record["keep"] and "skipped" not in record and model.c2.out_channels == 11


class ReadsTwice(nn.Module):
    """DLA's root: a conv reading a block's output beside its residual input — the same channels twice."""
    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.root = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Conv2d(20, 6, 1)
        self.side = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        x1 = torch.relu(self.c1(x))
        x2 = x1 + torch.relu(self.c2(x1))
        return self.root(torch.cat([x2, self.side(x), x1], 1))


def test_a_conv_reading_the_same_channels_twice_is_cut_at_both_reads():
    torch.manual_seed(0)
    model, x = ReadsTwice(), torch.randn(2, 3, 8, 8)
    group = next(g for g in channel_groups(model, x) if "c1" in g.producers)
    assert group.prunable and group.offsets("root") == [0, 12]
    cut, diff, groups = cut_vs_masked(model, x)
    assert cut == 2 and diff < 1e-5  # c1+c2 (one group through the residual) and side


def test_harvest_folds_a_constant_channel_read_twice():
    torch.manual_seed(0)
    model = ReadsTwice().eval()
    with torch.no_grad():
        model.c1.weight[:2] = 0
        model.c1.bias[:2] = 0.5  # a constant channel...
        model.c2.weight[:2] = 0
        model.c2.bias[:2] = -0.25  # ...also in the block's output: x2 = x1 + relu(c2) is constant there too
    before = copy.deepcopy(model)
    record = harvest(model, (3, 8, 8))
    assert "skipped" not in record and record["constant_channels_folded"] == 2
    assert model.root.in_channels == 20 - 2 * 2
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(model(x), before(x), atol=1e-5)


def test_convnextv2_global_response_norm_is_cut_with_the_removed_channels_still_counted():
    """timm's GlobalResponseNorm divides by the mean over channels: cut plainly it would divide by the
    kept ones only. Its γ, β are randomised (zeros at init would hide that)."""
    import timm  # the [test] extra installs it
    torch.manual_seed(0)
    model = timm.create_model("convnextv2_atto", pretrained=False, num_classes=5).eval()
    with torch.no_grad():
        for m in model.modules():
            if type(m).__name__ == "GlobalResponseNorm":
                m.weight.uniform_(-1, 1)
                m.bias.uniform_(-0.5, 0.5)
    cut, diff, groups = cut_vs_masked(model, torch.randn(2, 3, 32, 32), ratio=0.5)
    grn = [n for g in groups for n in g.passthrough if n.endswith("grn")]
    assert len(grn) == 12 and cut >= len(grn) and diff < 1e-4  # 2+2+6+2 blocks


class PatchMerging(nn.Module):
    """Swin's patch merging: 2×2 neighbours' channels side by side ([.., 2, 2, C] → [.., 4·C]), a
    LayerNorm over all of them, a Linear reducing them: the same channels four times in one input."""
    def __init__(self):
        super().__init__()
        self.embed, self.norm, self.reduce = nn.Linear(3, 8), nn.LayerNorm(32), nn.Linear(32, 5)

    def forward(self, x):  # [B, H, W, 3]
        b, h, w, _ = x.shape
        y = self.embed(x).reshape(b, h // 2, 2, w // 2, 2, -1).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduce(self.norm(y))


def test_patch_merging_cuts_the_channels_at_each_of_their_four_places():
    torch.manual_seed(0)
    model, x = PatchMerging(), torch.randn(2, 4, 4, 3)
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5)
        model.norm.bias.uniform_(-0.5, 0.5)
    group = next(g for g in channel_groups(model, x) if "embed" in g.producers)
    assert group.prunable and group.offsets("norm") == [0, 8, 16, 24] == group.offsets("reduce")
    cut, diff, _ = cut_vs_masked(model, x, ratio=0.5)
    assert cut == 1 and diff < 1e-5


def test_a_norm_reading_the_same_channels_twice_is_cut_at_both_places():
    class NormTwice(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.bn, self.c2 = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(8), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            y = self.c1(x)
            return self.c2(self.bn(torch.cat([y, y], 1)))
    torch.manual_seed(0)
    model = NormTwice()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.1, 0.1)
        model.bn.weight.uniform_(0.5, 1.5)
    cut, diff, groups = cut_vs_masked(model, torch.randn(2, 3, 4, 4), ratio=0.5)
    assert cut == 1 and diff < 1e-5


def test_a_grouped_conv_reading_the_same_channels_twice_blocks():
    class GroupedTwice(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 4, 1), nn.Conv2d(8, 4, 1, groups=2)

        def forward(self, x):
            y = self.c1(x)
            return self.c2(torch.cat([y, y], 1))
    groups = channel_groups(GroupedTwice(), torch.randn(2, 3, 4, 4))
    assert any("grouped conv c2" in b for b in blockers(groups, "c1"))


def test_padding_other_axes_of_channels_last_tokens_keeps_channels():
    """Swin pads its [B, H, W, C] windows with (0, 0) on the channel axis: not a pad of the channels."""
    class ChannelsLastPad(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)

        def forward(self, x):
            return self.b(nn.functional.pad(self.a(x), (0, 0, 0, 1, 0, 1)))
    cut, diff, groups = cut_vs_masked(ChannelsLastPad(), torch.randn(2, 5, 5, 4))
    assert cut == 1 and diff < 1e-5


class FixedWidth(nn.Module):
    """Element-wise in effect, but its code hard-codes 8 channels (a view and back)."""
    def forward(self, x):
        return torch.relu(x.reshape(x.shape[0], 8, x.shape[2] * x.shape[3])).reshape(x.shape)


class UsesFixedWidth(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.fixed, self.c2 = nn.Conv2d(3, 8, 1), FixedWidth(), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c2(self.fixed(self.c1(x)))


def test_the_harvest_refuses_a_cut_the_models_own_code_cannot_run():
    """A module registered as element-wise whose forward hard-codes the channel count: the graph takes
    the rule's word, the cut model fails to run, and the harvest keeps the model whole saying why."""
    torch.manual_seed(0)
    model = UsesFixedWidth().eval()
    _dead(model.c1, 2)
    with registered(FixedWidth, elementwise_rule):
        record = harvest(model, (3, 4, 4))
    assert record["keep"] == {} and "the cut model fails: RuntimeError" in record["skipped"]
    assert model.c1.out_channels == 8 and model(torch.randn(2, 3, 4, 4)).shape == (2, 4, 4, 4)


def test_an_undone_cut_leaves_every_layer_and_parameter_object_in_place():
    """References held elsewhere (an optimizer, a user's handle on a layer) still point into the model."""
    torch.manual_seed(0)
    model = UsesFixedWidth().train()
    _dead(model.c1, 2)
    layer, weight, params = model.c1, model.c1.weight, list(model.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with registered(FixedWidth, elementwise_rule):
        assert harvest(model, (3, 4, 4))["keep"] == {}
    assert model.c1 is layer and model.c1.weight is weight and list(model.parameters()) == params
    assert weight.shape == (8, 3, 1, 1) and model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_failed_remove_channels_restores_a_parameter_of_the_root_module():
    class RootToken(nn.Module):  # a parameter on the model itself (ViT's cls_token), then a cut that fails
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)
            self.scale = nn.Parameter(torch.randn(1, 8, 1, 1))

        def forward(self, x):
            return self.c2(self.c1(x) * self.scale)

    torch.manual_seed(0)
    model = RootToken()
    group = next(g for g in channel_groups(model, torch.randn(2, 3, 4, 4)) if g.producers == ["c1"])
    assert ("scale", 1) in group.parameters
    scale, c2_weight = model.scale.clone(), model.c2.weight
    group.consumers = [("c2", 3)]  # c2 said to read 3 inputs per channel: its cut fails after the root's
    with pytest.raises((IndexError, RuntimeError)):
        remove_channels(model, group, torch.tensor([0, 1, 2]))
    assert torch.equal(model.scale, scale) and model.c2.weight is c2_weight and model.c1.out_channels == 8


class Ghost(nn.Module):
    """GhostNet's module in a residual: a primary conv and its depthwise copy side by side, added to a
    shortcut conv as wide as both — the shortcut writes each channel of the group twice."""
    def __init__(self, norm: bool = True):
        super().__init__()
        self.primary, self.cheap = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.short, self.head = nn.Conv2d(3, 12, 1), nn.Conv2d(12, 4, 1)
        self.bn = nn.BatchNorm2d(12) if norm else nn.Identity()
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12)  # a depthwise conv reading the group twice

    def forward(self, x):
        p = torch.relu(self.primary(x))
        return self.head(self.dw(torch.cat([p, self.cheap(p)], 1) + self.bn(self.short(x))))


def test_a_group_added_to_one_twice_as_wide_is_split_to_match_and_cut_exactly():
    torch.manual_seed(0)
    model, x = Ghost(), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.1, 0.1)
        model.bn.weight.uniform_(0.5, 1.5)
    group = next(g for g in channel_groups(model, x) if "short" in g.producers)
    assert group.prunable and group.size == 6 and group.out_offsets("short") == [0, 6]
    assert group.offsets("bn") == [0, 6] == group.offsets("head") == group.offsets("dw")
    cut, diff, _ = cut_vs_masked(model, x, ratio=0.5)
    assert cut == 1 and diff < 1e-5
    cut, diff, _ = cut_vs_masked(Ghost(norm=False), x, ratio=0.5)  # the masked model zeroes both rows
    assert cut == 1 and diff < 1e-5


def test_channels_written_twice_are_dead_only_when_both_rows_are_zero():
    torch.manual_seed(0)
    model = Ghost().eval()
    with torch.no_grad():
        for layer in (model.primary, model.short):
            layer.weight[1] = 0
            layer.bias[1] = 0
        model.short.weight[7] = 0  # channel 1's second row (6 + 1) ...
        model.short.bias[7] = 0
        model.bn.bias[[1, 7]] = 0  # BatchNorm maps the zeros to zero (else the padded dw conv sees a constant)
        model.bn.running_mean[[1, 7]] = 0
        model.cheap.bias[1] = 0  # and the depthwise copy of a zero channel stays zero
        model.short.weight[2] = 0  # ... while channel 2 keeps its second row: not dead
        model.short.bias[2] = 0
    before = copy.deepcopy(model)
    record = harvest(model, (3, 8, 8))
    assert record["keep"]["primary"] == [0, 2, 3, 4, 5] and model.short.out_channels == 10
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(model(x), before(x), atol=1e-5)


def test_split_along_the_channels_blocks_and_along_another_axis_carries_them():
    class Splits(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 12), nn.Linear(6, 2)
            self.c, self.d, self.e = nn.Linear(4, 8), nn.Linear(8, 2), nn.Linear(8, 2)

        def forward(self, x):  # [B, T, 4]
            left, right = torch.split(self.a(x), [6, 6], -1)      # along the channels: blocks
            first, rest = torch.split(self.c(x), [1, 4], 1)        # along the tokens: each part has all channels
            return self.b(left + right).mean(1) + self.d(torch.relu(rest)).mean(1) + self.e(first).mean(1)
    torch.manual_seed(0)
    model, x = Splits(), torch.randn(2, 5, 4)
    groups = channel_groups(model, x)
    assert any("along the channel axis" in b for b in blockers(groups, "a"))
    assert next(g for g in groups if "c" in g.producers).prunable
    cut, diff, _ = cut_vs_masked(model, x, ratio=0.5)
    assert cut == 1 and diff < 1e-5


def test_a_split_carries_the_shift_and_a_tuple_handed_on_blocks():
    """Review findings: a part of a split of sigmoid channels still carries the constant; a split
    tuple passed whole to another module escapes the walk, so it blocks."""
    class SplitShift(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.head = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            top, _ = torch.sigmoid(self.a(x)).chunk(2, dim=2)
            return self.head(top)

    class TupleOn(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.id, self.head = nn.Conv2d(3, 4, 1), nn.Identity(), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.head(self.id(self.a(x).chunk(2, dim=2))[0])
    x = torch.randn(2, 3, 4, 4)
    assert next(g for g in channel_groups(SplitShift(), x) if "a" in g.producers).shifts
    assert not next(g for g in channel_groups(TupleOn(), x) if "a" in g.producers).prunable


def test_a_model_that_cannot_read_a_random_batch_is_not_cut_unchecked():
    """Token ids given as floats: zeros trace, a random batch does not index the embedding. With dead
    channels to cut, the harvest says it cannot check the cut and cuts nothing; with none, it is quiet."""
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.fc1, self.fc2 = nn.Embedding(10, 8), nn.Linear(8, 6), nn.Linear(6, 3)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(self.emb(x.long()).mean(1))))

    torch.manual_seed(0)
    model = Tokens().eval()
    assert "skipped" not in harvest(model, (6,))
    with torch.no_grad():
        model.fc1.weight[2] = 0
        model.fc1.bias[2] = 0
    record = harvest(model, (6,))
    assert record["keep"] == {} and record["skipped"].startswith("cannot check the channel cut: the model fails")
    assert model.fc1.out_features == 6


class Caches(nn.Module):
    """LeViT's attention-bias cache (`cache[str(device)] = ...` in eval mode) and a forward that sets an
    attribute: tracing runs this code with traced values, which must not stay in the model."""
    def __init__(self):
        super().__init__()
        self.a, self.head, self.cache, self.seen = nn.Conv2d(3, 8, 1), nn.Linear(8, 2), {}, []
        self.scale = nn.Parameter(torch.ones(8))

    def forward(self, x):
        key = str(x.device)
        if key not in self.cache:
            self.cache[key] = self.scale * 2
        self.seen.append(key)
        self.last = key
        return self.head((self.a(x) * self.cache[key][:, None, None]).mean((2, 3)))


def test_tracing_leaves_the_models_python_state_as_it_was():
    model = Caches().eval()
    model(torch.randn(1, 3, 4, 4))
    cache, seen = dict(model.cache), list(model.seen)
    groups = channel_groups(model, torch.randn(2, 3, 4, 4))
    assert model.cache == cache and model.seen == seen and model.last == "cpu"  # no traced proxy left
    assert all(isinstance(v, torch.Tensor) for v in model.cache.values())
    fresh = Caches().eval()
    channel_groups(fresh, torch.randn(2, 3, 4, 4))
    assert fresh.cache == {} and fresh.seen == [] and not hasattr(fresh, "last")
    assert groups and fresh(torch.randn(1, 3, 4, 4)).shape == (1, 2)


class AsksItsDevice(nn.Module):
    """EfficientViT's linear attention: `if v.device.type != 'meta'` and
    `torch.autocast(device_type=v.device.type, enabled=False)` around part of its forward."""
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 6, 3, padding=1), nn.Linear(6, 2)

    def forward(self, x):
        y = torch.relu(self.a(x))
        if y.device.type != "meta":
            with torch.autocast(device_type=y.device.type, enabled=False):
                y = self.b(y.float())
        return self.head(y.mean((2, 3)))


def test_code_that_asks_where_a_tensor_runs_traces_on_the_examples_device():
    model = AsksItsDevice().eval()
    cut, diff, groups = cut_vs_masked(model, torch.randn(2, 3, 8, 8))
    assert cut == 2 and diff < 1e-5, [g.blockers for g in groups]
