"""Norms over a channel axis that lost channels: the removed ones still count, as zeros.

A LayerNorm normalises over all its channels, so cutting channels out of its input changes the
mean and variance of the ones that stay. In the masked model a removed channel is an exact zero
that still takes part in those statistics; `NormWithRemoved` reproduces that exactly by padding
its input with as many zeros as were removed, normalising at the original width, and keeping the
first channels. Its inner norm keeps the original width with its γ and β reordered so that the
kept channels come first (the statistics do not depend on the order). GroupNorm and ConvNeXt-V2's
global response norm (a mean over channels) get the same treatment.
"""
from __future__ import annotations

import torch
from torch import nn


def norm_axis(m: nn.Module) -> int | None:
    """The channel axis a LayerNorm-like module normalises over (−1: the last; 1: torchvision's
    channels-first LayerNorm2d), or None when it is not one over a single axis."""
    if isinstance(m, NormWithRemoved):
        return m.axis
    if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) == 1 and m.elementwise_affine:
        if type(m) is nn.LayerNorm:
            return -1
        # channels-first LayerNorms of the libraries we know (their forward permutes, normalises the last
        # axis, permutes back), and timm's plain subclass
        known = type(m).__module__.startswith(("torchvision.", "timm."))
        if known and type(m).__name__ in ("LayerNorm2d", "LayerNorm2dNoBias"):  # NoBias: timm's metaformers
            return 1
        if known and type(m).__name__ in ("LayerNorm", "LayerNormNoBias"):
            return -1
    return None


class NormWithRemoved(nn.Module):
    """`inner` (a LayerNorm of the original width, kept channels first) applied to the kept channels
    with zeros standing in for the removed ones."""

    def __init__(self, inner: nn.LayerNorm, axis: int, width: int):
        super().__init__()
        self.inner, self.axis, self.width = inner, axis, width

    @property
    def weight(self) -> torch.Tensor:
        """γ of the kept channels (a view: writing to it writes the inner norm's)."""
        return self.inner.weight[: self.width]

    @property
    def bias(self) -> torch.Tensor | None:
        return None if self.inner.bias is None else self.inner.bias[: self.width]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axis = self.axis % x.dim()
        missing = self.inner.normalized_shape[0] - self.width
        padded = nn.functional.pad(x, [0, 0] * (x.dim() - 1 - axis) + [0, missing])
        return self.inner(padded).narrow(axis, 0, self.width)


def _others(full: int, kept: torch.Tensor) -> torch.Tensor:
    """The indices of range(full) not in `kept`, in order."""
    rest = torch.ones(full, dtype=torch.bool)
    rest[kept] = False
    return torch.nonzero(rest).flatten()


@torch.no_grad()
def keep_norm_channels(m: nn.Module, rows: torch.Tensor) -> NormWithRemoved:
    """`m` (a LayerNorm-like module or a NormWithRemoved) keeping only channels `rows` of its current
    ones: the wrapper to put in its place."""
    wrapper = m if isinstance(m, NormWithRemoved) else NormWithRemoved(m, norm_axis(m), m.normalized_shape[0])
    full = wrapper.inner.normalized_shape[0]
    rows = rows.to(torch.long)
    order = torch.cat([rows, _others(full, rows)])  # kept first, then the removed, then those removed before
    for attr in ("weight", "bias"):
        t = getattr(wrapper.inner, attr)
        if t is not None:
            setattr(wrapper.inner, attr, nn.Parameter(t.detach()[order].clone(), requires_grad=t.requires_grad))
    wrapper.width = len(rows)
    return wrapper


class GroupNormWithRemoved(nn.Module):
    """A GroupNorm whose input lost channels: the removed ones are put back as zeros at their
    original places (so every group sees the statistics it had in the masked model), the norm runs
    without its affine part, and the kept channels get their own γ and β."""

    def __init__(self, gn: nn.GroupNorm):
        super().__init__()
        self.num_groups, self.full, self.eps = gn.num_groups, gn.num_channels, gn.eps
        self.weight = None if gn.weight is None else nn.Parameter(gn.weight.detach().clone())
        self.bias = None if gn.bias is None else nn.Parameter(gn.bias.detach().clone())
        self.register_buffer("kept", torch.arange(gn.num_channels))
        self.register_buffer("inverse", torch.arange(gn.num_channels))

    @property
    def num_features(self) -> int:
        return len(self.kept)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zeros = x.new_zeros(x.shape[0], self.full - x.shape[1], *x.shape[2:])
        full = torch.cat([x, zeros], 1).index_select(1, self.inverse)  # back to the original channel order
        y = nn.functional.group_norm(full, self.num_groups, None, None, self.eps).index_select(1, self.kept)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        if self.weight is not None:
            y = y * self.weight.view(shape)
        return y if self.bias is None else y + self.bias.view(shape)


