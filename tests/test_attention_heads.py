"""Attention heads as channel groups: timm's ViT / DeiT Attention and Swin's WindowAttention lose
whole heads (q, k, v rows and proj columns, num_heads, Swin's relative position bias columns), and
a user's own fused-qkv attention does once registered with the same rule. Every cut is compared
with the masked model; a dead head is harvested."""
import copy
import types

import timm  # the [test] extra installs it
import torch
from torch import nn

from compress.structured import channel_groups, remove_channels
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
