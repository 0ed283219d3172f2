"""nn.RNN / nn.LSTM / nn.GRU: hidden units are cut exactly (one or more layers, either direction; the
output and, one direction, the final state), any recurrent layer's input features are cut; what is not cut yet is refused with
the reason, never cut wrongly."""
import copy

import pytest
import torch
from torch import nn

from compress.pruners import TrainPlan
from compress.pruners.greg import GRegOptions, GRegPruner
from compress.structured import channel_groups, channel_importance, remove_channels
from compress.structured.structure import harvest
from test_channel_rules import _randomise_norms, blockers, cut_vs_masked


class ConvRecurrent(nn.Module):
    """A CRNN: conv features over time (width) → Linear → recurrent layer → per-step Linear, or the
    final state → Linear (`use_state`)."""

    def __init__(self, kind=nn.LSTM, use_state=False, batch_first=True, **rnn):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.embed = nn.Linear(6 * 4, 10)
        self.rnn = kind(10, 12, batch_first=batch_first, **rnn)
        width = 12 * (2 if rnn.get("bidirectional") else 1)
        self.head = nn.Linear(width, 5)
        self.use_state, self.batch_first = use_state, batch_first

    def forward(self, x):                                   # x: [N, 1, 4, T]
        f = torch.relu(self.bn(self.conv(x)))               # [N, 6, 4, T]
        f = f.flatten(1, 2).transpose(1, 2)                 # [N, T, 24]
        f = torch.relu(self.embed(f))
        if not self.batch_first:
            f = f.transpose(0, 1)
        out, state = self.rnn(f)
        if self.use_state:
            h = state[0] if isinstance(state, tuple) else state
            return self.head(h[-1])
        return self.head(out)


X = torch.randn(3, 1, 4, 7)


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU, nn.RNN])
@pytest.mark.parametrize("use_state", [False, True])
def test_hidden_units_are_cut_exactly_from_the_output_and_the_final_state(kind, use_state):
    torch.manual_seed(0)
    model = _randomise_norms(ConvRecurrent(kind, use_state=use_state))
    cut, diff, groups = cut_vs_masked(model, X, ratio=0.5)
    assert diff < 1e-5
    assert cut == 3  # conv, embed and the recurrent layer's hidden units
    rnn = next(g for g in groups if g.producers == ["rnn"])
    assert rnn.consumers == [("head", 1)] and ("rnn", 1) in next(g for g in groups if g.producers == ["embed"]).consumers


def test_the_cut_layer_is_a_plain_smaller_recurrent_layer():
    torch.manual_seed(0)
    model = ConvRecurrent(nn.LSTM, batch_first=False).eval()
    groups = {g.producers[0]: g for g in channel_groups(model, X) if g.producers}
    remove_channels(model, groups["rnn"], torch.tensor([0, 3, 4, 11]))
    remove_channels(model, groups["embed"], torch.tensor([1, 2, 5]))
    rnn = model.rnn
    assert (rnn.hidden_size, rnn.input_size) == (4, 3)
    assert tuple(rnn.weight_ih_l0.shape) == (16, 3) and tuple(rnn.weight_hh_l0.shape) == (16, 4)
    assert tuple(rnn.bias_ih_l0.shape) == (16,) and model(X).shape == (7, 3, 5)
    assert [p.shape for p in rnn._flat_weights] == [p.shape for p in rnn.parameters()]
    fresh = nn.LSTM(3, 4)  # its state_dict loads into a plain layer of that size
    fresh.load_state_dict(rnn.state_dict())


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU])
@pytest.mark.parametrize("use_state", [False, True])
def test_a_bidirectional_layer_keeps_as_many_units_in_each_direction(kind, use_state):
    """Its output is [forward | backward]: cut evenly, exactly; its final state stacks the directions on
    its first axis, so using it keeps the units whole."""
    torch.manual_seed(0)
    model = _randomise_norms(ConvRecurrent(kind, bidirectional=True, use_state=use_state))
    if use_state:
        model.head = nn.Linear(12, 5)
    cut, diff, groups = cut_vs_masked(model, X, ratio=0.5)
    assert diff < 1e-5
    group = next(g for g in groups if g.producers == ["rnn"])
    if use_state:
        assert cut == 2 and not group.prunable and "final state of a bidirectional" in group.blockers[0]
    else:
        assert cut == 3 and group.blocks == 2
        smaller = ConvRecurrent(kind, bidirectional=True).eval()
        group = next(g for g in channel_groups(smaller, X) if g.producers == ["rnn"])
        remove_channels(smaller, group, torch.tensor([0, 4, 5, 12, 20, 23]))
        assert smaller.rnn.hidden_size == 3 and smaller(X).shape == (3, 7, 5)
        with pytest.raises(ValueError, match="same number of channels kept"):
            remove_channels(smaller, next(g for g in channel_groups(smaller, X) if g.producers == ["rnn"]),
                            torch.tensor([0, 1, 3]))


