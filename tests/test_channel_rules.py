"""Channel rules on models nobody here tuned for: shared weights, a module called twice, functional
norms, per-channel ops, optional forward arguments, a user's own module with a registered rule.
Every cut is compared with the masked model on random (seeded) keep sets; shared uses must block."""
import contextlib
import copy

import pytest
import torch
from torch import nn

from compress.structured import channel_groups, remove_channels, zero_channels
from compress.structured.budget import keep_count, random_kept
from compress.structured.rules import (MODULE_RULES, register_channelwise, register_elementwise,
                                      register_module_rule)


def random_keep(group, ratio, gen):
    """A seeded random keep set with the same count in every block of a grouped conv (one run where needed)."""
    return random_kept(group, keep_count(group.size, ratio, blocks=group.blocks), gen)


def cut_vs_masked(model, x, ratio=0.4, seed=0):
    """Cut every prunable group (random keep sets) and zero the same channels in a copy; returns
    (groups cut, max relative output difference, the groups)."""
    model = model.eval()
    groups = channel_groups(model, x)
    gen = torch.Generator().manual_seed(seed)
    masked, smaller = copy.deepcopy(model), copy.deepcopy(model)
    cut = 0
    for group, same in zip(groups, copy.deepcopy(groups)):
        if not group.prunable:
            continue
        keep = random_keep(group, ratio, gen)
        drop = torch.tensor(sorted(set(range(group.size)) - set(keep.tolist())), dtype=torch.long)
        remove_channels(smaller, group, keep)
        zero_channels(masked, same, drop)
        cut += 1
    with torch.no_grad():
        want, got = masked(x), smaller(x)
    assert want.abs().max() > 0, "the masked model outputs zeros: comparing with it proves nothing"
    return cut, float((got - want).abs().max() / want.abs().max().clamp_min(1e-6)), groups


@contextlib.contextmanager
def registered(cls, rule):
    """`rule` registered for `cls` inside the block; the registry as it was after it."""
    saved = dict(MODULE_RULES)
    register_module_rule(cls, rule)
    try:
        yield
    finally:
        MODULE_RULES.clear()
        MODULE_RULES.update(saved)


def blockers(groups, producer):
    return next(g.blockers for g in groups if producer in g.producers)


class TiedLinears(nn.Module):
    """Two Linear layers holding one weight tensor."""
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 4)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))))


class TransposedReuse(nn.Module):
    """An encoder whose weight the decoder also reads, transposed, through F.linear."""
    def __init__(self):
        super().__init__()
        self.enc, self.head = nn.Linear(12, 20), nn.Linear(12, 3)

    def forward(self, x):
        h = torch.relu(self.enc(x))
        return self.head(nn.functional.linear(h, self.enc.weight.t()))


class CalledTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.block, self.head = nn.Linear(10, 16), nn.Linear(16, 16), nn.Linear(16, 2)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        return self.head(self.block(torch.relu(self.block(h))))


class FlattenNormHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.flat = nn.Flatten()
        self.norm = nn.BatchNorm1d(8 * 4 * 4)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(self.norm(self.flat(torch.relu(self.conv(x)))))


class PerChannelOps(nn.Module):
    """InstanceNorm (with and without affine), PReLU with a slope per channel and a shared one."""
    def __init__(self):
        super().__init__()
        self.c1, self.n1, self.a1 = nn.Conv2d(3, 12, 3, padding=1), nn.InstanceNorm2d(12, affine=True), nn.PReLU(12)
        self.c2, self.n2, self.a2 = nn.Conv2d(12, 10, 3, padding=1), nn.InstanceNorm2d(10), nn.PReLU()
        self.c3 = nn.Conv2d(10, 4, 1)

    def forward(self, x):
        return self.c3(self.a2(self.n2(self.c2(self.a1(self.n1(self.c1(x)))))))


class BatchNormAct(nn.BatchNorm2d):
    """timm's fused norm + activation shape: a BatchNorm2d subclass calling F.batch_norm itself."""
    def __init__(self, n):
        super().__init__(n)
        self.act = nn.SiLU()

    def forward(self, x):
        x = nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                     self.training, self.momentum, self.eps)
        return self.act(x)


class FusedNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(3, 16, 3, padding=1), BatchNormAct(16)
        self.c2, self.n2 = nn.Conv2d(16, 16, 3, padding=1), BatchNormAct(16)
        self.head = nn.Conv2d(16, 5, 1)

    def forward(self, x):
        h = self.n1(self.c1(x))
        return self.head(h + self.n2(self.c2(h)))


