"""Attention heads as channel groups: timm's ViT / DeiT Attention and Swin's WindowAttention lose
whole heads (q, k, v rows and proj columns, num_heads, Swin's relative position bias columns), and
a user's own fused-qkv attention does once registered with the same rule. Every cut is compared
with the masked model; a dead head is harvested."""
import copy
import types

import pytest
import timm  # the [test] extra installs it
import torch
from torch import nn

from compress.structured import channel_groups, remove_channels, zero_channels
from compress.structured.importance import channel_importance
from compress.structured.ops import qkv_attention
from compress.structured.structure import harvest

from test_channel_rules import _randomise_norms, cut_vs_masked, registered


def _heads(groups):
    return [g for g in groups if g.layout]


def test_vit_heads_are_cut_whole_and_exactly():
    torch.manual_seed(0)
    model = _randomise_norms(timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=32,
                                               num_classes=5)).eval()
    x = torch.randn(2, 3, 32, 32)
    heads = _heads(channel_groups(model, x))
    assert len(heads) == 12 and all(g.size == 3 and g.prunable for g in heads)
    cut, diff, _ = cut_vs_masked(model, x, ratio=0.5)
    assert cut >= 12 and diff < 1e-4


def test_a_cut_attention_counts_its_heads():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    group = next(g for g in channel_groups(model, x) if g.producers == ["blocks.3.attn.qkv"])
    remove_channels(model, group, torch.tensor([0, 2]))
    attn = model.blocks[3].attn
    assert attn.num_heads == 2 and attn.attn_dim == 128
    assert attn.qkv.out_features == 3 * 128 and attn.proj.in_features == 128
    assert model(x).shape == (2, 5)


def test_an_attention_reshaping_heads_to_its_input_width_keeps_its_heads():
    """Older timm reshaped the heads' output to the input's width C (no attn_dim): a head cut would break
    that reshape, so those heads are not a group."""
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    def older_forward(self, x, attn_mask=None, is_causal=False):  # timm before attn_dim existed
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))

    for block in model.blocks:
        del block.attn.attn_dim
        block.attn.forward = types.MethodType(older_forward, block.attn)
    groups = channel_groups(model, x)
    assert not _heads(groups)
    why = [b for g in groups for b in g.blockers if "attention layout this rule does not know" in b]
    assert any("blocks.0.attn" in b for b in why), why


def test_swin_heads_take_their_relative_position_bias_columns():
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=64, window_size=4,
                              num_classes=5).eval()
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "relative_position_bias_table"):
                m.relative_position_bias_table.normal_()
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    x = torch.randn(2, 3, 64, 64)
    groups = channel_groups(model, x)
    heads = _heads(groups)
    assert len(heads) == 12
    # the residual stream through patch merging is open too: only the classifier's output stays whole
    assert [g.blockers for g in groups if g.producers and not g.prunable] == [["model output"]]
    assert all(g.parameters == [(g.producers[0].replace("qkv", "relative_position_bias_table"), 1)] for g in heads)
    cut, diff, _ = cut_vs_masked(model, x, ratio=0.4)
    assert cut >= 12 and diff < 1e-4


class MyAttention(nn.Module):
    """A user's own fused-qkv attention."""
    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.num_heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class TinyTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.attn, self.head = nn.Linear(6, 32), MyAttention(), nn.Linear(32, 3)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.attn(h)
        return self.head(h.mean(1))


def test_a_users_attention_gets_head_cuts_once_registered():
    torch.manual_seed(0)
    model, x = TinyTransformer(), torch.randn(2, 5, 6)
    assert not _heads(channel_groups(model, x))  # the reshape into heads blocks: nothing about heads is known
    with registered(MyAttention, qkv_attention):
        heads = _heads(channel_groups(model, x))
        assert [g.size for g in heads] == [4]
        cut, diff, _ = cut_vs_masked(model, x, ratio=0.5)
    assert cut == 2 and diff < 1e-5  # the residual stream and the heads


def test_a_heads_importance_sums_its_q_k_and_v_rows():
    torch.manual_seed(0)
    model, x = TinyTransformer(), torch.randn(2, 5, 6)
    with registered(MyAttention, qkv_attention):
        group = _heads(channel_groups(model, x))[0]
    w = model.attn.qkv.weight.detach()
    want = torch.stack([sum(w[s * 32 + h * 8: s * 32 + (h + 1) * 8].abs().sum() for s in range(3))
                        for h in range(4)])
    assert torch.allclose(channel_importance(model, group), want)


def test_a_dead_head_is_harvested():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=5).eval()
    attn = model.blocks[5].attn
    with torch.no_grad():
        for s in range(3):  # head 1's q, k and v rows
            attn.qkv.weight[s * 192 + 64: s * 192 + 128] = 0
            attn.qkv.bias[s * 192 + 64: s * 192 + 128] = 0
    before = copy.deepcopy(model)
    record = harvest(model, (3, 32, 32), round_to=8)  # 8 rows of a 64-row head: one head is a valid width
    assert record["keep"]["blocks.5.attn.qkv"] == [0, 2] and "skipped" not in record
    assert model.blocks[5].attn.num_heads == 2
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(model(x), before(x), atol=1e-5)


def test_greg_filter_mode_penalises_a_picked_head_on_all_its_q_k_v_rows():
    from compress.pruners import TrainPlan
    from compress.pruners.greg import GRegOptions, GRegPruner

    torch.manual_seed(0)
    model = TinyTransformer()
    with registered(MyAttention, qkv_attention):
        pruner = GRegPruner(GRegOptions(variant=1, granularity="filter", sparsity=0.5, pick_after=0.0,
                                        update_reg_interval=1, reg_granularity_prune=0.25, reg_upper_limit=1.0))
        pruner.attach(model, ["embed", "attn.qkv"], TrainPlan(1, 20, lambda s: 0.1, (5, 6)))
    pruner.begin_epoch(0)
    assert "attn.qkv" in pruner.units
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    pruner.after_backward(0)
    picked = pruner.pruned["attn.qkv"]
    assert int(picked.sum()) == 2  # half of the 4 heads
    grad = model.attn.qkv.weight.grad.view(3, 4, 8, 32)  # [q/k/v, head, head_dim, inputs]
    penalised = (grad != 0).flatten(2).any(2)            # [q/k/v, head]
    assert torch.equal(penalised, picked.expand(3, 4))   # every row of a picked head, none of the others


