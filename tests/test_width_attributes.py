"""A reshape to a channel count read from `self` (torchvision ViT's `self.hidden_dim`) lets the channels
be cut only when that attribute alone fixes that reshape: a number that merely equals an attribute, an
attribute read elsewhere too (a scale, a second reshape, train-mode code) keeps the channels whole."""
import pytest
import torch
from torch import nn

from compress.structured import channel_groups
from test_channel_rules import cut_vs_masked


class Tokens(nn.Module):
    """conv → reshape to [B, C, H·W] → mean over tokens → Linear; how the reshape gets C varies."""

    def __init__(self, how: str):
        super().__init__()
        self.conv, self.fc, self.how = nn.Conv2d(3, 16, 3, padding=1), nn.Linear(16, 5), how
        self.dim = 16

    def forward(self, x):
        y = self.conv(x)
        if self.how == "attribute":
            y = y.reshape(y.shape[0], self.dim, -1)
        elif self.how == "literal":  # 16 written in the code, equal to self.dim by chance
            y = y.reshape(y.shape[0], 16, -1)
        elif self.how == "also a scale":
            y = y.reshape(y.shape[0], self.dim, -1) * self.dim ** -0.5
        elif self.how == "train only":
            y = y.reshape(y.shape[0], self.dim, -1)
            if self.training:
                y = y * (self.dim / 16)
        return self.fc(y.mean(-1))


def _conv_group(model, x):
    return next(g for g in channel_groups(model, x) if "conv" in g.producers)


X = torch.randn(2, 3, 4, 4)


def test_the_attribute_that_fixes_the_reshape_is_set_by_the_cut():
    torch.manual_seed(0)
    model = Tokens("attribute").eval()
    group = _conv_group(model, X)
    assert group.prunable and ("", "dim", 1) in group.counters
    cut, diff, _ = cut_vs_masked(model, X, ratio=0.5)
    assert cut == 1 and diff < 1e-5


@pytest.mark.parametrize("how, why", [("literal", "dim is read nowhere"), ("also a scale", "dim is read elsewhere"),
                                      ("train only", "dim is read elsewhere")])
def test_an_attribute_that_is_not_only_the_reshapes_width_keeps_the_channels(how, why):
    group = _conv_group(Tokens(how).eval(), X)
    assert not group.prunable and not group.counters and any(why in b for b in group.blockers)


class TwoBranches(nn.Module):
    """One attribute fixes two reshapes (two groups): cutting one group differently would break the other."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 1), nn.Conv2d(3, 16, 1)
        self.fa, self.fb, self.dim = nn.Linear(16, 4), nn.Linear(16, 4), 16

    def forward(self, x):
        n = x.shape[0]
        return self.fa(self.a(x).reshape(n, self.dim, -1).mean(-1)) + self.fb(self.b(x).reshape(n, self.dim, -1).mean(-1))


class Child(nn.Module):
    def __init__(self):
        super().__init__()
        self.width = 16


class ParentReadsChild(nn.Module):
    """The reshape is in the parent's code but reads the child's attribute; the parent holds the same
    number in an attribute of its own."""

    def __init__(self):
        super().__init__()
        self.conv, self.child, self.fc, self.n_out = nn.Conv2d(3, 16, 1), Child(), nn.Linear(16, 4), 16

    def forward(self, x):
        return self.fc(self.conv(x).reshape(x.shape[0], self.child.width, -1).mean(-1))


@pytest.mark.parametrize("model", [TwoBranches(), ParentReadsChild()], ids=["two reshapes", "another module's"])
def test_shared_or_foreign_attributes_keep_the_channels(model):
    groups = [g for g in channel_groups(model.eval(), X) if g.producers and g.producers[0] in ("a", "b", "conv")]
    assert groups and all(not g.prunable and not g.counters for g in groups)
    assert all("on the channel axis" in " ".join(g.blockers) for g in groups)


class ManyTokens(nn.Module):
    """Several Tokens side by side in one model: their attributes are proved in one batch."""

    def __init__(self, hows):
        super().__init__()
        self.parts = nn.ModuleList(Tokens(h) for h in hows)

    def forward(self, x):
        return sum(p(x) for p in self.parts)


def test_attributes_proved_together_get_the_verdicts_they_get_alone():
    """The batch (every attribute probed at once) settles each one as a proof of it alone would."""
    hows = ["attribute", "literal", "also a scale", "attribute", "train only"]
    model = ManyTokens(hows).eval()
    groups = {g.producers[0]: g for g in channel_groups(model, X) if g.producers and g.producers[0].endswith("conv")}
    for i, how in enumerate(hows):
        alone = _conv_group(Tokens(how).eval(), X)
        together = groups[f"parts.{i}.conv"]
        assert together.prunable == alone.prunable, how
        assert [c[1:] for c in together.counters] == [c[1:] for c in alone.counters], how
    cut, diff, _ = cut_vs_masked(model, X, ratio=0.5)
    assert cut == 2 and diff < 1e-5


class Entangled(nn.Module):
    """A scale computed from two attributes at once (`self.w - self.other.dim + 1`, 1 here): the batch
    cannot pin its change on one attribute, so each is proved alone (and fails: each is read twice)."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc, self.w = nn.Conv2d(3, 16, 3, padding=1), nn.Linear(16, 5), 16
        self.other = Tokens("attribute")

    def forward(self, x):
        y = self.conv(x).reshape(x.shape[0], self.w, -1) * (self.w - self.other.dim + 1)
        return self.fc(y.mean(-1)) + self.other(x)


def test_a_value_computed_from_two_attributes_sends_the_batch_to_proofs_one_by_one(monkeypatch):
    from compress.structured import width_attributes

    alone = []
    real = width_attributes.problem
    monkeypatch.setattr(width_attributes, "problem", lambda *a, **k: alone.append(a[3:5]) or real(*a, **k))
    groups = {g.producers[0]: g for g in channel_groups(Entangled().eval(), X) if g.producers}
    assert sorted(alone) == [("", "w"), ("other", "dim")]
    assert not groups["conv"].prunable and not groups["other.conv"].prunable