class NormActWithRemoved(nn.Module):
    """timm's GroupNormAct (norm, then its dropout and activation in its own forward) once cut: the
    norm as a GroupNormWithRemoved and the rest as they were, as children the tracer follows (the
    activation keeps its own channel rule: PReLU's slopes are cut, a sigmoid is a shift)."""

    def __init__(self, norm: GroupNormWithRemoved, drop: nn.Module, act: nn.Module):
        super().__init__()
        self.norm, self.drop, self.act = norm, drop, act

    @property
    def num_features(self) -> int:
        return self.norm.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(self.norm(x)))


@torch.no_grad()
def keep_group_norm_channels(m: nn.Module, rows: torch.Tensor) -> GroupNormWithRemoved | NormActWithRemoved:
    """`m` (a GroupNorm, GroupNormWithRemoved, timm GroupNormAct or NormActWithRemoved) keeping only
    channels `rows` of its current ones."""
    if isinstance(m, NormActWithRemoved):
        m.norm = keep_group_norm_channels(m.norm, rows)
        return m
    if isinstance(m, nn.GroupNorm) and isinstance(getattr(m, "act", None), nn.Module):  # timm's GroupNormAct
        return NormActWithRemoved(keep_group_norm_channels(GroupNormWithRemoved(m), rows), m.drop, m.act)
    wrapper = m if isinstance(m, GroupNormWithRemoved) else GroupNormWithRemoved(m)
    rows = rows.to(torch.long)
    kept = wrapper.kept[rows]
    wrapper.kept, wrapper.inverse = kept.clone(), torch.argsort(torch.cat([kept, _others(wrapper.full, kept)]))
    for attr in ("weight", "bias"):
        t = getattr(wrapper, attr)
        if t is not None:
            setattr(wrapper, attr, nn.Parameter(t.detach()[rows].clone(), requires_grad=t.requires_grad))
    return wrapper


GRN = "timm.layers.grn.GlobalResponseNorm"  # ConvNeXt-V2's, matched by name: timm is optional


class ResponseNormWithRemoved(nn.Module):
    """ConvNeXt-V2's global response norm, x + β + γ·x·(‖x‖ / mean over channels of ‖x‖), for an input
    that lost channels: the mean still divides by the original width (the removed ones were zeros)."""

    def __init__(self, grn: nn.Module):
        super().__init__()
        self.eps, self.spatial_dim, self.channel_dim = grn.eps, grn.spatial_dim, grn.channel_dim
        self.wb_shape, self.full = grn.wb_shape, grn.weight.shape[0]
        self.weight = nn.Parameter(grn.weight.detach().clone())
        self.bias = nn.Parameter(grn.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_g = x.norm(p=2, dim=self.spatial_dim, keepdim=True)
        x_n = x_g / (x_g.sum(dim=self.channel_dim, keepdim=True) / self.full + self.eps)
        return x + torch.addcmul(self.bias.view(self.wb_shape), self.weight.view(self.wb_shape), x * x_n)


def is_response_norm(m: nn.Module) -> bool:
    return isinstance(m, ResponseNormWithRemoved) or f"{type(m).__module__}.{type(m).__qualname__}" == GRN


@torch.no_grad()
def keep_response_norm_channels(m: nn.Module, rows: torch.Tensor) -> ResponseNormWithRemoved:
    """`m` (a global response norm, or one that lost channels already) keeping only channels `rows`."""
    wrapper = m if isinstance(m, ResponseNormWithRemoved) else ResponseNormWithRemoved(m)
    rows = rows.to(torch.long)
    for attr in ("weight", "bias"):
        t = getattr(wrapper, attr)
        setattr(wrapper, attr, nn.Parameter(t.detach()[rows].clone(), requires_grad=t.requires_grad))
    return wrapper