# --- nn.MultiheadAttention (torchvision's ViT, users' own transformers) ---------------------------

from compress.structured.attention import HeadsAttention, prepare_attention  # noqa: E402


def _small_vit():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4,
                                                 hidden_dim=32, mlp_dim=64, num_classes=10).eval()
    nn.init.normal_(model.heads.head.weight)  # torchvision starts it at zero: every output would be 0
    return model


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_heads_attention_computes_what_multihead_attention_does(batch_first, bias):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, bias=bias, batch_first=batch_first).eval()
    ours = HeadsAttention.from_mha(mha).eval()
    assert ours.in_proj.weight is mha.in_proj_weight and ours.out_proj is mha.out_proj  # the same Parameters
    x, y = torch.randn(3, 5, 16), torch.randn(3, 7, 16)
    if not batch_first:
        x, y = x.transpose(0, 1), y.transpose(0, 1)
    attn_mask = torch.rand(5, 7) > 0.7
    padding = torch.zeros(3, 7, dtype=torch.bool)
    padding[0, -2:] = True
    for kw in ({}, {"need_weights": False}, {"attn_mask": attn_mask}, {"key_padding_mask": padding},
               {"average_attn_weights": False}, {"attn_mask": torch.randn(5, 7)}):
        want, got = mha(x, y, y, **kw), ours(x, y, y, **kw)
        assert torch.allclose(want[0], got[0], atol=1e-6)
        assert (want[1] is None and got[1] is None) or torch.allclose(want[1], got[1], atol=1e-6)
    single = torch.randn(5, 16)
    assert torch.allclose(mha(single, single, single)[0], ours(single, single, single)[0], atol=1e-6)
    assert sorted(ours.state_dict()) == sorted(mha.state_dict())  # checkpoints load either way
    fresh = nn.MultiheadAttention(16, 4, bias=bias, batch_first=batch_first)
    fresh.load_state_dict(ours.state_dict())
    ours.load_state_dict(mha.state_dict())


def test_torchvision_vit_heads_are_cut_exactly_and_export(tmp_path):
    from deploy.export import export_onnx

    model, x = _small_vit(), torch.randn(2, 3, 32, 32)
    keys = sorted(model.state_dict())
    heads = _heads(channel_groups(model, x))
    assert len(heads) == 2 and all(g.prunable and g.size == 4 for g in heads)
    assert isinstance(model.encoder.layers[0].self_attention, HeadsAttention)
    assert sorted(model.state_dict()) == keys
    cut, diff, _ = cut_vs_masked(model, x, ratio=0.5)
    assert cut >= 4 and diff < 1e-5
    smaller = copy.deepcopy(model)
    group = _heads(channel_groups(smaller, x))[0]
    remove_channels(smaller, group, torch.tensor([1, 3]))
    attn = smaller.encoder.layers[0].self_attention
    assert attn.num_heads == 2 and attn.in_proj.weight.shape == (3 * 2 * 8, 32) and attn.out_proj.in_features == 16
    info = export_onnx(smaller, x, tmp_path / "vit.onnx")
    assert info["max_abs_diff_vs_torch"] < 1e-4


def test_torchvision_vit_residual_stream_is_cut_with_its_hidden_dim(tmp_path):
    """torchvision's ViT reshapes the patch embedding to `self.hidden_dim`: the residual stream (patch
    conv, class token, position embedding, every LayerNorm, out_proj and MLP output) is cut and that
    attribute set to the channels kept. When another int attribute holds the same number (here
    image_size = hidden_dim = 32) which one is the width is unknown: the stream stays whole."""
    import torchvision
    from compress.structured import zero_channels
    from deploy.export import export_onnx

    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4,
                                                 hidden_dim=48, mlp_dim=64, num_classes=10).eval()
    nn.init.normal_(model.heads.head.weight)  # as in _small_vit
    x = torch.randn(2, 3, 32, 32)
    stream = next(g for g in channel_groups(model, x) if "conv_proj" in g.producers)
    assert stream.prunable and stream.size == 48 and ("", "hidden_dim", 1) in stream.counters
    masked, smaller = copy.deepcopy(model), copy.deepcopy(model)
    keep = torch.arange(0, 48, 2)
    zero_channels(masked, next(g for g in channel_groups(masked, x) if "conv_proj" in g.producers),
                  torch.arange(1, 48, 2))
    remove_channels(smaller, next(g for g in channel_groups(smaller, x) if "conv_proj" in g.producers), keep)
    assert smaller.hidden_dim == 24 and smaller.class_token.shape == (1, 1, 24)
    assert smaller.encoder.pos_embedding.shape[-1] == 24 and smaller.conv_proj.out_channels == 24
    with torch.no_grad():
        want, got = masked(x), smaller(x)
        assert not torch.allclose(want, model(x), atol=1e-3)  # the cut changes the model...
        assert torch.allclose(got, want, atol=1e-5)           # ...exactly as zeroing those channels does
    assert export_onnx(smaller, x, tmp_path / "vit.onnx")["max_abs_diff_vs_torch"] < 1e-4

    same = _small_vit()  # hidden_dim 32 = image_size 32
    stream = next(g for g in channel_groups(same, x) if "conv_proj" in g.producers)
    assert not stream.prunable and "fixed 32 on the channel axis" in " ".join(stream.blockers)


