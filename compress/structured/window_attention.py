"""torchvision's Swin window attention (V1 and V2) and MaxViT's partition attention with heads that
can be cut.

torchvision's `shifted_window_attention` derives the head width from the input's width
(`C // num_heads`), so neither its heads nor the residual stream around it can change. `WindowHeadsAttention`
computes the same function from the same Parameter objects and buffers, under the same state_dict keys,
with the head width fixed at construction: the channel rules then read it as timm's Swin attention
(whole heads of q, k and v, their relative position bias columns; `proj` writes the stream).
`prepare_attention` (attention.py) swaps it in and checks the model computes the same.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class WindowHeadsAttention(nn.Module):
    """Shifted window attention over [B, H, W, C] as torchvision's ShiftedWindowAttention (Swin V1)
    computes it, for `num_heads` heads of `head_dim` each."""

    def __init__(self, qkv: nn.Linear, proj: nn.Linear, table: nn.Parameter, index: torch.Tensor,
                 window_size: list[int], shift_size: list[int], num_heads: int, head_dim: int,
                 attention_dropout: float = 0.0, dropout: float = 0.0):
        super().__init__()
        self.qkv, self.proj, self.relative_position_bias_table = qkv, proj, table
        self.register_buffer("relative_position_index", index)
        self.window_size, self.shift_size = list(window_size), list(shift_size)
        self.num_heads, self.head_dim = num_heads, head_dim
        self.attention_dropout, self.dropout = attention_dropout, dropout

    @classmethod
    def from_torchvision(cls, m: nn.Module) -> WindowHeadsAttention:
        """The same attention as torchvision's ShiftedWindowAttention `m`, sharing its Parameters."""
        new = cls(m.qkv, m.proj, m.relative_position_bias_table, m.relative_position_index, m.window_size,
                  m.shift_size, m.num_heads, m.qkv.in_features // m.num_heads, m.attention_dropout, m.dropout)
        return new.train(m.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wh, ww = self.window_size
        b, h, w, c = x.shape
        x = F.pad(x, (0, 0, 0, (ww - w % ww) % ww, 0, (wh - h % wh) % wh))
        ph, pw = x.shape[1], x.shape[2]
        shift = [0 if wh >= ph else self.shift_size[0], 0 if ww >= pw else self.shift_size[1]]
        if sum(shift) > 0:
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        windows = (ph // wh) * (pw // ww)
        x = x.view(b, ph // wh, wh, pw // ww, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(b * windows, wh * ww, c)
        n = x.shape[1]
        qkv = self._qkv(x).reshape(x.shape[0], n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        attn = self._logits(qkv[0], qkv[1]) + self._bias(n)
        v = qkv[2]
        if sum(shift) > 0:
            attn = attn.view(b, windows, self.num_heads, n, n) + _shift_mask(x, ph, pw, wh, ww, shift)
            attn = attn.view(-1, self.num_heads, n, n)
        attn = F.dropout(attn.softmax(dim=-1), p=self.attention_dropout, training=self.training)
        x = attn.matmul(v).transpose(1, 2).reshape(x.shape[0], n, self.num_heads * self.head_dim)
        x = F.dropout(self.proj(x), p=self.dropout, training=self.training)
        c = x.shape[-1]
        x = x.view(b, ph // wh, pw // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(b, ph, pw, c)
        if sum(shift) > 0:
            x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
        return x[:, :h, :w, :].contiguous()

    def _qkv(self, x: torch.Tensor) -> torch.Tensor:
        return self.qkv(x)

    def _logits(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return (q * self.head_dim ** -0.5).matmul(k.transpose(-2, -1))

    def _bias(self, n: int) -> torch.Tensor:
        """[1, heads, N, N] relative position bias."""
        return self.relative_position_bias_table[self.relative_position_index].view(n, n, -1).permute(2, 0, 1) \
            .contiguous().unsqueeze(0)


class WindowHeadsAttentionV2(WindowHeadsAttention):
    """torchvision's ShiftedWindowAttentionV2 (Swin V2: cosine attention with a per-head logit scale,
    position bias from a small MLP, no key bias) for any number of heads of `head_dim` each."""

    def __init__(self, qkv: nn.Linear, proj: nn.Linear, logit_scale: nn.Parameter, cpb_mlp: nn.Sequential,
                 coords: torch.Tensor, index: torch.Tensor, window_size: list[int], shift_size: list[int],
                 num_heads: int, head_dim: int, attention_dropout: float = 0.0, dropout: float = 0.0):
        nn.Module.__init__(self)  # registered in torchvision's order, so the state_dict keys come in it
        self.logit_scale = logit_scale
        self.register_buffer("relative_coords_table", coords)
        self.register_buffer("relative_position_index", index)
        self.qkv, self.proj, self.cpb_mlp = qkv, proj, cpb_mlp
        self.window_size, self.shift_size = list(window_size), list(shift_size)
        self.num_heads, self.head_dim = num_heads, head_dim
        self.attention_dropout, self.dropout = attention_dropout, dropout

    @classmethod
    def from_torchvision(cls, m: nn.Module) -> WindowHeadsAttentionV2:
        new = cls(m.qkv, m.proj, m.logit_scale, m.cpb_mlp, m.relative_coords_table, m.relative_position_index,
                  m.window_size, m.shift_size, m.num_heads, m.qkv.in_features // m.num_heads,
                  m.attention_dropout, m.dropout)
        return new.train(m.training)

    def _qkv(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.qkv.bias
        if bias is not None:  # the key's bias is held at zero
            third = bias.numel() // 3
            bias = torch.cat([bias[:third], torch.zeros_like(bias[third:2 * third]), bias[2 * third:]])
        return F.linear(x, self.qkv.weight, bias)

    def _logits(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        return attn * torch.clamp(self.logit_scale, max=math.log(100.0)).exp()

    def _bias(self, n: int) -> torch.Tensor:
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)
        bias = table[self.relative_position_index].view(n, n, -1).permute(2, 0, 1).contiguous().unsqueeze(0)
        return 16 * torch.sigmoid(bias)


def _shift_mask(x: torch.Tensor, ph: int, pw: int, wh: int, ww: int, shift: list[int]) -> torch.Tensor:
    """-100 between tokens of a shifted window that came from different regions, else 0:
    [1, windows, 1, N, N]."""
    regions = x.new_zeros((ph, pw))
    count = 0
    for hs in ((0, -wh), (-wh, -shift[0]), (-shift[0], None)):
        for ws in ((0, -ww), (-ww, -shift[1]), (-shift[1], None)):
            regions[hs[0]:hs[1], ws[0]:ws[1]] = count
            count += 1
    regions = regions.view(ph // wh, wh, pw // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
    mask = regions.unsqueeze(1) - regions.unsqueeze(2)
    mask = mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
    return mask.unsqueeze(1).unsqueeze(0)


class PartitionHeadsAttention(nn.Module):
    """torchvision's MaxViT attention (RelativePositionalMultiHeadAttention, over [B, G, P, D] window or
    grid partitions), whose output reshape to the input's width D tied heads to the stream; here to
    n_heads × head_dim. Same Parameters, buffer and state_dict keys."""

    def __init__(self, to_qkv: nn.Linear, merge: nn.Linear, table: nn.Parameter, index: torch.Tensor,
                 n_heads: int, head_dim: int, max_seq_len: int, scale_factor: float):
        super().__init__()
        self.relative_position_bias_table = table
        self.register_buffer("relative_position_index", index)
        self.to_qkv, self.merge = to_qkv, merge
        self.n_heads, self.head_dim, self.max_seq_len, self.scale_factor = n_heads, head_dim, max_seq_len, scale_factor

    @classmethod
    def from_torchvision(cls, m: nn.Module) -> PartitionHeadsAttention:
        new = cls(m.to_qkv, m.merge, m.relative_position_bias_table, m.relative_position_index, m.n_heads,
                  m.head_dim, m.max_seq_len, m.scale_factor)
        return new.train(m.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, g, p, _ = x.shape
        q, k, v = (t.reshape(b, g, p, self.n_heads, self.head_dim).permute(0, 1, 3, 2, 4)
                   for t in torch.chunk(self.to_qkv(x), 3, dim=-1))
        dot = torch.einsum("B G H I D, B G H J D -> B G H I J", q, k * self.scale_factor)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(self.max_seq_len, self.max_seq_len, -1).permute(2, 0, 1).contiguous().unsqueeze(0)
        out = torch.einsum("B G H I J, B G H J D -> B G H I D", F.softmax(dot + bias, dim=-1), v)
        return self.merge(out.permute(0, 1, 3, 2, 4).reshape(b, g, p, self.n_heads * self.head_dim))
