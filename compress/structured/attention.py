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

from ..modes import evaluating
from .outputs import output_tensors
from .levit_attention import LevitDownsampleHeadsAttention, LevitHeadsAttention
from .channel_attention import ChannelHeadsAttention, XcaHeadsAttention
from .metaformer_attention import MetaFormerHeadsAttention
from .pvt_attention import LocalHeadsAttention, PvtHeadsAttention
from .tinyvit_attention import TinyVitHeadsAttention
from .window_attention import PartitionHeadsAttention, WindowHeadsAttention, WindowHeadsAttentionV2

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

    # what code written for nn.MultiheadAttention may read (q, k and v come from the fused in_proj)
    _qkv_same_embed_dim, bias_k, bias_v, add_zero_attn = True, None, None, False
    q_proj_weight = k_proj_weight = v_proj_weight = None

    @property
    def embed_dim(self) -> int:
        return self.in_proj.in_features

    kdim = vdim = embed_dim

    @property
    def in_proj_weight(self) -> torch.Tensor:
        return self.in_proj.weight

    @in_proj_weight.setter
    def in_proj_weight(self, value: torch.Tensor) -> None:
        self.in_proj.weight = value

    @property
    def in_proj_bias(self) -> torch.Tensor | None:
        return self.in_proj.bias

    @in_proj_bias.setter
    def in_proj_bias(self, value: torch.Tensor | None) -> None:
        self.in_proj.bias = value

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        batched, same = query.dim() == 3, query is key and key is value
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            key_padding_mask = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
        elif self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        # [L, N, E] from here on, as nn.MultiheadAttention works
        inner, (tgt, n), src = self.num_heads * self.head_dim, query.shape[:2], key.shape[0]
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint")  # as nn.MultiheadAttention

        def heads(x: torch.Tensor, length: int) -> torch.Tensor:
            return x.reshape(length, n * self.num_heads, self.head_dim).transpose(0, 1)

        if same:  # one projection, as nn.MultiheadAttention does (and a module call)
            q, k, v = self.in_proj(query).split(inner, dim=-1)
        else:
            w, b = self.in_proj.weight, self.in_proj.bias
            bq, bk, bv = b.split(inner) if b is not None else (None, None, None)
            wq, wk, wv = w.split(inner)
            q, k, v = F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)
        q, k, v = heads(q, tgt), heads(k, src), heads(v, src)
        scores = torch.bmm(q, k.transpose(1, 2)) / math.sqrt(self.head_dim)  # [N·H, L, S]
        mask = _additive_mask(attn_mask, key_padding_mask, n, self.num_heads, src, scores.dtype)
        if mask is not None:
            scores = scores + mask
        weights = torch.softmax(scores, dim=-1)
        if mask is not None and not need_weights:  # its fused kernel gives a query that sees no key 0, not NaN
            weights = weights.masked_fill(torch.isneginf(scores).all(-1, keepdim=True), 0.0)
        weights = F.dropout(weights, self.dropout, self.training)  # returned as applied
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