def test_a_dead_head_is_harvested_and_the_cut_rebuilds_from_the_record():
    """As the freeze stage does: harvest a model with a dead head, then cut a fresh model to the
    record and load the harvested weights (same keys as nn.MultiheadAttention's)."""
    from compress.structured.structure import apply_structure

    model, x = _small_vit(), torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # head 2 of layer 1: its q, k and v rows (8 each) and biases
        w, b = model.encoder.layers[1].self_attention.in_proj_weight, model.encoder.layers[1].self_attention.in_proj_bias
        for r in range(3):
            w[r * 32 + 16:r * 32 + 24] = 0
            b[r * 32 + 16:r * 32 + 24] = 0
    want = model(x)
    record = harvest(model, (3, 32, 32))
    assert record["keep"] == {"encoder.layers.encoder_layer_1.self_attention.in_proj": [0, 1, 3]}
    assert torch.allclose(model(x), want, atol=1e-5)
    fresh = _small_vit()
    apply_structure(fresh, record, (3, 32, 32))
    fresh.load_state_dict(model.state_dict())
    assert torch.allclose(fresh(x), want, atol=1e-5)


class _Attending(nn.Module):
    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode
        self.a, self.b = nn.Linear(6, 16), nn.Linear(6, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.out = nn.Linear(16, 3)
        self.register_buffer("mask", torch.zeros(5, 5, dtype=torch.bool))

    def forward(self, x):
        h = self.a(x)
        if self.mode == "cross":
            y, _ = self.attn(h, self.b(x), self.b(x))
        elif self.mode == "mask":
            y, _ = self.attn(h, h, h, attn_mask=self.mask)
        else:  # the attention weights are used
            y, w = self.attn(h, h, h)
            y = y * w.mean()
        return self.out(y)


@pytest.mark.parametrize("mode", ["cross", "mask", "weights"])
def test_multihead_attention_other_than_plain_self_attention_keeps_its_heads(mode):
    torch.manual_seed(0)
    model, x = _Attending(mode), torch.randn(2, 5, 6)
    cut, diff, groups = cut_vs_masked(model, x)
    assert not any(g.prunable for g in _heads(groups))
    assert any("attn (MultiheadAttention)" in b for g in groups for b in g.blockers)
    assert diff < 1e-5


def test_torch_transformer_layers_keep_their_own_attention():
    layer = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True)
    model = nn.Sequential(layer)
    assert prepare_attention(model) == [] and type(layer.self_attn) is nn.MultiheadAttention
    inside = nn.ModuleList([nn.MultiheadAttention(16, 4)])
    holder = nn.Module()
    holder.blocks = inside
    assert prepare_attention(holder) == ["blocks.0"] and isinstance(inside[0], HeadsAttention)


class _DrivesItsAttention(nn.Module):
    """Attention pooling that calls F.multi_head_attention_forward with its nn.MultiheadAttention's
    tensors, and a branch on the attention's type: code written for nn.MultiheadAttention itself."""

    def __init__(self, check_type: bool):
        super().__init__()
        self.check_type = check_type
        self.emb, self.attn, self.fc = nn.Linear(3, 16), nn.MultiheadAttention(16, 4), nn.Linear(16, 2)
        self.q = nn.Parameter(torch.randn(1, 1, 16))

    def forward(self, x):
        if self.check_type and not isinstance(self.attn, nn.MultiheadAttention):
            raise TypeError("expects nn.MultiheadAttention")
        a, h = self.attn, self.emb(x).transpose(0, 1)
        out, _ = nn.functional.multi_head_attention_forward(
            self.q.expand(1, h.shape[1], 16), h, h, a.embed_dim, a.num_heads, a.in_proj_weight, a.in_proj_bias,
            a.bias_k, a.bias_v, a.add_zero_attn, a.dropout, a.out_proj.weight, a.out_proj.bias,
            training=self.training, need_weights=False, use_separate_proj_weight=not a._qkv_same_embed_dim,
            q_proj_weight=a.q_proj_weight, k_proj_weight=a.k_proj_weight, v_proj_weight=a.v_proj_weight)
        return self.fc(out[0])


@pytest.mark.parametrize("check_type", [False, True])
def test_code_written_for_multihead_attention_keeps_working(check_type):
    """What nn.MultiheadAttention's own code reads is there; where the swap still changes what the model
    does (here: a type check), it is undone, and the harvest never leaves the model broken."""
    from compress.models import ModelConfig, build_model

    torch.manual_seed(0)
    model, x = _DrivesItsAttention(check_type).eval(), torch.randn(2, 5, 3)
    want = model(x)
    swapped = prepare_attention(model, torch.zeros(2, 5, 3))
    assert swapped == ([] if check_type else ["attn"])
    assert torch.allclose(model(x), want, atol=1e-6)
    record = harvest(model, (5, 3))
    assert "skipped" not in record and torch.allclose(model(x), want, atol=1e-6)


def test_heads_attention_matches_multihead_attention_at_the_edges():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    ours = HeadsAttention.from_mha(mha).eval()
    x = torch.randn(2, 5, 16)
    padded = torch.zeros(2, 5, dtype=torch.bool)
    padded[0] = True  # every key of item 0 masked: the fused kernel gives out_proj's bias, not NaN
    want, got = mha(x, x, x, key_padding_mask=padded, need_weights=False)[0], ours(x, x, x, key_padding_mask=padded,
                                                                                  need_weights=False)[0]
    assert not got.isnan().any() and torch.allclose(want, got, atol=1e-6)
    for kw in ({"attn_mask": torch.zeros(5, 5, dtype=torch.uint8)}, {"is_causal": True}):
        with pytest.raises((AssertionError, RuntimeError)):
            mha(x, x, x, **kw)
        with pytest.raises((AssertionError, RuntimeError)):
            ours(x, x, x, **kw)
    assert list(ours.state_dict()) == list(mha.state_dict())  # the same keys in the same order


def test_the_fused_projection_is_counted_as_a_layer():
    from compress.flops import count_macs

    block = nn.Module()
    block.attn, block.fc = nn.MultiheadAttention(16, 4, batch_first=True), nn.Linear(16, 3)
    block.forward = lambda x: block.fc(block.attn(x, x, x, need_weights=False)[0].mean(1))
    prepare_attention(block)
    per_layer = count_macs(block, (5, 16))["per_layer"]
    assert per_layer["attn.in_proj"] == (5 * 48 * 16, 5 * 48 * 16)


