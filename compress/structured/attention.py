"""nn.MultiheadAttention with heads that can be cut.

nn.MultiheadAttention ties its inner width (heads × head_dim) to the width of its input, so a model
with fewer heads cannot be one. `prepare_attention` swaps each one for a `HeadsAttention` that
computes the same function from the same Parameter objects (an optimizer holding them is unaffected)
and keeps the same state_dict keys (`in_proj_weight`, `in_proj_bias`, `out_proj.*`), with the fused
input projection as a Linear `in_proj`: the channel rules then read it as they read timm's
Attention (whole heads of q, k and v; `out_proj` reads the heads' outputs).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

_KEYS = {"in_proj.weight": "in_proj_weight", "in_proj.bias": "in_proj_bias"}


class HeadsAttention(nn.Module):
    """Multi-head attention as nn.MultiheadAttention computes it (same arguments and outputs), for
    any number of heads of `head_dim` each. Made from an nn.MultiheadAttention by `from_mha`."""

    def __init__(self, in_proj: nn.Linear, out_proj: nn.Linear, num_heads: int, head_dim: int,
                 dropout: float = 0.0, batch_first: bool = False):
        super().__init__()
        self.in_proj, self.out_proj = in_proj, out_proj
        self.num_heads, self.head_dim, self.dropout, self.batch_first = num_heads, head_dim, dropout, batch_first
        self._register_state_dict_hook(_to_mha_keys)
        self._register_load_state_dict_pre_hook(_from_mha_keys)

    @classmethod
    def from_mha(cls, m: nn.MultiheadAttention) -> HeadsAttention:
        """The same attention, sharing `m`'s Parameters (requires q, k, v of one width, no bias_k/v)."""
        in_proj = nn.Linear(m.embed_dim, 3 * m.embed_dim, bias=m.in_proj_bias is not None)
        in_proj.weight = m.in_proj_weight
        if m.in_proj_bias is not None:
            in_proj.bias = m.in_proj_bias
        new = cls(in_proj, m.out_proj, m.num_heads, m.head_dim, m.dropout, m.batch_first)
        return new.train(m.training)

    # what code written for nn.MultiheadAttention may read
    _qkv_same_embed_dim, bias_k, bias_v, add_zero_attn = True, None, None, False

    @property
    def embed_dim(self) -> int:
        return self.in_proj.in_features

    kdim = vdim = embed_dim

    @property
    def in_proj_weight(self) -> torch.Tensor:
        return self.in_proj.weight

    @property
    def in_proj_bias(self) -> torch.Tensor | None:
        return self.in_proj.bias

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            key_padding_mask = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
        elif self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        # [L, N, E] from here on, as nn.MultiheadAttention works
        inner, (tgt, n), src = self.num_heads * self.head_dim, query.shape[:2], key.shape[0]
        w, b = self.in_proj.weight, self.in_proj.bias
        bq, bk, bv = b.split(inner) if b is not None else (None, None, None)
        wq, wk, wv = w.split(inner)

        def heads(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, length: int) -> torch.Tensor:
            return F.linear(x, weight, bias).reshape(length, n * self.num_heads, self.head_dim).transpose(0, 1)

        q, k, v = heads(query, wq, bq, tgt), heads(key, wk, bk, src), heads(value, wv, bv, src)
        scores = torch.bmm(q, k.transpose(1, 2)) / math.sqrt(self.head_dim)  # [N·H, L, S]
        mask = _additive_mask(attn_mask, key_padding_mask, is_causal, n, self.num_heads, tgt, src, scores.dtype)
        if mask is not None:
            scores = scores + mask
        weights = F.dropout(torch.softmax(scores, dim=-1), self.dropout, self.training)  # returned as applied
        out = torch.bmm(weights, v)  # [N·H, L, head_dim]
        out = self.out_proj(out.transpose(0, 1).reshape(tgt, n, inner))
        if self.batch_first and batched:
            out = out.transpose(0, 1)
        if not batched:
            out = out.squeeze(1)
        if not need_weights:
            return out, None
        weights = weights.view(n, self.num_heads, tgt, src)
        weights = weights.mean(1) if average_attn_weights else weights
        return out, (weights if batched else weights.squeeze(0))


def _additive_mask(attn_mask, key_padding_mask, is_causal: bool, n: int, heads: int, tgt: int, src: int,
                   dtype: torch.dtype) -> torch.Tensor | None:
    """nn.MultiheadAttention's masks (bool: True = not attended; float: added) as one float mask that
    broadcasts to [N·H, L, S]."""
    def additive(m: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(m, dtype=dtype).masked_fill(m, float("-inf")) if m.dtype == torch.bool else m.to(dtype)

    if attn_mask is None and is_causal:
        attn_mask = torch.ones(tgt, src, dtype=torch.bool).triu(1)
    total = None
    if attn_mask is not None:
        total = additive(attn_mask)
        if total.dim() == 3 and total.shape[0] != n * heads:
            raise ValueError(f"attn_mask for {total.shape[0] // max(n, 1)} heads given to attention with {heads}")
    if key_padding_mask is not None:
        pad = additive(key_padding_mask).view(n, 1, 1, src).expand(n, heads, 1, src).reshape(n * heads, 1, src)
        total = pad if total is None else total + pad
    return total


def _to_mha_keys(module, state: dict, prefix: str, local_metadata) -> None:
    for ours, theirs in _KEYS.items():
        if prefix + ours in state:
            state[prefix + theirs] = state.pop(prefix + ours)


def _from_mha_keys(state: dict, prefix: str, *args) -> None:
    for ours, theirs in _KEYS.items():
        if prefix + theirs in state:
            state[prefix + ours] = state.pop(prefix + theirs)


def convertible(m: nn.Module) -> bool:
    """An nn.MultiheadAttention `HeadsAttention.from_mha` reproduces: q, k and v of the input's width
    in one fused projection, no extra key/value bias, no added zero attention."""
    return type(m) is nn.MultiheadAttention and m._qkv_same_embed_dim and m.bias_k is None and \
        m.bias_v is None and not m.add_zero_attn


_TORCH_LAYERS = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def prepare_attention(model: nn.Module) -> list[str]:
    """Swap, in place, every convertible nn.MultiheadAttention for the `HeadsAttention` computing the
    same (same Parameters, same state_dict keys), except inside torch's own Transformer layers (whose
    fast path reads nn.MultiheadAttention's internals). Returns the paths swapped."""
    swapped = []
    for path, m in list(model.named_modules()):
        parent_path, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_path) if path else None
        if parent is None or not convertible(m) or isinstance(parent, _TORCH_LAYERS):
            continue
        setattr(parent, attr, HeadsAttention.from_mha(m))
        swapped.append(path)
    return swapped
