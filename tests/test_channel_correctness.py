"""Channel removal is exact or refused, never wrong: models whose channels travel along other axes,
through f(0) != 0 activations, 1-D convolutions, and ops the graph does not track."""
import copy

import pytest
import torch
from torch import nn

from compress.structured import channel_groups, harvest_channels, remove_channels, zero_channels
from compress.structured.budget import first_kept, keep_count


def cut_vs_masked(model, x, ratio=0.3):
    """Cut every prunable group by `ratio` and compare with zeroing those channels; returns
    (groups cut, groups refused by remove_channels, max relative difference)."""
    model = model.eval()
    groups = [g for g in channel_groups(model, x) if g.prunable]
    masked, smaller = copy.deepcopy(model), copy.deepcopy(model)
    full = copy.deepcopy(groups)
    cut = refused = 0
    for group, same in zip(groups, full):
        keep = first_kept(group, keep_count(group.size, ratio, blocks=group.blocks))
        drop = torch.tensor(sorted(set(range(group.size)) - set(keep.tolist())), dtype=torch.long)
        try:
            remove_channels(smaller, group, keep)
        except ValueError:
            refused += 1
            continue
        zero_channels(masked, same, drop)
        cut += 1
    with torch.no_grad():
        want, got = masked(x), smaller(x)
    return cut, refused, float((got - want).abs().max() / want.abs().max().clamp_min(1e-6))


class SigmoidLeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 6, 5), nn.Sigmoid(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5),
                                      nn.Sigmoid(), nn.MaxPool2d(2), nn.Flatten())
        self.classifier = nn.Sequential(nn.Linear(256, 120), nn.Hardsigmoid(), nn.Linear(120, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


class PerStepLinear(nn.Module):
    """[B, T, F] → a Linear per time step → flatten: channels are on the last axis, T equals H."""
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.step = nn.Linear(28, 16)
        self.head = nn.Linear(8 * 28 * 16, 10)

    def forward(self, x):
        y = self.step(torch.relu(self.conv(x)))   # [B, 8, 28, 16]: channels of `step` on the last axis
        return self.head(torch.flatten(y, 1))


class Audio1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv1d(1, 16, 5), nn.BatchNorm1d(16), nn.ReLU(), nn.Conv1d(16, 32, 5),
                                 nn.BatchNorm1d(32), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(32, 5))

    def forward(self, x):
        return self.net(x)


class TokenConcat(nn.Module):
    """Linear outputs concatenated along the token axis (not the channel axis)."""
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):  # x: [B, T, 8]
        return self.head(torch.cat([self.a(x), self.b(x)], dim=1)).mean(1)


class UntrackedAdd(nn.Module):
    """A residual add whose other operand comes from an op the graph does not track."""
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 8, 3, padding=1), nn.Linear(8 * 8 * 8, 3)

    def forward(self, x):
        y = self.conv(x)
        return self.fc(torch.flatten(y + torch.roll(y, 1, dims=1), 1))


def test_sigmoid_channels_are_refused_by_a_plain_cut_and_folded_by_the_harvest():
    torch.manual_seed(0)
    model, x = SigmoidLeNet().eval(), torch.randn(4, 1, 28, 28)
    groups = [g for g in channel_groups(model, x) if g.prunable]
    assert groups and all(g.shifts for g in groups)  # every hidden group passes a sigmoid
    cut, refused, diff = cut_vs_masked(model, x)
    assert cut == 0 and refused == len(groups) and diff == 0
    for g in groups:  # zero some channels: the harvest cuts them, folding sigmoid(0) = 0.5 downstream
        zero_channels(model, g, torch.arange(2))
    with torch.no_grad():
        want = model(x)
    result = harvest_channels(model, channel_groups(model, x), (1, 28, 28))
    assert result.keep and result.folded > 0
    with torch.no_grad():
        assert (model(x) - want).abs().max() < 1e-5


def test_a_per_time_step_linear_is_not_cut_on_the_wrong_axis():
    torch.manual_seed(0)
    model, x = PerStepLinear(), torch.randn(2, 1, 28, 28)
    blockers = {b for g in channel_groups(model, x) for b in g.blockers}
    assert any("reshape" in b and "axis 3" in b for b in blockers)
    cut, _, diff = cut_vs_masked(model, x)
    assert diff < 1e-5


def test_conv1d_models_are_cut_exactly():
    torch.manual_seed(0)
    model, x = Audio1d(), torch.randn(4, 1, 64)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    cut, refused, diff = cut_vs_masked(model, x)
    assert cut == 2 and refused == 0 and diff < 1e-5


def test_a_token_axis_concatenation_merges_the_channels_of_its_inputs():
    """cat along the token axis: both inputs carry the same channels, so one group, cut exactly."""
    torch.manual_seed(0)
    groups = channel_groups(TokenConcat().eval(), torch.randn(2, 5, 8))
    assert any(set(g.producers) == {"a", "b"} and g.prunable for g in groups)
    cut, _, diff = cut_vs_masked(TokenConcat(), torch.randn(2, 5, 8))
    assert cut == 1 and diff < 1e-5


