"""torchvision's Swin window attention with heads that can be cut.

torchvision's `shifted_window_attention` derives the head width from the input's width
(`C // num_heads`), so neither its heads nor the residual stream around it can change. `WindowHeadsAttention`
computes the same function from the same Parameter objects and buffers, under the same state_dict keys,
with the head width fixed at construction: the channel rules then read it as timm's Swin attention
(whole heads of q, k and v, their relative position bias columns; `proj` writes the stream).
`prepare_attention` (attention.py) swaps it in and checks the model computes the same.
"""
from __future__ import annotations

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
        qkv = self.qkv(x).reshape(x.shape[0], n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.head_dim ** -0.5, qkv[1], qkv[2]
        bias = self.relative_position_bias_table[self.relative_position_index].view(n, n, -1)
        attn = q.matmul(k.transpose(-2, -1)) + bias.permute(2, 0, 1).unsqueeze(0)
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