class OptionalArgs(nn.Module):
    """A forward with extra optional arguments (as timm's ViT has): traced at their defaults."""
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 24), nn.Linear(24, 3)

    def forward(self, x, mask=None, scale: float = 1.0, return_features: bool = False):
        h = torch.relu(self.fc1(x))
        if mask is not None:
            h = h * mask
        return h if return_features else self.fc2(h) * scale


class Swish(nn.Module):
    """A user's own activation: fx would trace into it; a registered rule keeps it whole."""
    def forward(self, x):
        return x * torch.sigmoid(x)


class ChannelScale(nn.Module):
    """A user's own per-channel scale with a `weight` of one entry per channel."""
    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(n) + 0.5)

    def forward(self, x):
        return x * self.weight[None, :, None, None]


class UserModules(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.s1, self.act = nn.Conv2d(3, 12, 3, padding=1), ChannelScale(12), Swish()
        self.c2 = nn.Conv2d(12, 4, 1)

    def forward(self, x):
        return self.c2(self.act(self.s1(self.c1(x))))


def _randomise_norms(model):
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.affine:
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model


def test_tied_weights_block_both_layers():
    torch.manual_seed(0)
    model, x = TiedLinears(), torch.randn(4, 16)
    cut, diff, groups = cut_vs_masked(model, x)
    assert any("shared" in b for b in blockers(groups, "a")) and any("shared" in b for b in blockers(groups, "b"))
    assert diff < 1e-5  # nothing cut wrongly (before: 0.27 relative difference)


def test_weight_read_by_a_functional_call_blocks_its_group():
    torch.manual_seed(0)
    model, x = TransposedReuse(), torch.randn(4, 12)
    cut, diff, groups = cut_vs_masked(model, x)
    assert not next(g for g in groups if "enc" in g.producers).prunable
    assert diff < 1e-5


def test_module_called_twice_blocks_its_groups():
    torch.manual_seed(0)
    model, x = CalledTwice(), torch.randn(4, 10)
    cut, diff, groups = cut_vs_masked(model, x)
    assert any("block" in b and "2 uses" in b for b in blockers(groups, "block"))
    assert diff < 1e-5


def test_batchnorm1d_after_flatten_is_cut_per_flattened_input():
    torch.manual_seed(0)
    model, x = _randomise_norms(FlattenNormHead()), torch.randn(4, 3, 6, 6)
    cut, diff, groups = cut_vs_masked(model, x)
    assert cut == 1 and diff < 1e-5
    smaller = copy.deepcopy(model).eval()
    group = next(g for g in channel_groups(smaller, x) if g.prunable)
    remove_channels(smaller, group, torch.tensor([1, 4, 6]))
    assert smaller.norm.num_features == 3 * 16 and smaller.fc.in_features == 3 * 16
    smaller(x)  # runs


def test_instance_norm_and_prelu_pass_channels_through():
    torch.manual_seed(0)
    model, x = _randomise_norms(PerChannelOps()), torch.randn(2, 3, 8, 8)
    cut, diff, groups = cut_vs_masked(model, x)
    assert cut == 2 and diff < 1e-5
    assert "n1" in next(g for g in groups if "c1" in g.producers).passthrough
    assert "a1" in next(g for g in groups if "c1" in g.producers).passthrough


def test_functional_batch_norm_inside_a_fused_module_joins_its_module():
    torch.manual_seed(0)
    model, x = _randomise_norms(FusedNormNet()), torch.randn(2, 3, 8, 8)
    cut, diff, groups = cut_vs_masked(model, x)
    assert cut == 1 and diff < 1e-5
    group = next(g for g in groups if "c1" in g.producers)
    assert set(group.passthrough) == {"n1", "n2"} and set(group.producers) == {"c1", "c2"}


def test_optional_forward_arguments_are_traced_at_their_defaults():
    torch.manual_seed(0)
    cut, diff, groups = cut_vs_masked(OptionalArgs(), torch.randn(3, 8))
    assert cut == 1 and diff < 1e-5


def test_a_required_second_argument_is_a_one_line_refusal():
    class TwoInputs(nn.Module):
        def forward(self, x, y):
            return x + y
    with pytest.raises(ValueError, match="needs argument 'y'"):
        channel_groups(TwoInputs(), torch.randn(2, 3))


def test_a_users_module_blocks_until_a_rule_is_registered():
    torch.manual_seed(0)
    model, x = UserModules(), torch.randn(2, 3, 8, 8)
    groups = channel_groups(model, x)
    assert not next(g for g in groups if "c1" in g.producers).prunable  # fx sees mul with a view: blocked
    saved = dict(MODULE_RULES)
    try:
        register_channelwise(ChannelScale)
        register_elementwise(Swish)
        cut, diff, groups = cut_vs_masked(model, x)
        group = next(g for g in groups if "c1" in g.producers)
        assert group.prunable and "s1" in group.passthrough and cut == 1
        # Swish(0) = 0, so the removed channels stay zero: exact
        assert diff < 1e-5
        smaller = copy.deepcopy(model).eval()
        remove_channels(smaller, next(g for g in channel_groups(smaller, x) if g.prunable), torch.arange(5))
        assert smaller.s1.weight.shape == (5,)
    finally:
        MODULE_RULES.clear()
        MODULE_RULES.update(saved)


def test_unknown_module_blocks_naming_module_path_and_type():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.unshuffle, self.d = nn.Conv2d(4, 8, 1), nn.PixelUnshuffle(2), nn.Conv2d(32, 3, 1)

        def forward(self, x):
            return self.d(self.unshuffle(self.c(x).transpose(1, 2).transpose(1, 2)))
    groups = channel_groups(Net(), torch.randn(2, 4, 6, 6))  # the transposes are understood; the unshuffle is not
    assert blockers(groups, "c") == ["unsupported module unshuffle (PixelUnshuffle)"]


class GroupNormNet(nn.Module):
    """Conv → GroupNorm → ReLU, twice, with a residual: both norms sit in one group."""
    def __init__(self):
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16)
        self.c2, self.n2 = nn.Conv2d(16, 16, 3, padding=1), nn.GroupNorm(8, 16)
        self.mid, self.n3 = nn.Conv2d(16, 12, 1), nn.GroupNorm(3, 12, affine=False)
        self.head = nn.Conv2d(12, 5, 1)

    def forward(self, x):
        h = torch.relu(self.n1(self.c1(x)))
        h = h + torch.relu(self.n2(self.c2(h)))
        return self.head(torch.relu(self.n3(self.mid(h))))