class CellState(nn.Module):
    """A projected LSTM whose final states feed heads: h_n carries its projections, c_n its cells."""

    def __init__(self, **lstm):
        super().__init__()
        self.embed, self.rnn = nn.Linear(6, 10), nn.LSTM(10, 12, proj_size=5, **lstm)
        self.head, self.h_head = nn.Linear(12, 3), nn.Linear(5, 3)

    def forward(self, x):                                   # x: [T, N, 6]
        out, (h, c) = self.rnn(torch.relu(self.embed(x)))
        return self.head(c[-1]) + self.h_head(h[-1])


@pytest.mark.parametrize("layers, bidirectional", [(1, False), (3, False), (2, True)])
def test_a_projected_lstm_cuts_its_cells_and_its_projections_exactly(layers, bidirectional):
    """Two groups: its projections (its output and h_n) and its cells (c_n only); both cut exactly, in
    every layer and direction, and the cut layer is a plain smaller projected LSTM."""
    torch.manual_seed(0)
    model = _randomise_norms(ConvRecurrent(nn.LSTM, proj_size=4, num_layers=layers, bidirectional=bidirectional))
    directions = 2 if bidirectional else 1
    model.head = nn.Linear(4 * directions, 5)
    keys = {g.key: g for g in channel_groups(model, X)}
    cut, diff, groups = cut_vs_masked(model, X, ratio=0.5)
    assert diff < 1e-5 and cut == 4  # conv, embed, the projections and the cells
    assert keys["rnn"].size == 4 * directions and keys["rnn:cells"].size == 12 * directions
    assert keys["rnn:cells"].consumers == [] and keys["rnn"].consumers == [("head", 1)]
    smaller = copy.deepcopy(model).eval()
    fresh = {g.key: g for g in channel_groups(smaller, X)}
    remove_channels(smaller, fresh["rnn:cells"], torch.cat([d * 12 + torch.arange(7) for d in range(directions)]))
    remove_channels(smaller, fresh["rnn"], torch.tensor([0, 2] if directions == 1 else [0, 2, 5, 6]))
    rnn = smaller.rnn
    assert (rnn.hidden_size, rnn.proj_size) == (7, 2)
    plain = nn.LSTM(10, 7, proj_size=2, num_layers=layers, bidirectional=bidirectional)
    plain.load_state_dict(rnn.state_dict())  # a plain layer of that size
    assert [p.shape for p in rnn._flat_weights] == [p.shape for p in rnn.parameters()]
    assert smaller(X).shape[-1] == 5


@pytest.mark.parametrize("layers", [1, 2])
def test_a_projected_lstms_cells_reach_a_consumer_of_its_cell_state(layers):
    torch.manual_seed(0)
    model = CellState(num_layers=layers)
    x = torch.randn(7, 3, 6)
    cells = next(g for g in channel_groups(model, x) if g.key == "rnn:cells")
    cut, diff, groups = cut_vs_masked(model, x, ratio=0.5)
    assert diff < 1e-5 and cut == 3
    assert cells.consumers == [("head", 1)] and cells.size == 12
    assert next(g for g in groups if g.key == "rnn").consumers == [("h_head", 1)]


