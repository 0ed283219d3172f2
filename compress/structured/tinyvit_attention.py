"""timm's TinyViT attention (MobileSAM's image encoder) with heads that can be cut.

TinyViT's attention is LeViT's (levit_attention.py) with a LayerNorm in front and a plain Linear:
each head is key_dim rows of q, key_dim of k and val_dim of v, side by side in `qkv`, plus a row of
`attention_biases`; `proj` reads val_dim inputs per head. In eval mode it caches its biases per
device, which a cut would leave stale, and timm's channel split of q, k and v happens in the graph at
sizes no attribute holds whole. `TinyVitHeadsAttention` computes the same from the same modules and
Parameters, under the same state_dict keys, without the cache; `tinyvit_attention` is its channel rule:
the LayerNorm passes the tokens' channels, `qkv` reads them, the heads are a group, `proj` writes new
channels. A zeroed head has zero q, k and v: its logits are its biases alone and it attends to zero
values, so it outputs exact zeros. `prepare_attention` (attention.py) swaps it in and checks the model
computes the same.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .rules import register_module_rule


class TinyVitHeadsAttention(nn.Module):
    """Self-attention over [B, N, C] tokens as timm's tiny_vit.Attention computes it."""

    def __init__(self, norm: nn.Module, qkv: nn.Linear, proj: nn.Linear, attention_biases: nn.Parameter,
                 bias_idxs: torch.Tensor, num_heads: int, key_dim: int, val_dim: int, scale: float, fused_attn: bool):
        super().__init__()
        self.norm, self.qkv, self.proj, self.attention_biases = norm, qkv, proj, attention_biases
        self.register_buffer("attention_bias_idxs", bias_idxs, persistent=False)
        self.num_heads, self.key_dim, self.val_dim, self.scale = num_heads, key_dim, val_dim, scale
        self.out_dim, self.fused_attn = val_dim * num_heads, fused_attn

    @classmethod
    def from_timm(cls, m: nn.Module) -> TinyVitHeadsAttention:
        """The same attention as timm's tiny_vit.Attention `m`, sharing its modules and Parameters."""
        new = cls(m.norm, m.qkv, m.proj, m.attention_biases, m.attention_bias_idxs, m.num_heads, m.key_dim,
                  m.val_dim, m.scale, m.fused_attn)
        return new.train(m.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.attention_biases[:, self.attention_bias_idxs]
        b, n, _ = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, n, self.num_heads, -1).split(
            [self.key_dim, self.key_dim, self.val_dim], dim=3)
        q, k, v = q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:
            x = ((q * self.scale) @ k.transpose(-2, -1) + bias).softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, self.out_dim))


def tinyvit_attention(w, node, m: TinyVitHeadsAttention) -> None:
    """The channel rule of the twin (see the module docstring)."""
    name, x = node.target, w.first(node)
    kd, vd, heads = m.key_dim, m.val_dim, m.num_heads
    ok = type(m.norm) is nn.LayerNorm and type(m.qkv) is nn.Linear and type(m.proj) is nn.Linear \
        and m.norm.normalized_shape == (m.qkv.in_features,) and m.qkv.out_features == heads * (2 * kd + vd) \
        and m.proj.in_features == heads * vd and m.attention_biases.shape[0] == heads
    if not ok or (x in w.label and (w.axis[x] != w.ndim(x) - 1 or any(per != 1 for _, per in w.label[x]))):
        why = f"{name} ({type(m).__name__}): an attention layout this rule does not know"
        w.block(node, why)
        w.start(node, node.meta["tensor_meta"].shape[-1], blocker=why, axis=w.ndim(node) - 1)
        return
    if x in w.label:
        if w.shifted.get(x):  # the norm's statistics would see the constant, not a zero
            w.block(node, f"{name}.norm normalises channels that carry {w.shifted[x]}")
        else:
            w.join(f"{name}.norm", w.label[x], "passthrough")
            w.join(f"{name}.qkv", w.label[x], "consumer")
    group = w.g.get(w.g.new(heads))
    group.producers.append(f"{name}.qkv")
    group.layout[f"{name}.qkv"] = (2 * kd + vd, 1)
    group.parameters.append((f"{name}.attention_biases", 0))
    w.join(f"{name}.proj", ((group.id, vd),), "consumer")
    group.counters += [(name, "num_heads", 1), (name, "out_dim", vd)]
    w.start(node, m.proj.out_features, producer=f"{name}.proj", axis=w.ndim(node) - 1)


register_module_rule(TinyVitHeadsAttention, tinyvit_attention)