def _randomise_affine(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.GroupNorm) and m.affine:
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model


def test_group_norm_keeps_the_statistics_of_the_masked_model():
    torch.manual_seed(0)
    model, x = _randomise_affine(GroupNormNet()), torch.randn(2, 3, 8, 8)
    cut, diff, groups = cut_vs_masked(model, x)
    assert cut == 1 and diff < 1e-5
    assert set(next(g for g in groups if "c1" in g.producers).passthrough) == {"n1", "n2"}
    assert "without affine" in blockers(groups, "mid")[0]  # −mean/std where the channel was: not removable


def test_group_norm_cut_twice_and_exported_matches_onnxruntime(tmp_path):
    import numpy as np
    import onnxruntime as ort

    torch.manual_seed(1)
    model, x = _randomise_affine(GroupNormNet()).eval(), torch.randn(2, 3, 8, 8)
    reference = copy.deepcopy(model)
    for keep in ([0, 2, 3, 5, 7, 8, 9, 10, 12, 13, 15], [0, 1, 3, 4, 6, 8, 9, 10]):  # a cut of a cut
        group = next(g for g in channel_groups(model, x) if "c1" in g.producers)
        full = list(range(group.size))
        drop = torch.tensor(sorted(set(full) - set(keep)), dtype=torch.long)
        zero_channels(reference, next(g for g in channel_groups(reference, x) if "c1" in g.producers),
                      _original_indices(model, drop))
        remove_channels(model, group, torch.tensor(keep))
    with torch.no_grad():
        want, got = reference(x), model(x)
    assert model.c1.out_channels == 8 and float((got - want).abs().max()) < 1e-5
    from deploy.export import export_onnx

    path = tmp_path / "gn.onnx"
    export_onnx(model, x, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(out - got.numpy()).max() < 1e-4


def _original_indices(model, drop):
    """Channels `drop` of the cut model's c1 group, as indices of the uncut model."""
    n1 = model.n1
    return n1.kept[drop] if hasattr(n1, "kept") else drop


def test_harvest_records_the_groups_left_whole_and_why():
    from compress.structured.structure import harvest

    torch.manual_seed(0)
    model = TiedLinears().eval()
    with torch.no_grad():
        model.head.weight[:, :4] = 0  # dead inputs of the head: a's group could lose them, were it not tied
    record = harvest(model, (16,))
    assert "a" in record["whole"] and "shared" in record["whole"]["a"]
    assert record["keep"] == {}


class TinyViT(nn.Module):
    """ViT's shape, written here: patch conv, tokens, class token, position embedding, pre-norm
    attention (qkv reshaped into heads) and MLP on a residual stream, the class token's output."""
    def __init__(self, dim=24, heads=3):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads  # fixed, as timm's Attention
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 5, dim))
        self.n1, self.qkv, self.proj = nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.n2, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, 40), nn.Linear(40, dim)
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 6)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        b, t, _ = x.shape
        q, k, v = self.qkv(self.n1(x)).reshape(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        a = nn.functional.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, -1))
        x = x + self.fc2(nn.functional.gelu(self.fc1(self.n2(x))))
        return self.head(self.norm(x)[:, 0])


