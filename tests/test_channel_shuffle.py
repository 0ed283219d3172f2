"""Channel shuffle (shuffle.py): a ShuffleNet stage's stream is cut exactly, or left whole with why."""
from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from compress.structured import (apply_structure, channel_groups, channel_importance, drop_lowest, group_keep_count,
                                 harvest, harvest_channels, remove_channels, zero_channels)
from compress.structured.budget import random_kept
from compress.structured.structure import cut_differs, reference_outputs


def _randomise_norms(model: nn.Module) -> nn.Module:
    """BatchNorm statistics and affine parameters away from their identity start (else a wrong column
    order could hide behind equal channels)."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=gen))
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen))
    return model.eval()


def _streams(groups):
    return [g for g in groups if g.shuffle is not None]


def _cut_equals_masked(model: nn.Module, group, keep: torch.Tensor, x: torch.Tensor) -> float:
    masked, cut = copy.deepcopy(model), copy.deepcopy(model)
    drop = torch.tensor(sorted(set(range(group.size)) - set(keep.tolist())), dtype=torch.long)
    zero_channels(masked, copy.deepcopy(group), drop)
    remove_channels(cut, copy.deepcopy(group), keep)
    with torch.no_grad():
        want, got = masked(x), cut(x)
    assert got.shape == want.shape
    return float((want - got).abs().max() / want.abs().max())


class Probe(nn.Module):
    """A stream of three producers through nn.ChannelShuffle(3), chunked in three; a second stream of
    two producers through a functional shuffle of 4 blocks with a depthwise conv and BatchNorm
    reading it, and a Linear reading the pooled stream."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 12, 1), nn.Conv2d(3, 12, 3, padding=1), nn.Conv2d(3, 12, 1)
        self.shuffle = nn.ChannelShuffle(3)
        self.p, self.q = nn.Conv2d(12, 8, 3, padding=1), nn.Conv2d(24, 8, 1)
        self.dw, self.bn = nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        s = self.shuffle(torch.cat([self.a(x), torch.relu(self.b(x)), self.c(x)], 1))
        first, second, third = s.chunk(3, dim=1)
        y = torch.cat([self.p(torch.relu(first)), self.q(torch.cat([second, third], 1))], 1)
        b, c, h, w = y.shape
        y = y.view(b, 4, c // 4, h, w).transpose(1, 2).reshape(b, -1, h, w)
        return self.fc(self.bn(self.dw(y)).mean((2, 3)))


def test_probe_streams_are_groups_cut_exactly_at_random_widths():
    model = _randomise_norms(Probe())
    x = torch.randn(2, 3, 8, 8)
    streams = _streams(channel_groups(model, x))
    assert [(g.size, g.prunable) for g in streams] == [(36, True), (16, True)]
    first, second = streams
    assert first.producers == ["a", "b", "c"] and second.producers == ["p", "q"]
    assert first.shuffle.widths() == list(range(1, 13))  # three producers: any width shuffles in 3 blocks
    assert second.shuffle.widths() == [2, 4, 6, 8]  # two: 4 blocks need an even width
    gen = torch.Generator().manual_seed(3)
    for group in streams:
        for m in group.shuffle.widths()[:-1]:
            keep = random_kept(group, m * len(group.producers), gen)
            assert _cut_equals_masked(model, group, keep, x) < 1e-5


def test_a_keep_set_the_stream_cannot_deliver_is_refused():
    model = _randomise_norms(torchvision.models.shufflenet_v2_x0_5())
    x = torch.randn(2, 3, 64, 64)
    stage2 = _streams(channel_groups(model, x))[0]
    s = stage2.shuffle
    first = torch.cat([p * s.width + torch.arange(12) for p in range(len(s.producers))])  # 12 of 24, all at the front
    assert s.check(first) is not None
    with pytest.raises(ValueError, match="channels per reader"):
        remove_channels(copy.deepcopy(model), copy.deepcopy(stage2), first)
    uneven = s.keep(12)[1:]
    with pytest.raises(ValueError, match="as many channels of each producer"):
        remove_channels(copy.deepcopy(model), copy.deepcopy(stage2), uneven)


def test_shufflenet_streams_cut_exactly_in_every_stage():
    model = _randomise_norms(torchvision.models.shufflenet_v2_x0_5())
    x = torch.randn(2, 3, 64, 64)
    streams = _streams(channel_groups(model, x))
    assert [g.key for g in streams] == ["stage2.0.branch1.2", "stage3.0.branch1.2", "stage4.0.branch1.2"]
    assert [len(g.producers) for g in streams] == [5, 9, 5] and all(g.prunable for g in streams)
    gen = torch.Generator().manual_seed(1)
    for group in streams:
        keep = random_kept(group, group_keep_count(group, 0.3), gen)
        assert len(keep) < group.size
        assert _cut_equals_masked(model, group, keep, x) < 1e-5


def test_wrong_column_order_would_be_caught(monkeypatch):
    """The readers of a stream take their columns in the cut model's order, not the kept ones' own order:
    taking them in the original order gives a different model, which the exactness check sees."""
    from compress.structured.shuffle import Shuffle
    torch.manual_seed(0)
    full = _randomise_norms(torchvision.models.shufflenet_v2_x0_5())
    model = nn.Sequential(full.conv1, full.maxpool, full.stage2, full.stage3[0]).eval()  # up to the stream's readers
    x = torch.randn(2, 3, 64, 64)
    group = _streams(channel_groups(model, x))[0]
    keep = random_kept(group, group_keep_count(group, 0.5), torch.Generator().manual_seed(2))
    assert _cut_equals_masked(model, group, keep, x) < 1e-5
    monkeypatch.setattr(Shuffle, "positions", lambda self, member, kept: self.places(member, kept).sort().values)
    assert _cut_equals_masked(model, group, keep, x) > 1e-2  # measured 0.11-0.25 over seeds


def test_harvest_removes_a_dropped_stream_and_replays_on_a_fresh_model():
    model = _randomise_norms(torchvision.models.shufflenet_v2_x0_5())
    x = torch.randn(2, 3, 64, 64)
    groups = _streams(channel_groups(model, x))
    for group in groups:
        drop = drop_lowest(group, channel_importance(model, group), group.size // 2)
        zero_channels(model, group, drop)
    reference = reference_outputs(model, (3, 64, 64))
    record = harvest(model, (3, 64, 64))
    assert cut_differs(reference, model) is None
    stream_keys = {g.key for g in groups}
    assert stream_keys <= set(record["keep"]), record.get("whole")
    # half asked: stages 2 and 4 keep half; stage 3 (48 per producer) cannot run at 17-32, so 33
    assert [record["widths"][g.key] for g in groups] == [(120, 60), (432, 297), (480, 240)]
    assert record["macs_after"] < record["macs_before"]
    fresh = _randomise_norms(torchvision.models.shufflenet_v2_x0_5())
    apply_structure(fresh, record, (3, 64, 64))
    assert [tuple(p.shape) for p in fresh.parameters()] == [tuple(p.shape) for p in model.parameters()]
    fresh.load_state_dict(model.state_dict())
    assert cut_differs(reference, fresh) is None
    bad = {**record, "keep": {**record["keep"], "stage2.0.branch1.2": record["keep"]["stage2.0.branch1.2"][1:]}}
    with pytest.raises(ValueError, match="stage2.0.branch1.2"):
        apply_structure(_randomise_norms(torchvision.models.shufflenet_v2_x0_5()), bad, (3, 64, 64))


class GroupedReader(nn.Module):
    """A shuffle read by a grouped conv (ShuffleNet V1's pointwise group conv): not cut."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
        self.g = nn.Conv2d(16, 4, 1, groups=2)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1)
        b, c, h, w = y.shape
        return self.g(y.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w))


class LiteralShuffle(GroupedReader):
    """A shuffle whose sizes are written in the code: a cut model would not run, so nothing is cut."""

    def __init__(self):
        super().__init__()
        self.g = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1)
        return self.g(y.view(y.shape[0], 2, 8, 4, 4).transpose(1, 2).reshape(y.shape[0], 16, 4, 4))


@pytest.mark.parametrize("net,why", [(GroupedReader, "shuffled stream"), (LiteralShuffle, "reshape")])
def test_streams_it_cannot_follow_stay_whole_with_why(net, why):
    groups = channel_groups(net(), torch.randn(2, 3, 4, 4))
    a = next(g for g in groups if "a" in g.producers)
    assert not a.prunable and why in a.blockers[0]


class TokenShuffle(nn.Module):
    """A shuffle of tokens ([B, L, C], channels last): no channel stream; the ordinary rules carry the
    channels through it, as before there was a stream rule."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 16), nn.Linear(16, 3)

    def forward(self, x):
        y = torch.relu(self.a(x))
        b, n, c = y.shape
        return self.b(y.view(b, 2, n // 2, c).transpose(1, 2).reshape(b, n, c))


def test_a_token_shuffle_is_left_to_the_ordinary_rules():
    model, x = TokenShuffle().eval(), torch.randn(2, 8, 6)
    groups = channel_groups(model, x)
    a = next(g for g in groups if g.producers == ["a"])
    assert a.prunable and a.shuffle is None
    keep = random_kept(a, group_keep_count(a, 0.5), torch.Generator().manual_seed(0))
    assert _cut_equals_masked(model, a, keep, x) < 1e-5


class OneConvBranch(nn.Module):
    """ShuffleNet's block with a branch of one conv: that conv reads the stream and writes into it."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
        self.branch, self.head = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(16, 4, 1)

    @staticmethod
    def shuffle(y):
        b, c, h, w = y.shape
        return y.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)

    def forward(self, x):
        s = self.shuffle(torch.cat([self.a(x), self.b(x)], 1))
        keep, go = s.chunk(2, dim=1)
        return self.head(self.shuffle(torch.cat([keep, torch.relu(self.branch(go))], 1)))


def test_a_conv_reading_and_writing_one_stream_is_cut_in_both_roles():
    model, x = OneConvBranch().eval(), torch.randn(2, 3, 6, 6)
    stream = _streams(channel_groups(model, x))
    assert len(stream) == 1 and stream[0].prunable and stream[0].producers == ["a", "b", "branch"]
    gen = torch.Generator().manual_seed(4)
    for m in stream[0].shuffle.widths()[:-1]:
        keep = random_kept(stream[0], 3 * m, gen)
        assert _cut_equals_masked(model, stream[0], keep, x) < 1e-5


def _shuf(y, g):
    b, c, h, w = y.shape
    return y.view(b, g, c // g, h, w).transpose(1, 2).reshape(b, c, h, w)


class _Pair(nn.Module):
    def __init__(self, readers: int = 16):
        super().__init__()
        self.a, self.b, self.c, self.d = (nn.Conv2d(3, 8, 1) for _ in range(4))
        self.o, self.r = nn.Conv2d(3, 16, 1), nn.Conv2d(readers, 5, 1)


class TwoStreamsAdded(_Pair):
    def forward(self, x):
        return self.r(_shuf(torch.cat([self.a(x), self.b(x)], 1), 2) + _shuf(torch.cat([self.c(x), self.d(x)], 1), 4))


class BranchOnWidth(_Pair):
    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1)
        z = _shuf(y, 2)
        if y.shape[1] == 16:
            z = z * 2
        return self.r(z)


class SizedByAnother(_Pair):
    def forward(self, x):
        y, o = torch.cat([self.a(x), self.b(x)], 1), self.o(x)
        b, c, h, w = o.shape
        return self.r(y.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)) + self.r(o)


class SizesAnother(_Pair):
    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1)
        b, c, h, w = y.shape
        o = self.o(x).reshape(b, c, h * w).reshape(b, c, h, w)
        return self.r(y.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)) + self.r(o)


class SwapsBatch(_Pair):
    """transpose(-4, -3) of a 4-D view is dims 0 and 1: no channel shuffle."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.r = nn.Conv1d(3, 8, 1), nn.Conv1d(3, 8, 1), nn.Conv1d(16, 5, 1)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1)
        b, c, n = y.shape
        return self.r(y.view(b, 2, c // 2, n).transpose(-4, -3).reshape(b, c, n))


@pytest.mark.parametrize("net", [TwoStreamsAdded, BranchOnWidth, SizedByAnother, SizesAnother, SwapsBatch])
def test_what_a_stream_cut_cannot_follow_is_never_cut_wrong(net):
    """Found by a hostile pass: each of these was cut into a wrong or broken model once."""
    model = _randomise_norms(net())
    x = torch.randn(2, 3, 8) if net is SwapsBatch else torch.randn(2, 3, 8, 8)
    groups = channel_groups(model, x)
    assert any(g.producers for g in groups)
    for g in groups:
        if g.prunable:
            keep = random_kept(g, group_keep_count(g, 0.5), torch.Generator().manual_seed(0))
            if len(keep) < g.size:
                assert _cut_equals_masked(model, g, keep, x) < 1e-5, g.key
    streamed = [g for g in groups if {"a", "b"} <= set(g.producers)]
    assert streamed and not any(g.prunable for g in streamed)


class ChannelsLastReader(_Pair):
    """Other written forms: torch's own channel_shuffle, the transpose as a permute, and a Linear reading
    the stream with its channels last."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        y = torch.channel_shuffle(torch.cat([self.a(x), self.b(x)], 1), 2)
        b, c, h, w = y.shape
        y = y.view(b, 4, c // 4, h, w).permute(0, 2, 1, 3, 4).reshape(b, c, h, w)
        return self.fc(torch.relu(y).permute(0, 2, 3, 1)).mean((1, 2))


def test_other_written_shuffles_and_a_channels_last_reader_are_cut_and_harvested():
    model, x = _randomise_norms(ChannelsLastReader()), torch.randn(2, 3, 8, 8)
    stream = _streams(channel_groups(model, x))
    assert len(stream) == 1 and stream[0].prunable and stream[0].shuffle.widths() == [2, 4, 6, 8]
    keep = random_kept(stream[0], 8, torch.Generator().manual_seed(0))
    assert _cut_equals_masked(model, stream[0], keep, x) < 1e-5
    zero_channels(model, stream[0], drop_lowest(stream[0], channel_importance(model, stream[0]), 8))
    reference = reference_outputs(model, (3, 8, 8))
    record = harvest(model, (3, 8, 8))
    assert record["widths"]["a"] == (16, 8) and cut_differs(reference, model) is None


def test_a_stream_that_runs_at_no_smaller_width_says_so():
    class Three(_Pair):
        def __init__(self):  # three producers of 4 channels, 4 blocks: a width of 4 each, or nothing
            super().__init__()
            self.a, self.b, self.c = (nn.Conv2d(3, 4, 1) for _ in range(3))
            self.s, self.r = nn.ChannelShuffle(4), nn.Conv2d(12, 5, 1)

        def forward(self, x):
            return self.r(self.s(torch.cat([self.a(x), self.b(x), self.c(x)], 1)))
    groups = channel_groups(Three().eval(), torch.randn(2, 3, 4, 4))
    a = next(g for g in groups if "a" in g.producers)
    assert not a.prunable and "no smaller width" in a.blockers[0]


def test_the_channel_pruners_budget_and_pick_within_what_a_stream_allows():
    """The filter pruner's path: widths for a ratio, MACs counted on a cut copy, the lowest channels
    dropped and zeroed, the harvest cutting exactly those."""
    from compress.structured import keep_counts, macs_with_widths
    model = _randomise_norms(torchvision.models.shufflenet_v2_x0_5())
    x = torch.randn(2, 3, 64, 64)
    groups = [g for g in channel_groups(model, x) if g.prunable]
    keep = keep_counts(groups, 0.5)
    streams = _streams(groups)
    assert [keep[g.key] for g in streams] == [60, 297, 240]
    dense = macs_with_widths(model, [], {}, (3, 64, 64))
    planned = macs_with_widths(model, groups, keep, (3, 64, 64))
    assert planned < 0.5 * dense
    for g in streams:  # an odd count rounds the same way for the budget and the pick
        assert len(drop_lowest(g, channel_importance(model, g), 3)) == g.size - len(budget_first_kept(g, g.size - 3))
    for g in groups:
        drop = drop_lowest(g, channel_importance(model, g), g.size - keep[g.key])
        assert len(drop) == g.size - keep[g.key]
        zero_channels(model, g, drop)
    reference = reference_outputs(model, (3, 64, 64))
    record = harvest(model, (3, 64, 64))
    assert cut_differs(reference, model) is None and record["macs_after"] == planned


def budget_first_kept(group, count):
    from compress.structured.budget import first_kept
    return first_kept(group, count)


class SizedByAttribute(nn.Module):
    """A stream's half read through a reshape to an attribute: the cut would have to set it for one
    producer's share only; the stream stays whole."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), 8
        self.r, self.q = nn.Conv1d(8, 4, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        u, v = _shuf(torch.cat([self.a(x), self.b(x)], 1), 2).chunk(2, dim=1)
        n, _, h, w = u.shape
        return self.r(u.reshape(n, self.c, h * w)).mean(2) + self.q(v).mean((2, 3))


class ReadBeside(nn.Module):
    """A producer read straight as well: dead channels with a bias are constants there (only its
    BatchNorm zeroes them for the stream), so the harvest keeps them."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
        self.bna, self.bnb = nn.BatchNorm2d(8), nn.BatchNorm2d(8)
        self.side, self.r = nn.Conv2d(8, 4, 1), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        a = self.a(x)
        return self.r(_shuf(torch.cat([self.bna(a), self.bnb(self.b(x))], 1), 2)) + self.side(a)


def test_a_stream_sized_by_an_attribute_or_read_beside_its_producer_is_never_cut_wrong():
    model, x = SizedByAttribute().eval(), torch.randn(2, 3, 6, 6)
    assert not _streams(channel_groups(model, x))
    a = next(g for g in channel_groups(model, x) if "a" in g.producers)
    assert not a.prunable and "attribute" in a.blockers[0]
    model = ReadBeside().eval()
    with torch.no_grad():
        model.a.weight[:4] = 0
        model.a.bias[:4] = 1.0
        model.bna.weight[:4] = model.bna.bias[:4] = 0
        model.b.weight[:4] = model.b.bias[:4] = 0
    x, want = torch.randn(2, 3, 6, 6), None
    with torch.no_grad():
        want = model(x)
    result = harvest_channels(model, channel_groups(model, torch.zeros(2, 3, 6, 6)), (3, 6, 6))
    assert "a" not in result.keep
    with torch.no_grad():
        assert torch.allclose(model(x), want)


def test_a_concatenation_along_a_computed_dim_blocks_instead_of_refusing_the_model():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.r = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), nn.Conv2d(16, 4, 1)

        def forward(self, x):
            a = self.a(x)
            return self.r(torch.cat([a, self.b(x)], dim=a.dim() - 3))
    groups = channel_groups(Net().eval(), torch.randn(2, 3, 4, 4))
    a = next(g for g in groups if g.producers == ["a"])
    assert not a.prunable and "computed at run time" in a.blockers[0]