def test_a_projected_lstm_given_an_initial_state_stays_whole():
    class Stateful(CellState):
        def forward(self, x):
            h0, c0 = torch.zeros(1, x.shape[1], 5), torch.zeros(1, x.shape[1], 12)
            out, _ = self.rnn(torch.relu(self.embed(x)), (h0, c0))
            return out

    groups = channel_groups(Stateful().eval(), torch.randn(7, 3, 6))
    for key in ("rnn", "rnn:cells"):
        grp = next(g for g in groups if g.key == key or (not g.producers and g.size == (5 if key == "rnn" else 12)))
        assert not grp.prunable and any("initial state" in b for b in grp.blockers)


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU, nn.RNN])
@pytest.mark.parametrize("bidirectional, use_state", [(False, False), (False, True), (True, False)])
def test_a_stacked_layer_cuts_each_unit_in_every_layer_exactly(kind, bidirectional, use_state):
    """One hidden size for all layers: channel u is unit u of every layer (and the next layer's input
    columns that read it); the final state h_n [layers, batch, hidden] carries the channels too."""
    torch.manual_seed(0)
    model = _randomise_norms(ConvRecurrent(kind, num_layers=3, bidirectional=bidirectional, use_state=use_state))
    cut, diff, groups = cut_vs_masked(model, X, ratio=0.5)
    assert diff < 1e-5 and cut == 3
    smaller = ConvRecurrent(kind, num_layers=3, bidirectional=bidirectional, use_state=use_state).eval()
    group = next(g for g in channel_groups(smaller, X) if g.producers == ["rnn"])
    keep = torch.tensor([0, 4, 5, 12, 20, 23]) if bidirectional else torch.tensor([1, 4, 11])
    remove_channels(smaller, group, keep)
    rnn, gates = smaller.rnn, {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}[kind]
    assert rnn.hidden_size == 3
    width = 3 * (2 if bidirectional else 1)
    assert tuple(rnn.weight_ih_l1.shape) == (3 * gates, width) and tuple(rnn.weight_hh_l2.shape) == (3 * gates, 3)
    fresh = kind(10, 3, num_layers=3, bidirectional=bidirectional)  # loads into a plain layer of that size
    fresh.load_state_dict(rnn.state_dict())
    assert [p.shape for p in rnn._flat_weights] == [p.shape for p in rnn.parameters()]


def test_a_stacked_layer_reads_the_kept_units_of_the_layer_below():
    """Layer 1's input columns are layer 0's units, [forward | backward]: the cut keeps exactly those
    columns (checked value by value, not only in shape)."""
    torch.manual_seed(0)
    rnn = nn.GRU(5, 4, num_layers=2, bidirectional=True)
    before = {k: v.clone() for k, v in rnn.state_dict().items()}
    from compress.structured.recurrent import cut_recurrent_hidden
    keep = torch.tensor([1, 2, 4, 7])  # forward units 1, 2; backward units 0, 3
    cut_recurrent_hidden(rnn, keep)
    rows_f = torch.cat([g * 4 + torch.tensor([1, 2]) for g in range(3)])
    rows_b = torch.cat([g * 4 + torch.tensor([0, 3]) for g in range(3)])
    assert torch.equal(rnn.weight_ih_l1, before["weight_ih_l1"][rows_f][:, keep])
    assert torch.equal(rnn.weight_ih_l1_reverse, before["weight_ih_l1_reverse"][rows_b][:, keep])
    assert torch.equal(rnn.weight_hh_l1_reverse, before["weight_hh_l1_reverse"][rows_b][:, [0, 3]])
    assert torch.equal(rnn.weight_ih_l0, before["weight_ih_l0"][rows_f])  # layer 0 reads the input


class WithState(nn.Module):
    def __init__(self, whole_tuple=False):
        super().__init__()
        self.embed, self.rnn, self.head = nn.Linear(6, 8), nn.GRU(8, 10, batch_first=True), nn.Linear(10, 3)
        self.whole_tuple = whole_tuple

    def forward(self, x, h0=None):
        if self.whole_tuple:
            return self.rnn(self.embed(x))
        out, _ = self.rnn(self.embed(x), torch.zeros(1, x.shape[0], 10))
        return self.head(out)