class Windows(nn.Module):
    """Swin's shape: channels last, shifted with roll, split into windows and back."""
    def __init__(self):
        super().__init__()
        self.embed, self.norm, self.fc, self.out = nn.Conv2d(3, 16, 2, stride=2), nn.LayerNorm(16), \
            nn.Linear(16, 16), nn.Linear(16, 5)

    def forward(self, x):
        x = self.embed(x).permute(0, 2, 3, 1)  # [B, 4, 4, C]
        b, h, w, c = x.shape
        s = torch.roll(self.norm(x), shifts=(1, 1), dims=(1, 2))
        s = s.view(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, 4, c)
        s = self.fc(s).view(b, h // 2, w // 2, 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        x = x + torch.roll(s, shifts=(-1, -1), dims=(1, 2))
        return self.out(x.mean((1, 2)))


def test_vit_residual_stream_is_one_group_and_cuts_exactly():
    torch.manual_seed(0)
    model, x = TinyViT(), torch.randn(2, 3, 8, 8)
    cut, diff, groups = cut_vs_masked(model, x)
    stream = next(g for g in groups if "patch" in g.producers)
    assert set(stream.producers) == {"patch", "proj", "fc2"} and stream.prunable
    assert {t for t, _ in stream.parameters} == {"cls", "pos"}
    assert "reshape" in blockers(groups, "qkv")[0]  # heads: not cut (yet), and said so
    assert cut == 2 and diff < 1e-5  # the stream and the MLP's hidden units


def test_windows_rolls_and_channels_last_reshapes_keep_the_channels():
    torch.manual_seed(0)
    cut, diff, groups = cut_vs_masked(Windows(), torch.randn(2, 3, 8, 8))
    assert next(g for g in groups if "embed" in g.producers).prunable
    assert cut == 1 and diff < 1e-5


@pytest.mark.parametrize("index,axis,expected", [
    ((slice(None), 0), 2, 1), ((slice(None), slice(1, None)), 2, 2), ((Ellipsis, 0), 1, 1),
    ((slice(None), None, slice(None)), 1, 2), ((slice(None), slice(0, 2)), 1, None), ((0,), 0, None),
    ((slice(None), slice(None, None, 2), slice(None, None, 2), slice(None)), 3, 3)])
def test_where_the_channel_axis_lands_after_indexing(index, axis, expected):
    from compress.structured.ops import _index_axis
    assert _index_axis(index, 4, axis) == expected


def test_a_blocker_names_the_module_path_the_op_sits_in():
    groups = channel_groups(UserModules(), torch.randn(2, 3, 8, 8))
    assert blockers(groups, "c1")[0].endswith("(in s1: ChannelScale)")


class Branches(nn.Module):
    """Selective-kernel shape: two branches stacked on a new dim, weighted, summed back."""
    def __init__(self):
        super().__init__()
        self.stem, self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 12, 3, padding=1), nn.Conv2d(8, 12, 1)
        self.head = nn.Conv2d(12, 4, 1)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        s = torch.stack([self.a(h), self.b(h)], dim=1)  # [B, 2, C, H, W]
        return self.head(torch.relu(s.sum(1) + s.amax(1)))


def test_stacked_branches_are_one_group():
    torch.manual_seed(0)
    cut, diff, groups = cut_vs_masked(Branches(), torch.randn(2, 3, 8, 8))
    assert set(next(g for g in groups if "a" in g.producers).producers) == {"a", "b"}
    assert cut == 2 and diff < 1e-5