@pytest.mark.parametrize("model,x,words", [
    (UntrackedAdd(), torch.randn(2, 1, 8, 8), "untracked tensor"),
])
def test_ops_on_other_axes_or_untracked_tensors_block_with_a_reason(model, x, words):
    groups = channel_groups(model.eval(), x)
    assert any(words in b for g in groups for b in g.blockers)
    cut, _, diff = cut_vs_masked(model, x)
    assert diff < 1e-5


def test_a_failed_cut_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model, x = Audio1d().eval(), torch.randn(2, 1, 64)
    group = next(g for g in channel_groups(model, x) if g.prunable)
    group.consumers.append(("no.such.module", 1))  # the cut fails half-way
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(AttributeError):
        remove_channels(model, group, torch.arange(4))
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_v2_s", "efficientnet_b0", "mobilenet_v3_small", "regnet_y_400mf",
                                  "resnext50_32x4d", "convnext_tiny"])
def test_torchvision_models_with_stochastic_depth_or_se_never_crash_or_differ(name):
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
    cut, refused, diff = cut_vs_masked(model, torch.randn(2, 3, 64, 64))
    assert cut > 0 and diff < 1e-4


class GroupedBlock(nn.Module):
    """A ResNeXt-style bottleneck: 1x1 → grouped 3x3 (4 groups) → 1x1, with a residual add."""
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.a, self.bn_a = nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32)
        self.b, self.bn_b = nn.Conv2d(32, 32, 3, padding=1, groups=4), nn.BatchNorm2d(32)
        self.c = nn.Conv2d(32, 16, 1)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        s = torch.relu(self.stem(x))
        y = torch.relu(self.bn_b(self.b(torch.relu(self.bn_a(self.a(s))))))
        return self.head((s + self.c(y)).mean((2, 3)))


def test_grouped_convs_are_cut_evenly_per_group():
    from compress.structured.budget import first_kept
    torch.manual_seed(0)
    model, x = GroupedBlock().eval(), torch.randn(2, 1, 8, 8)
    groups = {g.producers[0]: g for g in channel_groups(model, x) if g.prunable}
    assert groups["a"].blocks == 4 and groups["b"].blocks == 4
    uneven = copy.deepcopy(groups["a"])
    with pytest.raises(ValueError, match="same number of channels kept in each of its 4 blocks"):
        remove_channels(copy.deepcopy(model), uneven, torch.arange(24))
    masked, smaller = copy.deepcopy(model), copy.deepcopy(model)
    for key in ("a", "b"):
        g = groups[key]
        keep = first_kept(g, 16)
        zero_channels(masked, copy.deepcopy(g), torch.tensor(sorted(set(range(32)) - set(keep.tolist()))))
        remove_channels(smaller, g, keep)
    assert smaller.b.weight.shape == (16, 4, 3, 3) and smaller.b.groups == 4
    with torch.no_grad():
        assert (smaller(x) - masked(x)).abs().max() < 1e-5


def test_the_harvest_cuts_grouped_channels_evenly_and_exactly():
    torch.manual_seed(0)
    model, x = GroupedBlock().eval(), torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        dead = [0, 1, 2, 9, 17, 25]  # three outputs of conv-group 0, one of each other group
        model.b.weight[dead] = 0
        model.b.bias[dead] = 0
        model.bn_b.weight[dead] = 0
        model.bn_b.bias[dead] = 0
        want = model(x)
    result = harvest_channels(model, channel_groups(model, x), (1, 8, 8))
    assert len(result.keep["b"]) == 28 and model.b.out_channels == 28  # one per group: the fewest dead
    assert model.b.weight.shape == (28, 8, 3, 3) and model.c.in_channels == 28
    with torch.no_grad():
        assert (model(x) - want).abs().max() < 1e-5


class TokenBlock(nn.Module):
    """A ConvNeXt block in miniature: channels-last through a permute, a LayerNorm over the channels,
    an MLP, a per-channel layer scale and a position embedding, a residual back in channels-first."""
    def __init__(self, shift: bool = False):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.pos = nn.Parameter(torch.randn(8, 8, 16))
        self.norm = nn.LayerNorm(16)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)
        self.scale = nn.Parameter(torch.rand(16) + 0.5)
        self.head = nn.Linear(16, 3)
        self.shift = shift

    def forward(self, x):
        s = self.stem(x)
        t = s.permute(0, 2, 3, 1) + self.pos
        t = torch.sigmoid(t) if self.shift else t
        y = self.fc2(nn.functional.gelu(self.fc1(self.norm(t)))) * self.scale
        return self.head((y.permute(0, 3, 1, 2) + s).mean((2, 3)))