# --- torchvision's Swin (window attention whose head width followed the stream's) ------------------

def _small_swin(v2: bool = False):
    import torchvision
    from torchvision.models import swin_transformer as tv

    torch.manual_seed(0)
    extra = dict(block=tv.SwinTransformerBlockV2, downsample_layer=tv.PatchMergingV2) if v2 else {}
    return torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                                              window_size=[4, 4], num_classes=5, **extra).eval()


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("shift", [[0, 0], [2, 2]])
@pytest.mark.parametrize("size", [(8, 8), (5, 7), (4, 4), (3, 3)])
def test_window_heads_attention_computes_what_torchvisions_does(v2, shift, size):
    from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2
    from compress.structured.window_attention import WindowHeadsAttention, WindowHeadsAttentionV2

    torch.manual_seed(0)
    theirs = (ShiftedWindowAttentionV2 if v2 else ShiftedWindowAttention)(16, [4, 4], shift, 2).eval()
    ours = (WindowHeadsAttentionV2 if v2 else WindowHeadsAttention).from_torchvision(theirs).eval()
    assert ours.qkv is theirs.qkv and ours.proj is theirs.proj
    x = torch.randn(2, *size, 16)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_torchvision_swin_heads_and_stream_are_cut_exactly_and_export(v2, tmp_path):
    from compress.structured.window_attention import WindowHeadsAttention
    from deploy.export import export_onnx

    model, x = _small_swin(v2), torch.randn(2, 3, 32, 32)
    keys = list(model.state_dict())
    groups = channel_groups(model, x)
    assert all(isinstance(model.features[i][j].attn, WindowHeadsAttention) for i in (1, 3) for j in (0, 1))
    assert list(model.state_dict()) == keys  # checkpoints load either way
    assert all(g.prunable for g in groups if g.producers and "head" not in g.producers)
    cut, diff, _ = cut_vs_masked(model, x, ratio=0.5)
    assert cut == sum(g.prunable for g in groups) and diff < 1e-5
    smaller = copy.deepcopy(model)
    heads = next(g for g in channel_groups(smaller, x) if g.producers == ["features.1.0.attn.qkv"])
    remove_channels(smaller, heads, torch.tensor([1]))
    attn = smaller.features[1][0].attn
    assert attn.num_heads == 1 and attn.qkv.out_features == 24
    if v2:  # one logit scale and one position-bias MLP output per head
        assert attn.logit_scale.shape[0] == 1 and attn.cpb_mlp[2].weight.shape[0] == attn.cpb_mlp[2].out_features == 1
    else:
        assert attn.relative_position_bias_table.shape[1] == 1
    assert export_onnx(smaller, x, tmp_path / "swin.onnx")["max_abs_diff_vs_torch"] < 1e-4


def test_maxvit_heads_and_stream_are_cut_exactly():
    """torchvision's MaxViT reshaped its heads' output to the input's width: swapped for
    PartitionHeadsAttention (bit-identical, same keys), its heads and the stream around it are cut."""
    import torchvision
    from torchvision.models.maxvit import RelativePositionalMultiHeadAttention
    from compress.structured.window_attention import PartitionHeadsAttention

    torch.manual_seed(0)
    theirs = RelativePositionalMultiHeadAttention(32, 8, 16).eval()
    ours = PartitionHeadsAttention.from_torchvision(theirs).eval()
    x = torch.randn(2, 3, 16, 32)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
    assert list(ours.state_dict()) == list(theirs.state_dict())

    model = torchvision.models.MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[16, 32],
                                      block_layers=[1, 1], head_dim=8, stochastic_depth_prob=0.0, num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    groups = channel_groups(model, x)
    assert isinstance(model.blocks[0].layers[0].layers.window_attention.attn_layer[1], PartitionHeadsAttention)
    assert all(g.prunable for g in groups if g.producers and not any("classifier" in p for p in g.producers))
    cut, diff, _ = cut_vs_masked(model, x, ratio=0.5)
    assert cut == sum(g.prunable for g in groups) and diff < 1e-5


class MetaFormerTokens(nn.Module):
    """Tokens → Linear → timm's metaformer Attention (residual) → Linear (residual) → head."""

    def __init__(self):
        super().__init__()
        from timm.models.metaformer import Attention  # the [test] extra installs timm
        self.embed, self.attn = nn.Linear(6, 32), Attention(32, head_dim=8)
        self.mlp, self.head = nn.Linear(32, 32), nn.Linear(32, 3)

    def forward(self, x):                                   # x: [B, N, 6]
        x = self.embed(x)
        x = x + self.attn(x)
        return self.head(x + self.mlp(x)).mean(1)


@pytest.mark.parametrize("fused", [True, False])
def test_metaformer_attention_is_swapped_for_a_twin_and_its_heads_and_stream_are_cut(fused):
    """timm's metaformer Attention (CAFormer) reshaped its heads' output to the input's width: both
    stayed whole (caformer_s18 lost 11% of its MACs). Its twin computes the same bit for bit, under the
    same keys; then heads and stream are cut exactly."""
    from timm.models.metaformer import Attention
    from compress.structured.metaformer_attention import MetaFormerHeadsAttention

    torch.manual_seed(0)
    theirs = Attention(32, head_dim=8).eval()
    theirs.fused_attn = fused
    ours = MetaFormerHeadsAttention.from_timm(theirs).eval()
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
    assert list(ours.state_dict()) == list(theirs.state_dict())

    model, x = MetaFormerTokens().eval(), torch.randn(2, 5, 6)
    model.attn.fused_attn = fused
    keys = list(model.state_dict())
    groups = channel_groups(model, x)
    assert isinstance(model.attn, MetaFormerHeadsAttention) and list(model.state_dict()) == keys
    stream = next(g for g in groups if "embed" in g.producers)
    heads = next(g for g in groups if g.producers == ["attn.qkv"])
    assert stream.prunable and heads.prunable and heads.size == 4
    cut, diff, _ = cut_vs_masked(model, x, ratio=0.5)
    assert cut == 2 and diff < 1e-5  # the stream and the heads
    smaller = copy.deepcopy(model)
    remove_channels(smaller, next(g for g in channel_groups(smaller, x) if g.producers == ["attn.qkv"]),
                    torch.tensor([0, 3]))
    assert (smaller.attn.num_heads, smaller.attn.attn_dim, smaller.attn.proj.in_features) == (2, 16, 16)