@pytest.mark.parametrize("whole_tuple, why", [(False, "initial state"), (True, "whole tuple")])
def test_an_initial_state_or_the_result_used_whole_keeps_the_hidden_units(whole_tuple, why):
    groups = channel_groups(WithState(whole_tuple).eval(), torch.randn(2, 5, 6))
    rnn = next(g for g in groups if g.size == 10)
    assert not rnn.prunable and any(why in b or "model output" in b for b in rnn.blockers)
    assert next(g for g in groups if g.producers == ["embed"]).prunable


def test_importance_greg_and_harvest_see_every_gate_of_a_unit():
    torch.manual_seed(0)
    model = ConvRecurrent(nn.GRU).eval()
    group = next(g for g in channel_groups(model, X) if g.producers == ["rnn"])
    with torch.no_grad():
        for t in (model.rnn.weight_ih_l0, model.rnn.weight_hh_l0):
            t.zero_()
            t[2 * 12 + 7] = 1.0  # unit 7, third gate only
    scores = channel_importance(model, group)
    assert scores[7] == 10 + 12 and scores.sum() == 22

    # GReg's filter penalty reaches the rows of all three gates of a picked unit, in both weights
    model = ConvRecurrent(nn.GRU)
    pruner = GRegPruner(GRegOptions(granularity="filter", sparsity=0.5, pick_after=0.0, update_reg_interval=1,
                                    reg_granularity_prune=0.5))
    pruner.attach(model, ["conv", "embed", "rnn", "head"], TrainPlan(2, 4, lambda s: 0.1, input_shape=(1, 4, 7)))
    pruner.begin_epoch(0)
    unit = next(k for k, g in pruner.groups.items() if g.producers == ["rnn"])
    picked = torch.nonzero(pruner.pruned[unit]).flatten()
    model(X).sum().backward()
    before = model.rnn.weight_hh_l0.grad.clone()
    pruner.after_backward(0)
    changed = (model.rnn.weight_hh_l0.grad != before).any(1)
    rows = torch.cat([g * 12 + picked for g in range(3)])
    assert changed[rows].all() and changed.sum() == len(rows)

    # the harvest cuts out units whose rows and biases are all zero, and no other
    model = _randomise_norms(ConvRecurrent(nn.LSTM)).eval()
    with torch.no_grad():
        for t in (model.rnn.weight_ih_l0, model.rnn.weight_hh_l0, model.rnn.bias_ih_l0, model.rnn.bias_hh_l0):
            t.view(4, 12, -1)[:, [1, 5]] = 0
        model.rnn.weight_ih_l0.view(4, 12, -1)[:, 9] = 0  # unit 9 keeps its recurrent weights: it stays
        for t in (model.rnn.weight_ih_l0, model.rnn.weight_hh_l0):
            t.view(4, 12, -1)[:, 3] = 0  # unit 3 keeps its biases: its state still moves, it stays
    with torch.no_grad():
        want = model(X)
        record = harvest(model, (1, 4, 7))
        assert model.rnn.hidden_size == 10 and record["keep"]["rnn"] == [0, 2, 3, 4, 6, 7, 8, 9, 10, 11]
        assert model.rnn.bias_ih_l0.view(4, 10)[:, 2].abs().sum() > 0
        assert torch.allclose(model(X), want, atol=1e-5)


def test_importance_and_harvest_of_a_projected_lstm_tell_cells_from_projections():
    torch.manual_seed(0)
    model = _randomise_norms(ConvRecurrent(nn.LSTM, proj_size=4)).eval()
    model.head = nn.Linear(4, 5)
    groups = {g.key: g for g in channel_groups(model, X)}
    assert len(channel_importance(model, groups["rnn"])) == 4 and len(channel_importance(model, groups["rnn:cells"])) == 12
    with torch.no_grad():
        for t in (model.rnn.weight_ih_l0, model.rnn.weight_hh_l0, model.rnn.bias_ih_l0, model.rnn.bias_hh_l0):
            t.view(4, 12, -1)[:, [1, 5]] = 0  # cells 1 and 5
        model.rnn.weight_hr_l0[2] = 0  # projection 2
        want = model(X)
        record = harvest(model, (1, 4, 7))
        assert record["keep"]["rnn:cells"] == [0, 2, 3, 4, 6, 7, 8, 9, 10, 11] and record["keep"]["rnn"] == [0, 1, 3]
        assert (model.rnn.hidden_size, model.rnn.proj_size) == (10, 3)
        assert torch.allclose(model(X), want, atol=1e-5)


