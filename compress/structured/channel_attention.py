"""Channel attention with heads that can be cut: DaViT's `ChannelAttention` and XCiT's `XCA`.

In both, each head attends over its own head_dim channels (a head_dim x head_dim map from k and v, or
from the L2-normalised q and k scaled by a learnt temperature per head), and both reshape the heads'
output to the width of their input, which stays right only while no head is cut. The twins compute the
same from the same modules and Parameters, under the same state_dict keys, reshaping to their own
`attn_dim`; the qkv-attention rule (ops.py) reads them as timm's Attention (XCiT's temperature rows go
with their head). A zeroed head has zero q, k and v: its map is a uniform softmax over zero values, so
it outputs exact zeros. `prepare_attention` (attention.py) swaps them in and checks the model computes
the same.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ChannelHeadsAttention(nn.Module):
    """timm's davit.ChannelAttention as it computes it: softmax(kᵀv) per head, applied to q."""

    def __init__(self, qkv: nn.Linear, proj: nn.Linear, num_heads: int, head_dim: int, scale: float):
        super().__init__()
        self.qkv, self.proj = qkv, proj
        self.num_heads, self.head_dim, self.scale = num_heads, head_dim, scale
        self.attn_dim = num_heads * head_dim

    @classmethod
    def from_davit(cls, m: nn.Module) -> ChannelHeadsAttention:
        """The same attention as timm's davit.ChannelAttention `m`, sharing its modules and Parameters."""
        new = cls(m.qkv, m.proj, m.num_heads, m.qkv.out_features // (3 * m.num_heads), m.scale)
        return new.train(m.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((k * self.scale).transpose(-1, -2) @ v).softmax(dim=-1)
        x = (attn @ q.transpose(-1, -2)).transpose(-1, -2)
        return self.proj(x.transpose(1, 2).reshape(b, n, self.attn_dim))


class XcaHeadsAttention(nn.Module):
    """timm's xcit.XCA (cross-covariance attention) as it computes it: per head, softmax(q̂ k̂ᵀ · temperature)
    over channels (q̂, k̂: q and k L2-normalised over the tokens), applied to v."""

    def __init__(self, qkv: nn.Linear, proj: nn.Linear, attn_drop: nn.Module, proj_drop: nn.Module,
                 temperature: nn.Parameter, num_heads: int, head_dim: int, fused_attn: bool):
        super().__init__()
        self.qkv, self.proj, self.attn_drop, self.proj_drop = qkv, proj, attn_drop, proj_drop
        self.temperature, self.num_heads, self.head_dim, self.fused_attn = temperature, num_heads, head_dim, fused_attn
        self.attn_dim = num_heads * head_dim

    @classmethod
    def from_timm(cls, m: nn.Module) -> XcaHeadsAttention:
        """The same attention as timm's xcit.XCA `m`, sharing its modules and Parameters."""
        new = cls(m.qkv, m.proj, m.attn_drop, m.proj_drop, m.temperature, m.num_heads,
                  m.qkv.out_features // (3 * m.num_heads), m.fused_attn)
        return new.train(m.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 4, 1).unbind(0)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q * self.temperature, k, v, scale=1.0)
        else:
            x = self.attn_drop(((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)) @ v
        return self.proj_drop(self.proj(x.permute(0, 3, 1, 2).reshape(b, n, self.attn_dim)))