def _additive_mask(attn_mask, key_padding_mask, n: int, heads: int, src: int,
                   dtype: torch.dtype) -> torch.Tensor | None:
    """nn.MultiheadAttention's masks (bool: True = not attended; float: added) as one float mask that
    broadcasts to [N·H, L, S]."""
    def additive(m: torch.Tensor) -> torch.Tensor:
        if m.dtype == torch.bool:
            return torch.zeros_like(m, dtype=dtype).masked_fill(m, float("-inf"))
        if not m.is_floating_point():
            raise AssertionError(f"only bool and floating types of masks are supported, got {m.dtype}")
        return m.to(dtype)

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
    """Our keys renamed to nn.MultiheadAttention's, in place and in order."""
    names = {prefix + ours: prefix + theirs for ours, theirs in _KEYS.items()}
    if any(k in state for k in names):
        items = list(state.items())
        state.clear()
        state.update((names.get(k, k), v) for k, v in items)


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
# attention whose heads (and the width around them) its own code fixes -> the converter to its twin
_TWINS = {"torchvision.models.swin_transformer.ShiftedWindowAttention": WindowHeadsAttention.from_torchvision,
          "torchvision.models.swin_transformer.ShiftedWindowAttentionV2": WindowHeadsAttentionV2.from_torchvision,
          "torchvision.models.maxvit.RelativePositionalMultiHeadAttention": PartitionHeadsAttention.from_torchvision,
          "timm.models.metaformer.Attention": MetaFormerHeadsAttention.from_timm,
          "timm.models.levit.Attention": LevitHeadsAttention.from_timm,
          "timm.models.levit.AttentionDownsample": LevitDownsampleHeadsAttention.from_timm,
          "timm.models.pvt_v2.Attention": PvtHeadsAttention.from_timm,
          "timm.models.twins.GlobalSubSampleAttn": PvtHeadsAttention.from_twins,
          "timm.models.twins.LocallyGroupedAttn": LocalHeadsAttention.from_twins,
          "timm.models.davit.WindowAttention": MetaFormerHeadsAttention.from_davit,
          "timm.models.davit.ChannelAttention": ChannelHeadsAttention.from_davit,
          "timm.models.tiny_vit.Attention": TinyVitHeadsAttention.from_timm,
          "timm.models.xcit.XCA": XcaHeadsAttention.from_timm}


def _swap_for(m: nn.Module, parent: nn.Module):
    """The converter for `m` (a function making its cuttable twin), or None."""
    if convertible(m) and not isinstance(parent, _TORCH_LAYERS):
        return HeadsAttention.from_mha
    return _TWINS.get(f"{type(m).__module__}.{type(m).__qualname__}")


def prepare_attention(model: nn.Module, example: torch.Tensor | None = None) -> list[str]:
    """Swap, in place, every convertible nn.MultiheadAttention for the `HeadsAttention` computing the
    same (same Parameters, same state_dict keys), except inside torch's own Transformer layers (whose
    fast path reads nn.MultiheadAttention's internals), and torchvision's Swin (V1, V2) and MaxViT
    attention and timm's MetaFormer, LeViT, PVT-v2, Twins, DaViT, TinyViT and XCiT attention for their twins (window_attention.py,
    metaformer_attention.py, levit_attention.py, pvt_attention.py, channel_attention.py, tinyvit_attention.py). With an `example` input the model is run before
    and after (eval mode, a seeded random batch shaped like it, else the example itself): if it fails
    or computes otherwise after the swap (code that reads what only nn.MultiheadAttention has), every
    swap is undone; a model that runs on neither is left as it is. Returns the paths swapped."""
    targets = []
    for path, m in model.named_modules():
        parent_path, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_path) if path else None
        swap = _swap_for(m, parent) if parent is not None else None
        twin = swap(m) if swap is not None else None  # a converter may find no twin for this one
        if twin is not None:
            targets.append((parent, attr, m, path, twin))
    if not targets:
        return []
    inputs = [] if example is None else \
        [torch.randn(example.shape, generator=torch.Generator().manual_seed(0)).to(example), example]
    before, x = None, None
    for x in inputs:
        before = _outputs(model, x)
        if before is not None:
            break
    if inputs and before is None:  # the model does not run on such inputs: nothing to check a swap against
        return []
    for parent, attr, _, _, twin in targets:
        setattr(parent, attr, twin)
    if before is not None:
        after = _outputs(model, x)
        if after is None or len(after) != len(before) or any(
                a.shape != b.shape or not torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(before, after)):
            for parent, attr, m, _, _ in targets:
                setattr(parent, attr, m)
            return []
    return [path for _, _, _, path, _ in targets]


def _outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor] | None:
    """The tensors of model(x) in eval mode (as float32), or None if it fails."""
    try:
        with torch.no_grad(), evaluating(model):
            out = model(x)
    except Exception:
        return None
    return [t.float() for t in output_tensors(out)]