def _computes_as_theirs(ours: nn.Module, theirs: nn.Module, x: torch.Tensor) -> None:
    """A twin computes what timm's module does, with the fused attention kernel and without, under the
    same state_dict keys."""
    for fused in (True, False):
        theirs.fused_attn = ours.fused_attn = fused
        with torch.no_grad():
            assert torch.allclose(ours(x), theirs(x), atol=1e-6)
    assert list(ours.state_dict()) == list(theirs.state_dict())


def _swapped_heads(model: nn.Module, x: torch.Tensor, path: str, twin: type, producer: str):
    """The attention at `path` after channel_groups swapped it (a `twin`), and its heads' group, prunable
    (produced by its `producer`)."""
    groups = channel_groups(model, x)
    attn = model.get_submodule(path)
    assert isinstance(attn, twin)
    heads = next(g for g in groups if g.producers == [f"{path}.{producer}"])
    assert heads.prunable
    return attn, heads


def _levit_attention(m: nn.Module) -> nn.Module:
    """A timm LeViT attention in eval mode with non-trivial BatchNorms and biases."""
    _randomise_norms(m)
    m.eval()  # timm's LeViT attention's train() returns None: no chaining
    with torch.no_grad():
        m.attention_biases.normal_()
    return m


def test_levit_attention_is_swapped_for_a_twin_without_its_cache_and_its_heads_are_cut():
    """timm's LeViT attention splits each head's q, k, v rows at [key_dim, key_dim, val_dim] and caches
    its biases in eval mode: its twin computes the same bit for bit, same keys, no cache; heads are cut
    with their BatchNorm rows and bias rows (levit_128s lost 40% of its MACs, 48% now)."""
    import timm
    from timm.models.levit import Attention
    from compress.structured.levit_attention import LevitHeadsAttention

    torch.manual_seed(0)
    theirs = _levit_attention(Attention(32, key_dim=8, num_heads=4, attn_ratio=2, resolution=3))
    ours = LevitHeadsAttention.from_timm(theirs).eval()
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
        ours.train(), theirs.train()
        assert torch.equal(ours(x), theirs(x))
    assert list(ours.state_dict()) == list(theirs.state_dict())

    model = _randomise_norms(timm.create_model("levit_128s", num_classes=10, img_size=64)).eval()
    x = torch.randn(2, 3, 64, 64)
    attn, heads = _swapped_heads(model, x, "stages.0.blocks.0.attn", LevitHeadsAttention, "qkv.linear")
    assert heads.size == 4
    cut, diff, _ = cut_vs_masked(model, x, ratio=0.3)
    assert diff < 1e-4
    remove_channels(model, next(g for g in channel_groups(model, x) if g.key == heads.key), torch.tensor([0, 2, 3]))
    assert (attn.num_heads, attn.val_attn_dim, attn.attention_biases.shape[0]) == (3, 3 * attn.val_dim, 3)
    assert attn.qkv.bn.num_features == attn.qkv.linear.out_features == 3 * (2 * attn.key_dim + attn.val_dim)
    with torch.no_grad():
        model(x), model(x)  # eval mode twice: nothing cached from before the cut


@pytest.mark.parametrize("pool", [False, True])
def test_levits_downsampling_attention_has_a_twin_too_and_its_heads_are_cut(pool):
    """Between stages LeViT attends from every stride-th token to all of them (k and v from all, q
    from the subsampled ones), into a wider stream: twin bit for bit, heads cut exactly
    (levit_128s 47.7 -> 52.3% with it)."""
    import timm
    from timm.models.levit import AttentionDownsample
    from compress.structured.levit_attention import LevitDownsampleHeadsAttention

    torch.manual_seed(0)
    theirs = _levit_attention(AttentionDownsample(32, 48, key_dim=8, num_heads=4, attn_ratio=2, stride=2, resolution=4,
                                                  use_pool=pool))
    ours = LevitDownsampleHeadsAttention.from_timm(theirs).eval()
    x = torch.randn(2, 16, 32)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
    assert list(ours.state_dict()) == list(theirs.state_dict())

    model = _randomise_norms(timm.create_model("levit_128s", num_classes=10, img_size=64)).eval()
    x = torch.randn(2, 3, 64, 64)
    heads = next(g for g in channel_groups(model, x) if "stages.1.downsample.attn_downsample.q.ln.linear" in g.producers)
    attn = model.stages[1].downsample.attn_downsample
    assert isinstance(attn, LevitDownsampleHeadsAttention) and heads.prunable
    cut, diff, _ = cut_vs_masked(model, x, ratio=0.3, seed=1)
    assert diff < 1e-4
    remove_channels(model, next(g for g in channel_groups(model, x) if g.key == heads.key), torch.tensor([1, 5]))
    assert (attn.num_heads, attn.q.ln.linear.out_features, attn.kv.bn.num_features) == (2, 2 * attn.key_dim,
                                                                                      2 * (attn.key_dim + attn.val_dim))