def test_the_harvest_removes_a_stacked_layers_unit_only_when_it_is_zero_in_every_layer():
    torch.manual_seed(0)
    model = _randomise_norms(ConvRecurrent(nn.LSTM, num_layers=2)).eval()
    rnn = model.rnn
    with torch.no_grad():
        for k in (0, 1):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(rnn, f"{name}_l{k}").view(4, 12, -1)[:, 2] = 0  # unit 2: zero in both layers
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(rnn, f"{name}_l0").view(4, 12, -1)[:, 6] = 0  # unit 6: only in layer 0, it stays
        want = model(X)
        record = harvest(model, (1, 4, 7))
        assert record["keep"]["rnn"] == [u for u in range(12) if u != 2] and rnn.hidden_size == 11
        assert torch.allclose(model(X), want, atol=1e-5)


class RowLSTM(nn.Module):
    """Image rows as time steps, the last step classified (as a user's model would read digits)."""

    def __init__(self, kind=nn.LSTM, layers=1):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.rnn, self.head = kind(4 * 8, 16, batch_first=True, num_layers=layers), nn.Linear(16, 10)

    def forward(self, x):
        f = torch.relu(self.bn(self.stem(x))).permute(0, 2, 1, 3).flatten(2)  # [N, H, 4·W]
        out, _ = self.rnn(f)
        return self.head(out[:, -1])


@pytest.mark.parametrize("kind, layers", [(nn.LSTM, 1), (nn.GRU, 1), (nn.LSTM, 2)])
def test_channel_methods_select_recurrent_units_and_the_cut_model_counts_and_exports(kind, layers, tmp_path):
    from compress.flops import count_macs
    from compress.pruners.channels import selected_groups
    from compress.structured import zero_channels
    from deploy.export import export_onnx
    from deploy.latency import make_session

    torch.manual_seed(0)
    model = RowLSTM(kind, layers).eval()
    chosen, whole = selected_groups(model, ["stem", "head"], (1, 8, 8), "test")  # the weight-level selection
    group = next(g for g in chosen.values() if g.producers == ["rnn"])
    before = count_macs(model, (1, 8, 8))
    gates = 4 if kind is nn.LSTM else 3
    macs = 8 * gates * 16 * (32 + 16) + (layers - 1) * 8 * gates * 16 * (16 + 16)  # 8 steps, every gate
    assert before["per_layer"]["rnn"] == (macs,) * 2
    assert before["dense"] == macs + 4 * 64 * 9 + 160
    zero_channels(model, group, torch.arange(0, 16, 2))
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        want = model(x)
        record = harvest(model, (1, 8, 8))
        assert model.rnn.hidden_size == 8 and record["keep"]["rnn"] == list(range(1, 16, 2))
        assert torch.allclose(model(x), want, atol=1e-5)
    after = count_macs(model, (1, 8, 8))
    assert after["per_layer"]["rnn"][0] == 8 * gates * 8 * (32 + 8) + (layers - 1) * 8 * gates * 8 * (8 + 8)
    export_onnx(model, x, tmp_path / "m.onnx")
    got = make_session(tmp_path / "m.onnx").run(None, {"input": x.numpy()})[0]
    assert abs(got - want.numpy()).max() < 1e-4


class MergedRows(nn.Module):
    """[B, C, H, W] → [B, C·H, W]: read per time step by a Linear (channels each H entries wide: cut), or
    by a Conv1d that mixes the merged entries as its own channels (kept whole)."""

    def __init__(self, conv_after: bool):
        super().__init__()
        self.c = nn.Conv2d(2, 6, 3, padding=1)
        self.conv_after = conv_after
        self.read = nn.Conv1d(6 * 4, 5, 1) if conv_after else nn.Linear(6 * 4, 5)

    def forward(self, x):
        f = torch.relu(self.c(x)).flatten(1, 2)  # [B, 24, W]
        return self.read(f) if self.conv_after else self.read(f.transpose(1, 2))