def test_a_layernorm_stream_is_cut_exactly_with_removed_channels_counted_as_zeros(tmp_path):
    import onnxruntime as ort

    from compress.structured.norm import NormWithRemoved
    from deploy.export import export_onnx
    torch.manual_seed(0)
    model, x = TokenBlock().eval(), torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5), model.norm.bias.uniform_(-0.5, 0.5)
    stream = next(g for g in channel_groups(model, x) if "stem" in g.producers)
    assert stream.prunable and set(stream.producers) == {"stem", "fc2"}
    assert stream.passthrough == ["norm"] and {t for t, _ in stream.parameters} == {"pos", "scale"}
    cut, refused, diff = cut_vs_masked(model, x)
    assert cut == 2 and refused == 0 and diff < 1e-5
    # cut twice: the second cut finds the wrapped norm and is still exact against the twice-masked model
    smaller, masked = copy.deepcopy(model), copy.deepcopy(model)
    for keep in (torch.tensor([0, 2, 3, 5, 7, 8, 9, 11, 12, 15]), torch.tensor([1, 2, 4, 5, 8, 9])):
        group = next(g for g in channel_groups(smaller, x) if "stem" in g.producers)
        same = next(g for g in channel_groups(masked, x) if "stem" in g.producers)
        full = torch.arange(same.size)
        kept_before = full if group.size == same.size else kept
        kept = kept_before[keep]
        zero_channels(masked, same, torch.tensor(sorted(set(full.tolist()) - set(kept.tolist()))))
        remove_channels(smaller, group, keep)
    assert isinstance(smaller.norm, NormWithRemoved) and smaller.norm.width == 6 and smaller.pos.shape == (8, 8, 6)
    with torch.no_grad():
        want, got = masked(x), smaller(x)
    assert (got - want).abs().max() < 1e-5 * want.abs().max()
    # and it exports: onnxruntime gives the same answer
    export_onnx(smaller, x[:1], tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x[:1].numpy()})[0]
    assert abs(out - got[:1].numpy()).max() < 1e-4


class SharedScale(nn.Module):
    """One per-channel parameter used twice: multiplied in, and summed into the output."""
    def __init__(self):
        super().__init__()
        self.conv, self.scale, self.head = nn.Conv2d(1, 8, 3), nn.Parameter(torch.rand(8, 1, 1) + 0.5), nn.Linear(8, 3)

    def forward(self, x):
        return self.head((self.conv(x) * self.scale).mean((2, 3))) + self.scale.sum()


def test_a_parameter_used_elsewhere_too_blocks():
    model, x = SharedScale().eval(), torch.randn(2, 1, 8, 8)
    group = next(g for g in channel_groups(model, x) if "conv" in g.producers)
    assert not group.prunable and any("scale is used elsewhere" in b for b in group.blockers)
    cut, _, diff = cut_vs_masked(model, x)
    assert cut == 0 and diff < 1e-6


def test_a_layernorm_over_channels_that_carry_a_constant_blocks():
    groups = channel_groups(TokenBlock(shift=True).eval(), torch.randn(2, 1, 8, 8))
    stream = next(g for g in groups if "stem" in g.producers)
    assert not stream.prunable and any("norm normalises channels that carry" in b for b in stream.blockers)


@pytest.mark.slow
def test_convnext_loses_as_many_macs_as_a_plain_cnn_and_stays_exact():
    import torchvision

    from compress.flops import count_macs
    torch.manual_seed(0)
    model, x = torchvision.models.get_model("convnext_tiny", weights=None).eval(), torch.randn(2, 3, 64, 64)
    before = count_macs(model, x.shape[1:])["dense"]
    cut, refused, diff = cut_vs_masked(model, x)
    smaller = copy.deepcopy(model)
    for g in [g for g in channel_groups(smaller, x) if g.prunable]:
        remove_channels(smaller, g, first_kept(g, keep_count(g.size, 0.3, blocks=g.blocks)))
    assert refused == 0 and diff < 1e-4 and cut >= 22
    assert 1 - count_macs(smaller, x.shape[1:])["dense"] / before >= 0.45


class UnevenConcat(nn.Module):
    """Groups of 3 and 5 channels side by side (offsets where 3 ^ 5 != 3 + 5), then a BatchNorm and a
    conv reading both: the second group's channels sit at an offset in every member after the concat."""
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(1, 5, 3, padding=1)
        self.bn, self.head = nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1))))


def test_a_cut_after_an_uneven_concatenation_is_exact():
    torch.manual_seed(0)
    model = UnevenConcat().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.bias.uniform_(0.5, 1)  # nonzero everywhere: a wrongly placed cut would show
    cut, refused, diff = cut_vs_masked(model, torch.randn(2, 1, 6, 6), ratio=0.4)
    assert (cut, refused) == (2, 0) and diff < 1e-5


def test_cutting_a_group_to_zero_channels_is_refused():
    model = UnevenConcat().eval()
    group = next(g for g in channel_groups(model, torch.randn(1, 1, 6, 6)) if g.producers == ["b"])
    with pytest.raises(ValueError, match="zero width"):
        remove_channels(model, group, torch.tensor([], dtype=torch.long))
    assert model.b.out_channels == 5