@pytest.mark.parametrize("kind", ["timm", "metaformer", "levit"])
def test_heads_stay_whole_when_code_outside_the_attention_reads_its_head_count(kind):
    """A cut sets num_heads; a forward outside the attention that reads it was traced with the old
    number and would compute otherwise (0.5 off the masked model before the check)."""
    from timm.layers.attention import Attention
    from timm.models.levit import Attention as LevitAttention
    from timm.models.metaformer import Attention as MetaFormerAttention

    class ReadsHeads(nn.Module):
        def __init__(self, attn):
            super().__init__()
            self.embed, self.attn, self.head = nn.Linear(6, 32), attn, nn.Linear(32, 3)

        def forward(self, x):
            x = self.embed(x)
            return self.head(x + self.attn(x)).mean(1) * self.attn.num_heads

    torch.manual_seed(0)
    attn, tokens = {"timm": (lambda: Attention(32, num_heads=4), 5), "metaformer": (lambda: MetaFormerAttention(32, 8), 5),
                    "levit": (lambda: LevitAttention(32, key_dim=8, num_heads=4, attn_ratio=2, resolution=3), 9)}[kind]
    model, x = ReadsHeads(attn()).eval(), torch.randn(2, tokens, 6)
    heads = next(g for g in channel_groups(model, x) if any(c[1] == "num_heads" for c in g.counters))
    assert not heads.prunable and any("num_heads, which a cut sets, is read outside" in b for b in heads.blockers)
    cut, diff, _ = cut_vs_masked(model, x, ratio=0.5)
    assert diff < 1e-5

    class Plain(ReadsHeads):
        def forward(self, x):
            x = self.embed(x)
            return self.head(x + self.attn(x)).mean(1)

    plain = Plain(attn()).eval()  # without the read, the same heads are cut
    assert next(g for g in channel_groups(plain, x) if g.key == heads.key).prunable


