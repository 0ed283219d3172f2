"""timm's PVT-v2 attention (and Twins', the same global one and a windowed one) with heads, and its
spatial reduction, that can be cut.

timm's `pvt_v2.Attention` reads q from the tokens and k, v from them after a spatial reduction (a
strided conv `sr` and a LayerNorm, or an average pool, a 1x1 conv, a LayerNorm and a GELU), and it
reshapes both the reduction's output and the heads' output to the width of its input
(`reshape(B, C, -1)`, `reshape(B, N, C)` with `B, N, C = x.shape`), which stays right only while
nothing inside is cut: the channel rules had to keep heads, reduction and the residual stream whole.
`PvtHeadsAttention` computes the same function from the same modules and Parameters, under the same
state_dict keys, reshaping to each tensor's own width instead (also for Twins' `GlobalSubSampleAttn`;
its `LocallyGroupedAttn` gets `LocalHeadsAttention`, read by the qkv-attention rule of ops.py); `pvt_attention` is its channel rule:
q, and `sr` (or kv without it) read the tokens' channels; `sr` writes channels of its own, which its
LayerNorm passes and kv reads; the heads (head_dim rows of q, of k and of v; head_dim inputs of
`proj`) are a group; `proj` writes new channels. A zeroed head attends to zero values and outputs
exact zeros. `prepare_attention` (attention.py) swaps it in and checks the model computes the same.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .rules import register_module_rule


class LocalHeadsAttention(nn.Module):
    """timm's twins.LocallyGroupedAttn as it computes it (attention within ws x ws windows of the H x W
    map, zero-padded to whole windows), reshaping the heads' output to its own `attn_dim` instead of the
    input's width: the qkv-attention rule (ops.py) then reads it as timm's Attention."""

    def __init__(self, qkv: nn.Linear, proj: nn.Linear, attn_drop: nn.Module, proj_drop: nn.Module, ws: int,
                 num_heads: int, head_dim: int, scale: float, fused_attn: bool):
        super().__init__()
        self.qkv, self.proj, self.attn_drop, self.proj_drop, self.ws = qkv, proj, attn_drop, proj_drop, ws
        self.num_heads, self.head_dim, self.scale, self.fused_attn = num_heads, head_dim, scale, fused_attn
        self.attn_dim = num_heads * head_dim

    @classmethod
    def from_twins(cls, m: nn.Module) -> LocalHeadsAttention:
        """The same attention as timm's twins.LocallyGroupedAttn `m`, sharing its modules and Parameters."""
        new = cls(m.qkv, m.proj, m.attn_drop, m.proj_drop, m.ws, m.num_heads, m.dim // m.num_heads, m.scale,
                  m.fused_attn)
        return new.train(m.training)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        h, w = size
        ws = self.ws
        pad_r, pad_b = (ws - w % ws) % ws, (ws - h % ws) % ws
        x = F.pad(x.view(b, h, w, c), (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = x.shape[1], x.shape[2]
        nh, nw = hp // ws, wp // ws
        x = x.reshape(b, nh, ws, nw, ws, c).transpose(2, 3)
        q, k, v = self.qkv(x).reshape(b, nh * nw, ws * ws, 3, self.num_heads, self.head_dim) \
            .permute(3, 0, 1, 4, 2, 5).unbind(0)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            x = self.attn_drop(((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)) @ v
        x = x.transpose(2, 3).reshape(b, nh, nw, ws, ws, self.attn_dim)
        x = x.transpose(2, 3).reshape(b, nh * ws, nw * ws, self.attn_dim)
        if pad_r > 0 or pad_b > 0:
            x = x[:, :h, :w, :].contiguous()
        return self.proj_drop(self.proj(x.reshape(b, n, self.attn_dim)))


class PvtHeadsAttention(nn.Module):
    """Attention over [B, N, C] tokens of an H x W map as timm's pvt_v2.Attention computes it."""

    def __init__(self, q: nn.Linear, kv: nn.Linear, proj: nn.Linear, attn_drop: nn.Module, proj_drop: nn.Module,
                 sr: nn.Module | None, norm: nn.Module | None, pool: nn.Module | None, act: nn.Module | None,
                 num_heads: int, head_dim: int, scale: float, fused_attn: bool):
        super().__init__()
        self.q, self.kv, self.proj, self.attn_drop, self.proj_drop = q, kv, proj, attn_drop, proj_drop
        self.sr, self.norm, self.pool, self.act = sr, norm, pool, act
        self.num_heads, self.head_dim, self.scale, self.fused_attn = num_heads, head_dim, scale, fused_attn
        self.attn_dim = num_heads * head_dim

    @classmethod
    def from_timm(cls, m: nn.Module) -> PvtHeadsAttention:
        """The same attention as timm's pvt_v2.Attention `m`, sharing its modules and Parameters."""
        new = cls(m.q, m.kv, m.proj, m.attn_drop, m.proj_drop, m.sr, m.norm, m.pool, m.act, m.num_heads,
                  m.head_dim, m.scale, m.fused_attn)
        return new.train(m.training)

    @classmethod
    def from_twins(cls, m: nn.Module) -> PvtHeadsAttention:
        """The same attention as timm's twins.GlobalSubSampleAttn `m` (PVT's, without pooling)."""
        new = cls(m.q, m.kv, m.proj, m.attn_drop, m.proj_drop, m.sr, m.norm, None, None, m.num_heads,
                  m.dim // m.num_heads, m.scale, m.fused_attn)
        return new.train(m.training)

    def forward(self, x: torch.Tensor, feat_size: list[int]) -> torch.Tensor:
        b, n, c = x.shape
        h, w = feat_size
        q = self.q(x).reshape(b, n, self.num_heads, self.head_dim).permute(0, 2, 1, 3)
        if self.sr is not None:
            x = x.permute(0, 2, 1).reshape(b, c, h, w)
            x = self.sr(self.pool(x) if self.pool is not None else x).flatten(2).permute(0, 2, 1)
            x = self.norm(x)
            if self.act is not None:
                x = self.act(x)
        k, v = self.kv(x).reshape(b, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            x = self.attn_drop(((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)) @ v
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, self.attn_dim)))


def pvt_attention(w, node, m: PvtHeadsAttention) -> None:
    """The channel rule of the twin (see the module docstring)."""
    name, x = node.target, w.first(node)
    heads, dim = m.num_heads, m.head_dim
    width = m.q.in_features
    sr_ok = m.sr is None or (type(m.sr) is nn.Conv2d and m.sr.groups == 1 and m.sr.in_channels == width
                             and type(m.norm) is nn.LayerNorm and m.norm.normalized_shape == (m.sr.out_channels,)
                             and (m.pool is None or type(m.pool) is nn.AdaptiveAvgPool2d)
                             and (m.act is None or type(m.act) is nn.GELU))
    ok = all(type(t) is nn.Linear for t in (m.q, m.kv, m.proj)) and m.q.out_features == heads * dim \
        and m.kv.out_features == 2 * heads * dim and m.proj.in_features == heads * dim and sr_ok \
        and (m.sr is not None or m.kv.in_features == width) and (m.sr is None or m.kv.in_features == m.sr.out_channels)
    if not ok or (x in w.label and w.axis[x] != w.ndim(x) - 1):
        why = f"{name} ({type(m).__name__}): an attention layout this rule does not know"
        w.block(node, why)
        w.start(node, node.meta["tensor_meta"].shape[-1], blocker=why, axis=w.ndim(node) - 1)
        return
    if x in w.label:
        w.join(f"{name}.q", w.label[x], "consumer", x)
    if m.sr is not None:  # the reduction: channels of its own, normalised, read by kv
        if x in w.label:
            w.join(f"{name}.sr", w.label[x], "consumer", x)
        reduced = w.g.get(w.g.new(m.sr.out_channels))
        reduced.producers.append(f"{name}.sr")
        w.produced[f"{name}.sr"] = ((reduced.id, 1),)
        w.join(f"{name}.norm", ((reduced.id, 1),), "passthrough")
        w.join(f"{name}.kv", ((reduced.id, 1),), "consumer")
    elif x in w.label:
        w.join(f"{name}.kv", w.label[x], "consumer", x)
    group = w.g.get(w.g.new(heads))
    for path, repeat in (("q", 1), ("kv", 2)):
        group.producers.append(f"{name}.{path}")
        group.layout[f"{name}.{path}"] = (dim, repeat)
    w.join(f"{name}.proj", ((group.id, dim),), "consumer")
    group.counters += [(name, "num_heads", 1), (name, "attn_dim", dim)]
    w.start(node, m.proj.out_features, producer=f"{name}.proj", axis=w.ndim(node) - 1)


register_module_rule(PvtHeadsAttention, pvt_attention)
