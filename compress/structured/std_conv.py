"""Weight-standardised convolutions (timm's StdConv2d / ScaledStdConv2d and their "Same" forms, in
NFNet, NF-ResNet and BiT's ResNet-V2): each output row's weights are normalised over that row (its
inputs × kernel) before the conv.

Rows are independent, so cutting output channels is plain (with ScaledStdConv2d's gain). Cutting
input channels would change each row's mean and variance; in the masked model the removed inputs
are zeros but their weights still count in those statistics. `StandardizedConv2d` keeps them so:
`removed` holds each row's removed weights, part of the row's statistics and read by nothing.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from .weights import take_columns

TIMM_STD_CONVS = tuple(f"timm.layers.std_conv.{n}" for n in
                       ("StdConv2d", "StdConv2dSame", "ScaledStdConv2d", "ScaledStdConv2dSame"))


def standardize(weight: torch.Tensor, removed: torch.Tensor | None, gain: torch.Tensor | None, scale: float,
                eps: float) -> torch.Tensor:
    """`weight` [out, in, k…] with each row normalised over itself and its `removed` columns (mean 0,
    variance 1, then × gain · scale when there is a gain), as timm computes it."""
    full = weight if removed is None else torch.cat([weight, removed], 1)
    g = None if gain is None else (gain * scale).view(-1)
    out = F.batch_norm(full.reshape(1, full.shape[0], -1), None, None, weight=g, training=True, momentum=0.,
                       eps=eps).reshape_as(full)
    return out if removed is None else out[:, : weight.shape[1]]


def is_std_conv(m: nn.Module) -> bool:
    """Whether `m` is one of timm's weight-standardised convs or a cut one (`StandardizedConv2d`)."""
    return isinstance(m, StandardizedConv2d) or f"{type(m).__module__}.{type(m).__qualname__}" in TIMM_STD_CONVS


def effective_weight(m: nn.Module) -> torch.Tensor:
    """The weight `m`'s conv really multiplies with: standardised for a weight-standardised conv."""
    if not is_std_conv(m):
        return m.weight
    return standardize(m.weight, getattr(m, "removed", None), getattr(m, "gain", None),
                       float(getattr(m, "scale", 1.0)), m.eps)


def _pad_same(x: torch.Tensor, kernel: tuple, stride: tuple, dilation: tuple) -> torch.Tensor:
    """TensorFlow's SAME padding for the input's size (more on the bottom/right when odd)."""
    pads = []
    for size, k, s, d in zip(x.shape[-2:], kernel, stride, dilation):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        pads.append((total // 2, total - total // 2))
    return F.pad(x, [*pads[1], *pads[0]])


class StandardizedConv2d(nn.Conv2d):
    """A weight-standardised conv that lost input channels; computes what the original computes on
    an input whose removed channels are zeros."""

    def __init__(self, conv: nn.Conv2d, weight: torch.Tensor, removed: torch.Tensor):
        super().__init__(weight.shape[1] * conv.groups, conv.out_channels, conv.kernel_size, conv.stride,
                         conv.padding, conv.dilation, conv.groups, bias=False, device="meta")
        grad = conv.weight.requires_grad
        self.weight = nn.Parameter(weight, requires_grad=grad)
        self.bias = conv.bias
        # trained as in the masked model, where these weights still shape each row's statistics
        self.removed = nn.Parameter(removed, requires_grad=grad)
        self.gain = getattr(conv, "gain", None)
        self.scale = float(getattr(conv, "scale", 1.0))
        self.eps = conv.eps
        self.same_pad = bool(getattr(conv, "same_pad", False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same_pad:
            x = _pad_same(x, self.kernel_size, self.stride, self.dilation)
        return F.conv2d(x, effective_weight(self), self.bias, self.stride, self.padding, self.dilation, self.groups)


def keep_std_conv_rows(m: nn.Module, rows: torch.Tensor) -> None:
    """Cut the per-row tensors a weight-standardised conv has beside weight and bias (gain, removed)."""
    for attr in ("gain", "removed"):
        t = getattr(m, attr, None)
        if isinstance(t, torch.Tensor):
            setattr(m, attr, nn.Parameter(t.detach().index_select(0, rows).clone(), requires_grad=t.requires_grad))


@torch.no_grad()
def keep_std_conv_columns(m: nn.Module, columns: torch.Tensor) -> StandardizedConv2d:
    """`m` with only `columns` [out, kept] (sorted, as many in every row) of each row's inputs; the
    others move to `removed`."""
    w = m.weight.detach()
    out, width = w.shape[:2]
    kept = torch.zeros(out, width, dtype=torch.bool)
    kept.scatter_(1, columns, True)
    dropped = torch.nonzero(~kept)[:, 1].view(out, width - columns.shape[1])
    removed = take_columns(w, dropped)
    if getattr(m, "removed", None) is not None:
        removed = torch.cat([m.removed.detach(), removed], 1)
    return StandardizedConv2d(m, take_columns(w, columns).clone(), removed.clone())


class SamePadConv2d(nn.Conv2d):
    """A plain conv with TensorFlow's SAME padding at the input's size (what a folded dynamic-SAME
    std conv runs; its weight keeps the layer's name)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_pad_same(x, self.kernel_size, self.stride, self.dilation))


@torch.no_grad()
def fold_weight_standardization(model: nn.Module) -> nn.Module:
    """`model` with every weight-standardised conv replaced by a plain conv holding its standardised
    weight (exact in inference: the weights are constants there), a copy; `model` itself when it has
    none. What an exported NFNet or BiT model runs, instead of standardising at every call."""
    if not any(is_std_conv(m) for m in model.modules()):
        return model
    model = copy.deepcopy(model)
    for name, m in list(model.named_modules()):
        if not is_std_conv(m):
            continue
        kind = SamePadConv2d if getattr(m, "same_pad", False) else nn.Conv2d
        conv = kind(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                    bias=m.bias is not None, device=m.weight.device, dtype=m.weight.dtype)
        conv.weight.copy_(effective_weight(m))
        if m.bias is not None:
            conv.bias.copy_(m.bias)
        model.set_submodule(name, conv)
    return model
