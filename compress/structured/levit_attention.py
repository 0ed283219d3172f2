"""timm's LeViT attention with heads that can be cut.

Each head of timm's `levit.Attention` is key_dim rows of q, key_dim of k and val_dim of v, side by
side in one `LinearNorm` (a Linear and a BatchNorm1d over its rows), plus a row of `attention_biases`;
`proj` (an activation, then a LinearNorm) reads val_dim inputs per head. In eval mode it caches its
biases per device, a tensor a cut would leave stale. `LevitHeadsAttention` computes the same from
the same modules and Parameters, under the same state_dict keys, without the cache, and
`LevitDownsampleHeadsAttention` the same for the attention between stages (`AttentionDownsample`: k and v
from all tokens, q from every stride-th, into a wider stream); `levit_attention` is their channel rule:
qkv (kv and q) read the tokens' channels, `proj` writes new ones, and the heads are a group of their own. A zeroed head has zero q, k and v: its logits are its biases alone, and it
attends to zero values, so it outputs exact zeros. `prepare_attention` (attention.py) swaps it in
and checks the model computes the same.
"""
from __future__ import annotations

import torch
from torch import nn

from .rules import register_module_rule

# activations between the heads and proj that keep a zero a zero
_ZERO_KEEPING = (nn.Hardswish, nn.ReLU, nn.GELU, nn.SiLU, nn.Identity)


class LevitHeadsAttention(nn.Module):
    """Self-attention over [B, N, C] tokens as timm's levit.Attention (use_conv=False) computes it."""

    def __init__(self, qkv: nn.Module, proj: nn.Module, attention_biases: nn.Parameter, bias_idxs: torch.Tensor,
                 num_heads: int, key_dim: int, val_dim: int, scale: float):
        super().__init__()
        self.qkv, self.proj, self.attention_biases = qkv, proj, attention_biases
        self.register_buffer("attention_bias_idxs", bias_idxs, persistent=False)
        self.num_heads, self.key_dim, self.val_dim, self.scale = num_heads, key_dim, val_dim, scale
        self.val_attn_dim = val_dim * num_heads

    @classmethod
    def from_timm(cls, m: nn.Module) -> LevitHeadsAttention | None:
        """The same attention as timm's levit.Attention `m`, sharing its modules and Parameters (None when
        it runs on [B, C, H, W] maps: use_conv)."""
        if m.use_conv:
            return None
        new = cls(m.qkv, m.proj, m.attention_biases, m.attention_bias_idxs, m.num_heads, m.key_dim, m.val_dim,
                  m.scale)
        return new.train(m.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, self.num_heads, -1).split([self.key_dim, self.key_dim, self.val_dim], dim=3)
        attn = q.permute(0, 2, 1, 3) @ k.permute(0, 2, 3, 1) * self.scale + \
            self.attention_biases[:, self.attention_bias_idxs]
        x = (attn.softmax(dim=-1) @ v.permute(0, 2, 1, 3)).transpose(1, 2).reshape(b, n, self.val_attn_dim)
        return self.proj(x)


class LevitDownsampleHeadsAttention(nn.Module):
    """timm's levit.AttentionDownsample (use_conv=False) as it computes it, without its bias cache."""

    def __init__(self, kv: nn.Module, q: nn.Module, proj: nn.Module, attention_biases: nn.Parameter,
                 bias_idxs: torch.Tensor, num_heads: int, key_dim: int, val_dim: int, scale: float):
        super().__init__()
        self.kv, self.q, self.proj, self.attention_biases = kv, q, proj, attention_biases
        self.register_buffer("attention_bias_idxs", bias_idxs, persistent=False)
        self.num_heads, self.key_dim, self.val_dim, self.scale = num_heads, key_dim, val_dim, scale
        self.val_attn_dim = val_dim * num_heads

    @classmethod
    def from_timm(cls, m: nn.Module) -> LevitDownsampleHeadsAttention | None:
        """The same attention as timm's AttentionDownsample `m`, sharing its modules (None with use_conv)."""
        if m.use_conv:
            return None
        new = cls(m.kv, m.q, m.proj, m.attention_biases, m.attention_bias_idxs, m.num_heads, m.key_dim, m.val_dim,
                  m.scale)
        return new.train(m.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        k, v = self.kv(x).view(b, n, self.num_heads, -1).split([self.key_dim, self.val_dim], dim=3)
        q = self.q(x).view(b, -1, self.num_heads, self.key_dim).permute(0, 2, 1, 3)
        attn = q @ k.permute(0, 2, 3, 1) * self.scale + self.attention_biases[:, self.attention_bias_idxs]
        x = (attn.softmax(dim=-1) @ v.permute(0, 2, 1, 3)).transpose(1, 2).reshape(b, -1, self.val_attn_dim)
        return self.proj(x)


def _linear_norm(m) -> bool:
    """timm's LinearNorm: a Linear and a BatchNorm1d over its rows."""
    return isinstance(getattr(m, "linear", None), nn.Linear) and isinstance(getattr(m, "bn", None), nn.BatchNorm1d)


def levit_attention(w, node, m: LevitHeadsAttention | LevitDownsampleHeadsAttention) -> None:
    """The channel rule of both twins (see the module docstring)."""
    name, x = node.target, w.first(node)
    kd, vd, heads, proj = m.key_dim, m.val_dim, m.num_heads, m.proj
    # (LinearNorm path, rows per head) of what reads the tokens and writes the heads' q, k and v
    readers = [("qkv", 2 * kd + vd)] if isinstance(m, LevitHeadsAttention) else [("kv", kd + vd), ("q.ln", kd)]
    down = getattr(getattr(m, "q", None), "down", None)
    ok = all(_linear_norm(m.get_submodule(path)) and m.get_submodule(path).linear.out_features == heads * per
             for path, per in readers) \
        and (down is None or (type(down).__name__ == "Downsample" and type(down).__module__ == "timm.models.levit"
                              and len(m.q) == 2)) \
        and isinstance(getattr(proj, "act", None), _ZERO_KEEPING) and len(proj) == 2 and _linear_norm(proj.ln) \
        and proj.ln.linear.in_features == heads * vd
    if not ok or (x in w.label and w.axis[x] != w.ndim(x) - 1):
        why = f"{name} ({type(m).__name__}): an attention layout this rule does not know"
        w.block(node, why)
        w.start(node, node.meta["tensor_meta"].shape[-1], blocker=why, axis=w.ndim(node) - 1)
        return
    group = w.g.get(w.g.new(heads))
    for path, per in readers:  # a head: its rows of each (side by side), and of each one's BatchNorm
        if x in w.label:  # timm's Downsample keeps every channel of the tokens it keeps
            w.join(f"{name}.{path}.linear", w.label[x], "consumer", x)
        group.producers.append(f"{name}.{path}.linear")
        group.layout[f"{name}.{path}.linear"] = (per, 1)
        group.passthrough.append(f"{name}.{path}.bn")
        group.passthrough_per[f"{name}.{path}.bn"] = per
    group.parameters.append((f"{name}.attention_biases", 0))
    w.join(f"{name}.proj.ln.linear", ((group.id, vd),), "consumer")
    group.counters += [(name, "num_heads", 1), (name, "val_attn_dim", vd)]
    w.start(node, proj.ln.linear.out_features, producer=f"{name}.proj.ln.linear", axis=w.ndim(node) - 1)
    w.g.get(w.label[node][0][0]).passthrough.append(f"{name}.proj.ln.bn")


register_module_rule(LevitHeadsAttention, levit_attention)
register_module_rule(LevitDownsampleHeadsAttention, levit_attention)
