"""timm's MetaFormer attention (CAFormer's, and DaViT's window attention, the same) with heads and a
residual stream that can be cut.

timm's `metaformer.Attention` reshapes its heads' output to the width of its input
(`x.transpose(1, 2).reshape(B, N, C)` with `B, N, C = x.shape`), which equals heads × head_dim only
while neither is cut, so the channel rules must keep both whole. `MetaFormerHeadsAttention` computes
the same function from the same Parameters, under the same state_dict keys, reshaping to its own
`attn_dim` (heads × head_dim) instead, as timm's newer `Attention` does: the rules then read it as
that one (whole heads of q, k and v; `proj` writes the stream). `prepare_attention` (attention.py)
swaps it in and checks the model computes the same.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class MetaFormerHeadsAttention(nn.Module):
    """Self-attention over [B, N, C] tokens as timm's metaformer.Attention computes it, for `num_heads`
    heads of `head_dim` each."""

    def __init__(self, qkv: nn.Linear, proj: nn.Linear, attn_drop: nn.Module, proj_drop: nn.Module,
                 num_heads: int, head_dim: int, scale: float, fused_attn: bool):
        super().__init__()
        self.qkv, self.attn_drop, self.proj, self.proj_drop = qkv, attn_drop, proj, proj_drop
        self.num_heads, self.head_dim, self.scale, self.fused_attn = num_heads, head_dim, scale, fused_attn
        self.attn_dim = num_heads * head_dim

    @classmethod
    def from_timm(cls, m: nn.Module) -> MetaFormerHeadsAttention:
        """The same attention as timm's metaformer.Attention `m`, sharing its modules and Parameters."""
        new = cls(m.qkv, m.proj, m.attn_drop, m.proj_drop, m.num_heads, m.head_dim, m.scale, m.fused_attn)
        return new.train(m.training)

    @classmethod
    def from_davit(cls, m: nn.Module) -> MetaFormerHeadsAttention:
        """The same attention as timm's davit.WindowAttention `m` (within its windows), sharing its modules."""
        new = cls(m.qkv, m.proj, nn.Dropout(0.0), nn.Dropout(0.0), m.num_heads,
                  m.qkv.out_features // (3 * m.num_heads), m.scale, m.fused_attn)
        return new.train(m.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            x = self.attn_drop(((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)) @ v
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, self.attn_dim)))