@pytest.mark.parametrize("conv_after", [False, True])
def test_merging_the_dims_after_the_channels_keeps_them_whole_per_channel(conv_after):
    torch.manual_seed(0)
    cut, diff, groups = cut_vs_masked(MergedRows(conv_after), torch.randn(2, 2, 4, 5), ratio=0.5)
    assert diff < 1e-5 and cut == (0 if conv_after else 1)
    if not conv_after:
        assert next(g for g in groups if g.producers == ["c"]).consumers == [("read", 4)]


# --- cases from a hostile review: each failed (crash, broken cut model, wrong count) before its fix ---

class EncoderDecoder(nn.Module):
    """The encoder's final state is the decoder's initial state: both keep their width."""

    def __init__(self, kind=nn.GRU):
        super().__init__()
        self.emb = nn.Linear(6, 8)
        self.enc, self.dec, self.head = kind(8, 10, batch_first=True), kind(8, 10, batch_first=True), nn.Linear(10, 3)

    def forward(self, x):
        e = torch.relu(self.emb(x))
        _, state = self.enc(e)
        out, _ = self.dec(e, state)
        return self.head(out)


@pytest.mark.parametrize("kind", [nn.GRU, nn.LSTM])
def test_the_group_giving_an_initial_state_keeps_its_width(kind):
    torch.manual_seed(0)
    cut, diff, groups = cut_vs_masked(EncoderDecoder(kind), torch.randn(3, 5, 6), 0.5)
    assert diff < 1e-5 and cut == 1  # the embedding only
    assert any("initial state" in b for b in blockers(groups, "enc"))