@pytest.mark.parametrize("name,shape", [("timm:resnet18", (1, 28, 28)), ("timm:efficientnet_b0", (3, 32, 32)),
                                        ("timm:deit_tiny_patch16_224", (3, 32, 32))])
def test_timm_models_by_name_cut_exactly(name, shape):
    """Models nobody here wrote, as a user names them (model.name = "timm:..."): every prunable group
    cut, the result equal to the masked model."""
    from compress.config.model import ModelConfig
    from compress.models import build_model

    torch.manual_seed(0)
    model = _randomise_norms(build_model(ModelConfig(name=name), shape, 10))
    cut, diff, groups = cut_vs_masked(model, torch.randn(2, *shape), ratio=0.5)
    assert cut >= 0.4 * len(groups) and diff < 1e-4


def test_an_unknown_timm_model_is_a_one_line_error():
    from compress.config.model import ModelConfig
    from compress.errors import UserError
    from compress.models import build_model

    with pytest.raises(UserError, match="timm has no model 'resnet_nonexistent'"):
        build_model(ModelConfig(name="timm:resnet_nonexistent"), (3, 32, 32), 10)


def test_a_slice_of_all_channels_keeps_them_whole():
    from compress.structured.ops import _index_axis
    assert _index_axis((slice(None), slice(None, 8)), 4, 1, size=8) == 1   # GhostNet's [:, :out_chs]
    assert _index_axis((slice(None), slice(None, 6)), 4, 1, size=8) is None
    assert _index_axis((slice(None), slice(0, 8, 2)), 4, 1, size=8) is None


class FunctionalLinear(nn.Linear):
    """timm's Linear shape: an nn.Linear subclass whose forward calls F.linear on its own tensors."""
    def forward(self, x):
        return nn.functional.linear(x, self.weight, self.bias)


class FunctionalHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.out = FunctionalLinear(6, 20), FunctionalLinear(20, 12), nn.Linear(12, 3)

    def forward(self, x):
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def test_a_linear_subclass_calling_f_linear_on_its_own_weight_is_that_linear():
    torch.manual_seed(0)
    cut, diff, groups = cut_vs_masked(FunctionalHead(), torch.randn(3, 6))
    assert cut == 2 and diff < 1e-5
    assert {p for g in groups for p in g.producers} >= {"fc1", "fc2"}


class LayerScaled(nn.Module):
    """timm's ConvNeXt layer scale: x.mul(gamma.reshape(1, -1, 1, 1)) with gamma of shape [C]."""
    def __init__(self):
        super().__init__()
        self.stem, self.conv, self.head = nn.Conv2d(3, 12, 1), nn.Conv2d(12, 12, 3, padding=1), nn.Conv2d(12, 4, 1)
        self.gamma = nn.Parameter(torch.rand(12) + 0.5)

    def forward(self, x):
        h = self.stem(x)
        return self.head(h + self.conv(h).mul(self.gamma.reshape(1, -1, 1, 1)))


def test_a_reshaped_per_channel_parameter_is_cut_with_its_group():
    torch.manual_seed(0)
    model = LayerScaled()
    cut, diff, groups = cut_vs_masked(model, torch.randn(2, 3, 6, 6))
    group = next(g for g in groups if "stem" in g.producers)
    assert group.prunable and ("gamma", 0) in group.parameters and cut == 1 and diff < 1e-5
    smaller = copy.deepcopy(model).eval()
    remove_channels(smaller, next(g for g in channel_groups(smaller, torch.randn(2, 3, 6, 6)) if g.prunable),
                    torch.arange(5))
    assert smaller.gamma.shape == (5,)


class ZeroStart(nn.Module):
    """timm's MobileOne block sums its branches starting from a Python 0."""
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        out = 0 + self.a(x)
        out += self.b(x)
        return self.head(torch.relu(out + 0.0))


def test_adding_a_python_zero_is_not_a_shift():
    torch.manual_seed(0)
    cut, diff, groups = cut_vs_masked(ZeroStart(), torch.randn(2, 3, 6, 6))
    group = next(g for g in groups if "a" in g.producers)
    assert not group.shifts and cut == 1 and diff < 1e-5


