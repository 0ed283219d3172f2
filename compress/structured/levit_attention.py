"""timm's LeViT attention with heads that can be cut.

Each head of timm's `levit.Attention` is key_dim rows of q, key_dim of k and val_dim of v, side by
side in one `LinearNorm` (a Linear and a BatchNorm1d over its rows), plus a row of `attention_biases`;
`proj` (an activation, then a LinearNorm) reads val_dim inputs per head. In eval mode it caches its
biases per device, a tensor a cut would leave stale. `LevitHeadsAttention` computes the same from
the same modules and Parameters, under the same state_dict keys, without the cache; `levit_attention`
is its channel rule: qkv reads the tokens' channels, `proj` writes new ones, and the heads are a
group of their own. A zeroed head has zero q, k and v: its logits are its biases alone, and it
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


def levit_attention(w, node, m: LevitHeadsAttention) -> None:
    """The channel rule of LevitHeadsAttention (see the module docstring)."""
    name, x = node.target, w.first(node)
    qkv, proj = m.qkv, m.proj
    per = 2 * m.key_dim + m.val_dim
    ok = isinstance(getattr(qkv, "linear", None), nn.Linear) and isinstance(getattr(qkv, "bn", None), nn.BatchNorm1d) \
        and qkv.linear.out_features == m.num_heads * per and isinstance(getattr(proj, "ln", None), nn.Module) \
        and isinstance(getattr(proj.ln, "linear", None), nn.Linear) and isinstance(getattr(proj.ln, "bn", None), nn.BatchNorm1d) \
        and isinstance(getattr(proj, "act", None), _ZERO_KEEPING) and len(proj) == 2 \
        and proj.ln.linear.in_features == m.num_heads * m.val_dim
    if not ok or (x in w.label and w.axis[x] != w.ndim(x) - 1):
        why = f"{name} ({type(m).__name__}): an attention layout this rule does not know"
        w.block(node, why)
        w.start(node, node.meta["tensor_meta"].shape[-1], blocker=why, axis=w.ndim(node) - 1)
        return
    if x in w.label:
        w.join(f"{name}.qkv.linear", w.label[x], "consumer", x)
    heads = w.g.get(w.g.new(m.num_heads))
    heads.producers.append(f"{name}.qkv.linear")
    heads.layout[f"{name}.qkv.linear"] = (per, 1)  # a head's q, k and v rows side by side
    heads.passthrough.append(f"{name}.qkv.bn")
    heads.passthrough_per[f"{name}.qkv.bn"] = per
    heads.parameters.append((f"{name}.attention_biases", 0))
    w.join(f"{name}.proj.ln.linear", ((heads.id, m.val_dim),), "consumer")
    heads.counters += [(name, "num_heads", 1), (name, "val_attn_dim", m.val_dim)]
    w.start(node, proj.ln.linear.out_features, producer=f"{name}.proj.ln.linear", axis=w.ndim(node) - 1)
    w.g.get(w.label[node][0][0]).passthrough.append(f"{name}.proj.ln.bn")


register_module_rule(LevitHeadsAttention, levit_attention)