class SplitAfterLSTM(nn.Module):
    """A residual add of a concatenation and one group (the group is split to match) after an LSTM:
    the split must carry the LSTM's (h_n, c_n) entry along."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(6, 10, batch_first=True)
        self.a, self.b, self.c, self.z = nn.Linear(10, 4), nn.Linear(10, 4), nn.Linear(10, 8), nn.Linear(10, 4)
        self.d, self.head = nn.Linear(12, 3), nn.Linear(8, 3)

    def forward(self, x):
        o, _ = self.rnn(x)
        c = self.c(o)
        d = self.d(torch.cat([c, self.z(o)], -1))
        return self.head(torch.cat([self.a(o), self.b(o)], -1) + c) + d


def test_a_group_split_after_a_recurrent_layer():
    torch.manual_seed(0)
    cut, diff, _ = cut_vs_masked(SplitAfterLSTM(), torch.randn(2, 5, 6), 0.5)
    assert diff < 1e-5 and cut >= 2


class FixedView(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.rnn, self.head = nn.Conv2d(1, 6, 3, padding=1), nn.LSTM(24, 8), nn.Linear(8, 3)

    def forward(self, x):
        f = torch.relu(self.conv(x))
        f = f.view(f.shape[0], 24, f.shape[3])  # 6·4 written in the code
        return self.head(self.rnn(f.permute(2, 0, 1))[0])


def test_a_merge_after_the_channels_to_a_size_written_in_the_code_blocks():
    cut, diff, groups = cut_vs_masked(FixedView(), torch.randn(3, 1, 4, 8), 0.5)
    assert diff < 1e-5 and any("fixed 24" in b for b in blockers(groups, "conv"))


def test_the_harvest_reads_every_column_of_a_channel_a_recurrent_layer_consumes():
    """Channels 1 and 3 lose their filters; 1 carries relu(0.5) (nothing to fold into an LSTM: it stays),
    3 carries relu(-0.5) = 0 (removed). Each channel is 4 input columns of the LSTM."""
    class CRNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6)
            self.rnn, self.head = nn.LSTM(24, 8, batch_first=True), nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.rnn(torch.relu(self.bn(self.conv(x))).flatten(1, 2).transpose(1, 2))[0])

    model = CRNN().eval()
    with torch.no_grad():
        model.conv.weight[[1, 3]] = 0
        model.conv.bias.zero_()
        model.bn.running_mean.zero_()
        model.bn.bias[:4] = torch.tensor([-1.0, 0.5, 0.0, -0.5])
        want = model(X)
        record = harvest(model, (1, 4, 7))
        assert record["keep"]["conv"] == [0, 1, 2, 4, 5] and torch.allclose(model(X), want, atol=1e-5)


class Packed(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(6, 10, batch_first=True)

    def forward(self, e):
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
        p = pack_padded_sequence(e, [e.shape[1]] * e.shape[0], batch_first=True)
        return pad_packed_sequence(self.rnn(p)[0], batch_first=True)[0]


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(6, 10, batch_first=True)

    def forward(self, x):
        return self.rnn(x)[0] + self.rnn(2 * x)[0]


def test_macs_of_packed_sequences_and_of_a_layer_called_twice():
    from compress.flops import count_macs
    once = 5 * 4 * 10 * (6 + 10)  # 5 steps × 4 gates × 10 units × (6 inputs + 10 states)
    assert count_macs(Twice(), (5, 6))["dense"] == 2 * once
    packed = nn.Sequential(Packed(), nn.Linear(10, 3)).eval()
    assert count_macs(packed, (5, 6))["per_layer"]["0.rnn"][0] == 5 * 3 * 10 * 16
    assert harvest(packed, (5, 6))["keep"] == {}  # refused (fx cannot trace the packing), not crashed


class ReturnsState(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.rnn, self.head = nn.Linear(6, 8), nn.LSTM(8, 10, batch_first=True), nn.Linear(10, 3)

    def forward(self, x):
        out, state = self.rnn(self.embed(x))
        return self.head(out), state  # (h_n, c_n) handed on whole


def test_an_lstm_state_tuple_handed_on_whole_keeps_the_units():
    groups = channel_groups(ReturnsState().eval(), torch.randn(2, 5, 6))
    assert any("used whole" in b for b in blockers(groups, "rnn"))
    assert next(g for g in groups if g.producers == ["embed"]).prunable


@pytest.mark.parametrize("layers", [1, 2])
def test_a_projected_layer_keeps_the_rows_and_columns_of_the_kept_cells_and_projections(layers):
    from compress.structured.recurrent import cut_recurrent_hidden
    layer = nn.LSTM(4, 6, num_layers=layers, proj_size=3)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    cut_recurrent_hidden(layer, torch.tensor([0, 2]))
    cut_recurrent_hidden(layer, torch.tensor([1, 3, 5]), cells=True)
    assert (layer.hidden_size, layer.proj_size) == (3, 2)
    rows = torch.cat([g * 6 + torch.tensor([1, 3, 5]) for g in range(4)])
    for k in range(layers):
        assert torch.equal(layer.state_dict()[f"weight_hr_l{k}"], before[f"weight_hr_l{k}"][[0, 2]][:, [1, 3, 5]])
        assert torch.equal(layer.state_dict()[f"weight_hh_l{k}"], before[f"weight_hh_l{k}"][rows][:, [0, 2]])
        assert torch.equal(layer.state_dict()[f"bias_ih_l{k}"], before[f"bias_ih_l{k}"][rows])
    if layers == 2:  # the second layer reads the first one's kept projections
        assert torch.equal(layer.state_dict()["weight_ih_l1"], before["weight_ih_l1"][rows][:, [0, 2]])


def test_a_projected_lstm_is_not_cut_to_as_many_cells_as_projections():
    """torch's kernel reads such a layer as one without projection and fails when it runs."""
    torch.manual_seed(0)
    model, x = CellState().eval(), torch.randn(7, 3, 6)
    cells = next(g for g in channel_groups(model, x) if g.key == "rnn:cells")
    with pytest.raises(ValueError, match="as many projections as cells"):
        remove_channels(model, cells, torch.arange(5))
    assert model.rnn.hidden_size == 12 and model(x).shape == (3, 3)


def test_exporting_a_projected_lstm_is_a_clear_error_not_a_broken_file(tmp_path):
    """torch's exporter writes it as an ONNX LSTM, which has no projection: onnxruntime then fails
    on the cell state's shape. Refused up front with the layer's name, nothing written."""
    from compress.errors import UserError
    from deploy.export import export_onnx

    with pytest.raises(UserError, match="rnn is an nn.LSTM with proj_size"):
        export_onnx(CellState().eval(), torch.randn(7, 3, 6), tmp_path / "m.onnx")
    assert not any(tmp_path.iterdir())