class GroupNormOwnForward(nn.GroupNorm):
    """timm's GroupNorm1: a GroupNorm subclass whose forward calls F.group_norm itself."""
    def __init__(self, channels):
        super().__init__(1, channels)

    def forward(self, x):
        return nn.functional.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class Affine(nn.Module):
    """timm's ResMLP Affine: β + α·x per channel on the last axis, through torch.addcmul."""
    def __init__(self, dim):
        super().__init__()
        self.alpha, self.beta = nn.Parameter(torch.rand(dim) + 0.5), nn.Parameter(torch.rand(dim) - 0.5)

    def forward(self, x):
        return torch.addcmul(self.beta, self.alpha, x)


class MetaBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        from timm.layers.norm import GroupNorm1  # the [test] extra installs timm
        self.c1, self.gn, self.c2 = nn.Conv2d(3, 8, 3, padding=1), GroupNorm1(8), nn.Conv2d(8, 6, 1)
        self.fc1, self.aff, self.fc2 = nn.Linear(6, 10), Affine(10), nn.Linear(10, 4)

    def forward(self, x):
        h = self.c2(self.gn(torch.relu(self.c1(x))))        # [B, 6, H, W]
        t = h.flatten(2).transpose(1, 2)                     # tokens [B, HW, 6]
        return self.fc2(torch.relu(self.aff(self.fc1(t)))).mean(1)


def test_functional_group_norm_and_addcmul_affine_are_per_channel_members():
    torch.manual_seed(0)
    model, x = MetaBlocks(), torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        model.gn.weight.uniform_(0.5, 1.5)
        model.gn.bias.uniform_(-0.5, 0.5)
    groups = channel_groups(model, x)
    assert "gn" in next(g for g in groups if "c1" in g.producers).passthrough
    assert ("aff.alpha", 0) in next(g for g in groups if "fc1" in g.producers).parameters
    cut, diff, _ = cut_vs_masked(model, x, ratio=0.5)
    assert cut == 3 and diff < 1e-5
    model.gn = GroupNormOwnForward(8)  # a forward nobody here read: refused, whatever it looks like
    assert not next(g for g in channel_groups(model, x) if "c1" in g.producers).prunable


def test_a_difference_of_two_channel_tensors_merges_them_like_a_sum():
    class PoolMinusInput(nn.Module):
        """PoolFormer's token mixer, pool(x) − x, in a residual block."""
        def __init__(self):
            super().__init__()
            self.c1, self.pool, self.c2 = nn.Conv2d(3, 8, 1), nn.AvgPool2d(3, 1, 1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            h = self.c1(x)
            return self.c2(h + (self.pool(h) - h) - 1.0)  # the constant makes it a shift: refused, not wrong
    torch.manual_seed(0)
    model, x = PoolMinusInput(), torch.randn(2, 3, 6, 6)
    group = next(g for g in channel_groups(model, x) if "c1" in g.producers)
    assert group.prunable and group.shifts and not group.blockers


class FixedSizes(nn.Module):
    """timm's metaformer Scale (`scale.view(self.shape)`, shape = (dim, 1, 1)) and a hand-written
    `view(b, 6, -1)`; `twice` reads the shape attribute for a second parameter too."""

    def __init__(self, twice=False):
        super().__init__()
        self.c1, self.c2, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 6, 1), nn.Linear(6 * 16, 2)
        self.scale, self.shape, self.twice = nn.Parameter(torch.rand(8) + 0.5), (8, 1, 1), twice
        self.other = nn.Parameter(torch.rand(8))

    def forward(self, x):
        y = self.c1(x) * self.scale.view(self.shape)
        if self.twice:
            y = y + self.other.view(self.shape)
        return self.head(self.c2(y).view(x.shape[0], 6, -1).flatten(1))


def test_a_shape_attribute_is_set_by_the_cut_and_a_size_written_in_the_code_blocks():
    x = torch.randn(2, 3, 4, 4)
    groups = channel_groups(FixedSizes(), x)
    assert ("", "shape[0]", 1) in next(g for g in groups if "c1" in g.producers).counters
    assert any("to a fixed 6 on the channel axis" in b for b in blockers(groups, "c2"))
    model = FixedSizes().eval()
    cut, diff, _ = cut_vs_masked(model, x)
    assert cut == 1 and diff < 1e-6
    remove_channels(model, next(g for g in channel_groups(model, x) if "c1" in g.producers), torch.tensor([0, 3, 5]))
    assert model.shape == (3, 1, 1) and model(x).shape == (2, 2)
    # read twice (a second parameter viewed with it) for the same channels: it sizes both, set once
    twice = FixedSizes(True).eval()
    assert next(g for g in channel_groups(twice, x) if "c1" in g.producers).counters == [("", "shape[0]", 1)]
    cut, diff, _ = cut_vs_masked(twice, x)
    assert cut == 1 and diff < 1e-6