def test_a_shape_branch_after_the_attention_does_not_count_as_reading_its_head_count():
    """Tracing evaluates a branch on a shape (MobileViT's `if new_h != H`) by running the modules it
    needs, the attention among them: probing its num_heads must not break that run (mobilevit_xxs
    lost its heads to it, 46 -> 36%)."""
    from timm.layers.attention import Attention

    class BranchAfter(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.attn, self.head = nn.Linear(6, 32), Attention(32, num_heads=4), nn.Linear(32, 3)

        def forward(self, x):
            x = self.embed(x)
            y = x + self.attn(x)
            if y.shape[1] > 1:
                y = y * 2
            return self.head(y).mean(1)

    torch.manual_seed(0)
    model, x = BranchAfter().eval(), torch.randn(2, 5, 6)
    heads = next(g for g in channel_groups(model, x) if g.producers == ["attn.qkv"])
    assert heads.prunable, heads.blockers
    cut, diff, _ = cut_vs_masked(model, x, ratio=0.5)
    assert cut == 2 and diff < 1e-5


class LiteTokens(nn.Module):
    """conv → BN → x + timm's LiteMLA(x) (EfficientViT's linear attention) → pooled head."""

    def __init__(self, **mla):
        super().__init__()
        from timm.models.efficientvit_mit import LiteMLA
        self.stem, self.bn = nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.mla, self.head = LiteMLA(32, 32, dim=8, **mla), nn.Linear(32, 3)

    def forward(self, x):
        x = self.bn(self.stem(x))
        return self.head((x + self.mla(x)).mean((2, 3)))


@pytest.mark.parametrize("scales", [(5,), (3, 5)])
def test_efficientvits_linear_attention_loses_whole_heads_exactly(scales):
    """A zeroed head of LiteMLA has q = k = 0: its output is 0 / eps = 0. Its heads are cut from qkv,
    both aggregation convs (the grouped one losing whole groups) and every scale's columns of proj
    (efficientvit_b0 42.5 -> 48.8% with it)."""
    torch.manual_seed(0)
    model, x = _randomise_norms(LiteTokens(scales=scales)).eval(), torch.randn(2, 3, 8, 8)
    heads = next(g for g in channel_groups(model, x) if g.producers == ["mla.qkv.conv"])
    assert heads.prunable and heads.size == 4
    for seed in (0, 1):
        cut, diff, _ = cut_vs_masked(model, x, ratio=0.5, seed=seed)
        assert cut == 2 and diff < 1e-5
    smaller = copy.deepcopy(model)
    remove_channels(smaller, next(g for g in channel_groups(smaller, x) if g.key == heads.key), torch.tensor([0, 3]))
    mla = smaller.mla
    assert mla.qkv.conv.out_channels == 48 and mla.proj.conv.in_channels == 16 * (1 + len(scales))
    assert all((op[0].groups, op[1].groups, op[1].out_channels) == (48, 6, 48) for op in mla.aggreg)


def test_a_linear_attention_whose_kernel_keeps_no_zero_stays_whole():
    model = LiteTokens(kernel_func=nn.Hardsigmoid).eval()  # hardsigmoid(0) = 0.5
    group = next(g for g in channel_groups(model, torch.randn(2, 3, 8, 8)) if "stem" in g.producers)
    assert not group.prunable and any("linear attention layout" in b for b in group.blockers)


def test_the_harvest_removes_zeroed_heads_of_a_linear_attention():
    """proj reads dim inputs per head and scale: the harvest looks at all of them (it read one input
    per channel of a conv before, found the heads alive, and froze efficientvit_b0 at x0.55 of its MACs
    where the pruner planned x0.48)."""
    from compress.structured import harvest, zero_channels

    torch.manual_seed(0)
    model, x = _randomise_norms(LiteTokens(scales=(3, 5))).eval(), torch.randn(2, 3, 8, 8)
    heads = next(g for g in channel_groups(model, x) if g.producers == ["mla.qkv.conv"])
    zero_channels(model, heads, torch.tensor([1, 2]))
    with torch.no_grad():
        want = model(x)
        record = harvest(model, (3, 8, 8))
        assert record["keep"]["mla.qkv.conv"] == [0, 3] and model.mla.qkv.conv.out_channels == 48
        assert torch.allclose(model(x), want, atol=1e-5)


def test_a_linear_attention_whose_output_norm_holds_an_activation_stays_whole():
    """timm's BatchNormAct2d is a BatchNorm2d holding an activation: with hardsigmoid (f(0) = 0.5) a
    removed output channel would carry 0.5 on (0.47 off the masked model before the exact-type check)."""
    from functools import partial

    from timm.layers import BatchNormAct2d
    from timm.models.efficientvit_mit import LiteMLA

    model = LiteTokens().eval()
    model.mla = LiteMLA(32, 32, dim=8, norm_layer=(None, partial(BatchNormAct2d, act_layer=nn.Hardsigmoid))).eval()
    group = next(g for g in channel_groups(model, torch.randn(2, 3, 8, 8)) if "stem" in g.producers)
    assert not group.prunable and any("linear attention layout" in b for b in group.blockers)


@pytest.mark.parametrize("sr_ratio,linear", [(1, False), (2, False), (1, True)])
def test_pvt_v2_attention_is_swapped_for_a_twin_and_its_heads_and_reduction_are_cut(sr_ratio, linear):
    """timm's PVT-v2 attention reshaped its spatial reduction's output and its heads' output to the input's
    width: heads, reduction and stream stayed whole (pvt_v2_b0 lost 20% of its MACs, 50% now). Its twin
    computes the same (to float rounding) under the same keys; heads, the reduction's channels (with its
    LayerNorm) and the stream are cut exactly."""
    from timm.models.pvt_v2 import Attention
    from compress.structured.pvt_attention import PvtHeadsAttention

    torch.manual_seed(0)
    theirs = _randomise_norms(Attention(32, num_heads=4, sr_ratio=sr_ratio, linear_attn=linear)).eval()
    for norm in [t for t in (theirs.norm,) if t is not None]:
        with torch.no_grad():
            norm.weight.normal_(), norm.bias.normal_()
    ours = PvtHeadsAttention.from_timm(theirs).eval()
    x = torch.randn(2, 64, 32)
    for fused in (True, False):
        theirs.fused_attn = ours.fused_attn = fused
        with torch.no_grad():
            assert torch.allclose(ours(x, [8, 8]), theirs(x, [8, 8]), atol=1e-6)
    assert list(ours.state_dict()) == list(theirs.state_dict())

    model = timm.create_model("pvt_v2_b0", num_classes=10).eval()
    for block in model.stages[0].blocks:  # the first stage with the variant asked for, two heads of 16
        block.attn = Attention(32, num_heads=2, sr_ratio=sr_ratio, linear_attn=linear)
    model, x = _randomise_norms(model).eval(), torch.randn(2, 3, 64, 64)
    groups = channel_groups(model, x)
    assert isinstance(model.stages[0].blocks[0].attn, PvtHeadsAttention)
    heads = next(g for g in groups if g.producers == ["stages.0.blocks.0.attn.q", "stages.0.blocks.0.attn.kv"])
    assert heads.prunable and heads.size == 2 and heads.layout["stages.0.blocks.0.attn.kv"] == (16, 2)
    if sr_ratio > 1 or linear:
        reduced = next(g for g in groups if g.producers == ["stages.0.blocks.0.attn.sr"])
        assert reduced.prunable and "stages.0.blocks.0.attn.norm" in reduced.passthrough
    cut, diff, _ = cut_vs_masked(model, x, ratio=0.4)
    assert cut >= 20 and diff < 1e-4
    smaller = copy.deepcopy(model)
    remove_channels(smaller, next(g for g in channel_groups(smaller, x) if g.key == heads.key), torch.tensor([1]))
    attn = smaller.stages[0].blocks[0].attn
    assert (attn.num_heads, attn.attn_dim, attn.kv.out_features, attn.proj.in_features) == (1, 16, 32, 16)
    with torch.no_grad():
        masked = copy.deepcopy(model)
        zero_channels(masked, next(g for g in channel_groups(masked, x) if g.key == heads.key), torch.tensor([0]))
        assert torch.allclose(smaller(x), masked(x), atol=1e-5)


@pytest.mark.parametrize("size", [16, 12])
def test_twins_attentions_are_swapped_for_twins_and_cut_exactly(size):
    """Twins' windowed attention (`LocallyGroupedAttn`, zero-padded to whole windows at 16 x 16) and its
    global one (`GlobalSubSampleAttn`, PVT's) reshaped their heads' output to the input's width (and the
    global one its reduction's): heads and stream stayed whole (twins_svt_small lost 13% of its MACs, 53%
    now). The twins compute the same under the same keys; heads, reductions and stream are cut exactly."""
    from timm.models.twins import GlobalSubSampleAttn, LocallyGroupedAttn, Twins
    from compress.structured.pvt_attention import LocalHeadsAttention, PvtHeadsAttention

    torch.manual_seed(0)
    for theirs, make in ((LocallyGroupedAttn(32, num_heads=4, ws=7), LocalHeadsAttention.from_twins),
                         (GlobalSubSampleAttn(32, num_heads=4, sr_ratio=2), PvtHeadsAttention.from_twins)):
        theirs.eval()
        ours = make(theirs).eval()
        for fused, side in ((True, 14), (False, 14), (True, size)):  # 14: whole windows, no padding
            theirs.fused_attn = ours.fused_attn = fused
            x = torch.randn(2, side * side, 32)
            with torch.no_grad():
                assert torch.allclose(ours(x, (side, side)), theirs(x, (side, side)), atol=1e-6)
        assert list(ours.state_dict()) == list(theirs.state_dict())

    model = Twins(img_size=size * 4, num_classes=10, embed_dims=(16, 32, 64), num_heads=(1, 2, 4), mlp_ratios=(2, 2, 2),
                  depths=(2, 2, 2), wss=(7, 7, 7), sr_ratios=(4, 2, 1))
    model, x = _randomise_norms(model).eval(), torch.randn(2, 3, size * 4, size * 4)
    groups = channel_groups(model, x)
    assert isinstance(model.blocks[0][0].attn, LocalHeadsAttention)
    assert isinstance(model.blocks[0][1].attn, PvtHeadsAttention)
    heads = [g for g in groups if g.layout and g.prunable]
    assert len(heads) == 6 and [g.size for g in heads] == [1, 1, 2, 2, 4, 4]
    cut, diff, _ = cut_vs_masked(model, x, ratio=0.4)
    assert cut >= 15 and diff < 1e-4


def test_davit_attentions_are_swapped_for_twins_and_cut_exactly():
    """DaViT's window attention (MetaFormer's, within windows) and its channel attention (each head attends
    over its own channels) reshaped their heads' output to the input's width: heads and stream stayed
    whole (davit_tiny lost 12% of its MACs, 51% now). The twins compute the same under the same keys."""
    from timm.models.davit import ChannelAttention, DaVit, WindowAttention
    from compress.structured.channel_attention import ChannelHeadsAttention
    from compress.structured.metaformer_attention import MetaFormerHeadsAttention

    torch.manual_seed(0)
    x = torch.randn(2, 49, 32)
    for theirs, make in ((WindowAttention(32, (7, 7), num_heads=4), MetaFormerHeadsAttention.from_davit),
                         (ChannelAttention(32, num_heads=4), ChannelHeadsAttention.from_davit)):
        ours = make(theirs.eval()).eval()
        with torch.no_grad():
            assert torch.allclose(ours(x), theirs(x), atol=1e-6)
        assert list(ours.state_dict()) == list(theirs.state_dict())
    model = DaVit(depths=(1, 1, 1), embed_dims=(16, 32, 64), num_heads=(1, 2, 4), num_classes=10)
    model, x = _randomise_norms(model).eval(), torch.randn(2, 3, 64, 64)
    groups = channel_groups(model, x)
    assert isinstance(model.stages[0].blocks[0][1].attn, ChannelHeadsAttention)
    heads = [g for g in groups if g.layout and g.prunable]
    assert [g.size for g in heads] == [1, 1, 2, 2, 4, 4]
    cut, diff, _ = cut_vs_masked(model, x, ratio=0.4)
    assert cut >= 12 and diff < 1e-4


def test_tinyvit_attention_is_swapped_for_a_twin_without_its_cache_and_its_heads_are_cut():
    """TinyViT's attention (MobileSAM's encoder; LeViT's with a LayerNorm in front) split q, k and v in the
    graph at sizes no attribute held and cached its biases in eval mode: heads and stream stayed whole
    (tiny_vit_5m_224 lost 27% of its MACs, 51% now). The twin computes the same under the same keys, no
    cache; heads are cut with their bias rows, the norm passes the stream."""
    from timm.models.tiny_vit import Attention, TinyVit
    from compress.structured.tinyvit_attention import TinyVitHeadsAttention

    torch.manual_seed(0)
    theirs = Attention(32, key_dim=8, num_heads=4, attn_ratio=2, resolution=(3, 3))
    with torch.no_grad():
        theirs.attention_biases.normal_()
    theirs.eval()
    _computes_as_theirs(TinyVitHeadsAttention.from_timm(theirs).eval(), theirs, torch.randn(2, 9, 32))

    model = TinyVit(num_classes=10, embed_dims=(16, 32, 64), depths=(1, 1, 1), num_heads=(1, 2, 4), drop_path_rate=0.0,
                    window_sizes=(4, 4, 4))
    model, x = _randomise_norms(model).eval(), torch.randn(2, 3, 64, 64)
    for attn in (m for m in model.modules() if isinstance(m, Attention)):
        with torch.no_grad():
            attn.attention_biases.normal_()
    attn, heads = _swapped_heads(model, x, "stages.2.blocks.0.attn", TinyVitHeadsAttention, "qkv")
    assert heads.size == 4
    cut, diff, _ = cut_vs_masked(model, x, ratio=0.4)
    assert cut >= 6 and diff < 1e-4
    remove_channels(model, next(g for g in channel_groups(model, x) if g.key == heads.key), torch.tensor([0, 3]))
    assert (attn.num_heads, attn.out_dim, attn.attention_biases.shape[0], attn.proj.in_features) == \
        (2, 2 * attn.val_dim, 2, 2 * attn.val_dim)
    with torch.no_grad():
        model(x), model(x)  # eval mode twice: nothing cached from before the cut


def test_xcit_cross_covariance_attention_is_swapped_for_a_twin_and_its_heads_are_cut():
    """XCiT's XCA (each head attends over its own channels, q and k normalised, a temperature per head)
    reshaped its heads' output to the input's width: its heads stayed whole (xcit_tiny_12_p16_224 lost 21%
    of its MACs, 36% now; its stream stays whole for its Fourier position encoding). The twin computes the
    same under the same keys; heads are cut with their temperature."""
    from timm.models.xcit import XCA, Xcit
    from compress.structured.channel_attention import XcaHeadsAttention

    torch.manual_seed(0)
    theirs = XCA(32, num_heads=4).eval()
    with torch.no_grad():
        theirs.temperature.uniform_(0.5, 2.0)
    _computes_as_theirs(XcaHeadsAttention.from_timm(theirs).eval(), theirs, torch.randn(2, 9, 32))

    model = Xcit(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=4, cls_attn_layers=1, num_classes=10)
    model, x = _randomise_norms(model).eval(), torch.randn(2, 3, 64, 64)
    for attn in (m for m in model.modules() if isinstance(m, XCA)):
        with torch.no_grad():
            attn.temperature.uniform_(0.5, 2.0)
    attn, heads = _swapped_heads(model, x, "blocks.1.attn", XcaHeadsAttention, "qkv")
    assert heads.size == 4 and ("blocks.1.attn.temperature", 0) in heads.parameters
    cut, diff, _ = cut_vs_masked(model, x, ratio=0.5)
    assert cut >= 4 and diff < 1e-4
    remove_channels(model, next(g for g in channel_groups(model, x) if g.key == heads.key), torch.tensor([1, 2]))
    assert (attn.num_heads, attn.attn_dim, attn.temperature.shape[0]) == (2, 16, 2)