class Swapped(nn.Module):
    """Channels moved last by transpose, swapaxes or swapdims (torchvision's MaxViT uses swapaxes), then
    read by a Linear."""

    def __init__(self, how):
        super().__init__()
        self.conv, self.fc, self.how = nn.Conv2d(3, 8, 1), nn.Linear(8, 4), how

    def forward(self, x):
        y = self.conv(x).flatten(2)  # [B, 8, HW]
        y = {"transpose": lambda t: t.transpose(1, 2), "swapaxes": lambda t: torch.swapaxes(t, 1, 2),
             "swapdims": lambda t: t.swapdims(2, 1)}[self.how](y)
        return self.fc(y).mean(1)


@pytest.mark.parametrize("how", ["transpose", "swapaxes", "swapdims"])
def test_swapping_axes_moves_the_channel_axis(how):
    torch.manual_seed(0)
    model, x = Swapped(how).eval(), torch.randn(2, 3, 4, 4)
    group = next(g for g in channel_groups(model, x) if g.producers == ["conv"])
    assert group.prunable and group.consumers == [("fc", 1)]
    cut, diff, _ = cut_vs_masked(model, x, ratio=0.5)
    assert cut == 1 and diff < 1e-5


def test_metaformer_pieces_starrelu_and_layer_norm_without_bias():
    """timm's ConvFormer: StarReLU (s · relu(x)² + b, scalars: a square keeps zeros, + b is a constant
    the harvest folds) and LayerNorm2dNoBias (a channels-first LayerNorm with no β)."""
    from timm.models.metaformer import LayerNorm2dNoBias, StarReLU  # the [test] extra installs timm

    model = nn.Sequential(nn.Conv2d(3, 8, 1), LayerNorm2dNoBias(8), nn.Conv2d(8, 6, 1), nn.Conv2d(6, 4, 1)).eval()
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 5, 5)
    cut, diff, groups = cut_vs_masked(model, x)
    assert cut == 2 and diff < 1e-5 and next(g for g in groups if "0" in g.producers).passthrough == ["1"]
    starred = nn.Sequential(nn.Conv2d(3, 8, 1), StarReLU(), nn.Conv2d(8, 4, 1))
    group = next(g for g in channel_groups(starred, x) if "0" in g.producers)
    assert group.prunable and group.shifts  # relu(0)² = 0, then + b

    class Powers(nn.Module):
        def __init__(self, exponent):
            super().__init__()
            self.conv, self.head, self.exponent = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1), exponent

        def forward(self, t):
            return self.head(torch.relu(self.conv(t)) ** self.exponent)
    assert next(g for g in channel_groups(Powers(2), x) if "conv" in g.producers).prunable
    assert any("0 ** e is not 0" in b for b in blockers(channel_groups(Powers(0), x), "conv"))


class HeadsSizedByInput(nn.Module):
    """Attention reshaping its heads' output to `C` of its input (`B, N, C = x.shape`), written out as
    timm's metaformer Attention has it (that class itself is swapped for a twin that does not)."""

    def __init__(self):
        super().__init__()
        self.embed, self.qkv, self.proj, self.head = nn.Linear(5, 32), nn.Linear(32, 96), nn.Linear(32, 32), nn.Linear(32, 3)

    def forward(self, x):
        x = self.embed(x)
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, 4, 8).permute(2, 0, 3, 1, 4).unbind(0)
        heads = (q @ k.transpose(-2, -1)).softmax(-1) @ v
        return self.head(x + self.proj(heads.transpose(1, 2).reshape(B, N, C)))


class WindowsSizedByInput(nn.Module):
    """Swin's window merge: `attn(x).view(-1, 2, C)` with C of x, as wide as x by construction."""

    def __init__(self):
        super().__init__()
        self.embed, self.fc, self.head = nn.Linear(5, 16), nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, x):                      # x [B, 4, 5]
        x = torch.relu(self.embed(x))
        B, N, C = x.shape
        y = self.fc(x).view(B, N // 2, 2, C).flatten(1, 2)
        return self.head(y)


def test_a_reshape_sized_by_another_tensors_channels_couples_or_blocks_them():
    x = torch.randn(2, 4, 5)
    stream = next(g for g in channel_groups(HeadsSizedByInput(), x) if "embed" in g.producers)
    assert not stream.prunable and any("to the channel count of" in b for b in stream.blockers)
    groups = channel_groups(WindowsSizedByInput(), x)
    assert {"embed", "fc"} <= set(next(g for g in groups if "fc" in g.producers).producers)
    cut, diff, _ = cut_vs_masked(WindowsSizedByInput(), x)
    assert cut == 1 and diff < 1e-5


class LinearNorm(nn.Module):
    """LeViT's Linear + BatchNorm1d over tokens: `bn(x.flatten(0, 1)).reshape_as(x)`, then a square
    (timm's SquaredReLU); with `other`, a tensor reshaped to the shape of one of other channels."""

    def __init__(self, other=False):
        super().__init__()
        self.l1, self.bn, self.l2, self.head, self.other = nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 8), \
            nn.Linear(8, 3), other

    def forward(self, x):
        y = self.l1(x)
        y = torch.square(torch.relu(self.bn(y.flatten(0, 1)).reshape_as(y)))
        z = self.l2(y)
        return self.head(y.reshape_as(z) if self.other else z).mean(1)


def test_reshape_as_a_tensor_is_cut_exactly_with_that_tensors_channels():
    """Reshaped to the shape of another group's tensor, the two groups are cut as one (as wide by
    construction), so the shape still fits after the cut."""
    x = torch.randn(2, 5, 6)
    for other, cuts in ((False, 2), (True, 1)):
        model = _randomise_norms(LinearNorm(other)).eval()
        cut, diff, groups = cut_vs_masked(model, x)
        assert cut == cuts and diff < 1e-5
        assert (set(next(g for g in groups if "l1" in g.producers).producers) == {"l1", "l2"}) == other


class Squeezes(nn.Module):
    """Linear → unsqueeze twice → 1x1 conv → pooled → squeeze (given dims) → Linear."""

    def __init__(self, how):
        super().__init__()
        self.how, self.a, self.conv, self.head = how, nn.Linear(6, 8), nn.Conv2d(8, 10, 1), nn.Linear(10, 3)

    def forward(self, x):
        y = torch.relu(self.a(x)).unsqueeze(-1).unsqueeze(2)                     # [B, 8, 1, 1]
        y = torch.relu(self.conv(y)).mean((2, 3), keepdim=True)                  # [B, 10, 1, 1]
        y = {"dims": lambda: torch.squeeze(y, (2, 3)), "one": lambda: y.squeeze(-1).squeeze(-1)}[self.how]()
        return self.head(y)


@pytest.mark.parametrize("how", ["dims", "one"])
def test_unsqueeze_and_squeeze_move_the_channel_axis(how):
    torch.manual_seed(0)
    cut, diff, groups = cut_vs_masked(Squeezes(how), torch.randn(4, 6), ratio=0.5)
    assert cut == 2 and diff < 1e-5


def test_squeezing_the_channel_axis_blocks():
    class One(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.head = nn.Conv2d(3, 1, 1), nn.Linear(4, 2)

        def forward(self, x):                 # [B, 3, 2, 2] → one channel → squeezed away
            return self.head(self.a(x).squeeze(1).flatten(1))

    group = next(g for g in channel_groups(One().eval(), torch.randn(2, 3, 2, 2)) if g.producers == ["a"])
    assert not group.prunable and any("squeeze" in b for b in group.blockers)


@pytest.mark.parametrize("how", ["bare", "batch"])
def test_a_squeeze_whose_dims_depend_on_run_time_sizes_blocks(how):
    """`x.squeeze()` drops the channel axis too once a cut keeps one channel (and the batch dim on a
    batch of one): the cut model failed when run (a hostile pass); `squeeze(0)` likewise."""
    class Tail(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.h = nn.Conv2d(3, 16, 3), nn.Linear(16, 3)

        def forward(self, x):
            y = torch.relu(self.a(x)).mean((2, 3), keepdim=True)
            return self.h(y.squeeze() if how == "bare" else y.squeeze(0).squeeze(-1).squeeze(-1))

    group = next(g for g in channel_groups(Tail().eval(), torch.randn(2, 3, 8, 8)) if g.producers == ["a"])
    assert not group.prunable and any("squeeze" in b for b in group.blockers)
