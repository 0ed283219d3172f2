"""Structure harvest: cut out the channels whose producing filters are all zero.

Such a channel no longer depends on the input: it carries a constant (its bias, then BatchNorm's
β − γ·μ/√(σ² + ε), through the activation). A channel that is exactly zero where its consumers read
it is removed as is. A constant one is first folded into each consumer's bias where that is exact:
a Linear always (the values are known per input column); a conv only without zero padding and when
the value is the same at every position (at a padded border the constant would meet zeros). A
channel that cannot be folded into every consumer stays. Exact up to float rounding (~1e-6).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .budget import group_key, unit_round
from .graph import CONV, ChannelGroup
from .remove import remove_channels
from .recurrent import unit_rows
from .norm import GroupNormWithRemoved, is_response_norm, norm_axis
from .std_conv import effective_weight, is_std_conv
from .weights import RECURRENT, TRANSPOSED, rows_first


@dataclass
class Harvest:
    keep: dict[str, list[int]] = field(default_factory=dict)  # group key -> channels kept, for groups cut
    folded: int = 0                                            # constant channels folded into consumer biases
    biased: list[str] = field(default_factory=list)            # consumers given a bias to fold into


@torch.no_grad()
def _consumer_inputs(model: nn.Module, names: list[str], example: torch.Tensor) -> dict[str, torch.Tensor | None]:
    """What each consumer reads in one forward pass; None for a module called more than once."""
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    hooks = [model.get_submodule(n).register_forward_pre_hook(lambda m, args, n=n: seen[n].append(args[0]))
             for n in set(names)]
    try:
        model(example)
    finally:
        for h in hooks:
            h.remove()
    return {n: v[0] if len(v) == 1 else None for n, v in seen.items()}


def _dead(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    dead = torch.ones(group.size, dtype=torch.bool)
    mixing = any(_mixes_channels(model.get_submodule(n)) for n in group.passthrough)
    for name in group.producers:
        m = model.get_submodule(name)
        if isinstance(m, RECURRENT):  # a unit with only its biases left is no constant: its state moves
            for t, channel in unit_rows(m, cells=group.cells):
                dead[channel[(t.detach().reshape(len(channel), -1) != 0).any(1).cpu()]] = False
            continue
        dead &= (group.per_channel_rows(name, rows_first(effective_weight(m).detach(), m)) == 0).all(1).cpu()
        if mixing and m.bias is not None:  # a norm over channels must see an exact zero where one was removed
            dead &= (group.per_channel_rows(name, m.bias.detach()[:, None]) == 0).all(1).cpu()
    for name in group.passthrough:
        m = model.get_submodule(name)
        # a dead channel leaves a norm over channels as −mean/std·γ + β of the other channels, not a
        # constant, unless its γ is 0 (a response norm gives a zero channel β: a constant)
        if not _mixes_channels(m) or is_response_norm(m):
            continue
        if group.passthrough_per.get(name, 1) == 1 and len(group.offsets(name)) == 1 and m.weight is not None:
            dead &= (m.weight.detach()[group.offset(name): group.offset(name) + group.size] == 0).cpu()
        else:
            dead[:] = False
    return dead


def _mixes_channels(m: nn.Module) -> bool:
    """A norm whose statistics span channels (GroupNorm, LayerNorm over channels, response norm)."""
    return isinstance(m, (nn.GroupNorm, GroupNormWithRemoved)) or norm_axis(m) is not None or is_response_norm(m)


def _no_padding(conv: nn.Module) -> bool:
    """Whether `conv` pads nothing, so a constant input is a constant output (foldable into its bias).
    A conv with a forward of its own (timm's Conv2dSame) may pad at run time: not known, so no."""
    if getattr(conv, "same_pad", False) or \
            (type(conv).forward not in (nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward) and not is_std_conv(conv)):
        return False
    if isinstance(conv.padding, str):
        return conv.padding == "valid" or all(k == 1 for k in conv.kernel_size)
    return all(p == 0 for p in conv.padding)


def _fold_terms(m: nn.Module, inp: torch.Tensor, idx: torch.Tensor, per_channel: int, offset: int):
    """For channels `idx` of a group read by a consumer at `offset`: (foldable, bias term per channel [k, out])."""
    if isinstance(m, RECURRENT):  # a constant input feeds every step: only zeros go (nothing to fold)
        cols = offset + idx[:, None] * per_channel + torch.arange(per_channel)[None, :]  # [k, per_channel]
        zero = (inp.flatten(0, -2)[:, cols] == 0).flatten(2).all(2).all(0)
        return zero, torch.zeros(len(idx), 1)
    w = effective_weight(m).detach()  # a weight-standardised conv multiplies with its standardised weight
    if isinstance(m, TRANSPOSED):  # a constant input is no constant output at the borders: only zeros go
        zero = (inp[0, idx + offset].flatten(1) == 0).all(1)
        return zero, torch.zeros(len(idx), m.out_channels)
    cols = offset + idx[:, None] * per_channel + torch.arange(per_channel)[None, :]  # [k, per_channel]
    if isinstance(m, CONV):  # a channel is per_channel inputs (a head's, read by EfficientViT's proj)
        v = inp[0, cols].flatten(2)                       # [k, per_channel, positions]
        zero = (v == 0).flatten(1).all(1)
        if m.groups > 1:  # a grouped conv: only channels that carry exact zeros go (nothing to fold)
            return zero, torch.zeros(len(idx), w.shape[0])
        constant = (v == v[..., :1]).flatten(1).all(1)
        foldable = zero | (constant & _no_padding(m))
        terms = torch.einsum("okp,kp->ko", w[:, cols].sum(tuple(range(3, w.ndim + 1))), v[..., 0])  # [k, out]
        return foldable, torch.where(zero[:, None], torch.zeros_like(terms), terms)
    v = inp.reshape(inp.shape[0], -1)[0, cols]            # [k, per_channel]
    terms = torch.einsum("okp,kp->ko", w[:, cols], v)
    return torch.ones(len(idx), dtype=torch.bool), terms


def _fill_blocks(keep_mask: torch.Tensor, blocks: int, round_to: int = 1) -> torch.Tensor:
    """Keep the same number of channels in every block (a grouped conv cuts evenly): as many as
    the fullest block keeps, rounded up to a multiple of `round_to` (widths a runtime runs fast) or
    the whole block. Blocks take back removable channels for it; those stay as they are (dead, or
    carrying their constant), so the model still computes the same."""
    rows = keep_mask.view(blocks, -1).clone()
    need = min(-(-int(rows.sum(1).max()) // round_to) * round_to, rows.shape[1])
    for row in rows:
        spare = torch.nonzero(~row).flatten()
        row[spare[: need - int(row.sum())]] = True
    return rows.flatten()


def _fill_run(keep_mask: torch.Tensor, round_to: int = 1) -> torch.Tensor:
    """The kept channels made one run (a conv along the channels needs it): every channel between the
    first and the last kept one, then more at the ends up to a multiple of `round_to`. Channels taken
    back stay as they are, so the model still computes the same."""
    kept = torch.nonzero(keep_mask).flatten()
    lo, hi = int(kept[0]), int(kept[-1]) + 1
    need = min(-(-(hi - lo) // round_to) * round_to, len(keep_mask))
    hi = min(lo + need, len(keep_mask))
    lo = hi - need
    out = torch.zeros_like(keep_mask)
    out[lo:hi] = True
    return out


def _stream_keep(model: nn.Module, group: ChannelGroup, idx: torch.Tensor, example: torch.Tensor,
                 round_to: int) -> torch.Tensor | None:
    """The channels of a shuffled stream to keep when `idx` are dead: those that are exact zeros where
    every reader reads them (in the stream, or straight from a producer) go, nothing folded; the widths its
    shuffles allow taken back. None when nothing goes."""
    s = group.shuffle
    # a producer's own per-channel module (its BatchNorm) may turn a constant into the stream's zero
    readers = [n for n in [*group.passthrough, *(c for c, _ in group.consumers)]
               if n in s.exit_of or n not in group.passthrough]
    inputs = _consumer_inputs(model, readers, example)
    gone = torch.zeros(group.size, dtype=torch.bool)
    gone[idx] = True
    for name in readers:
        inp, at = inputs[name], s.index[name]
        here = gone[at]  # dead channels this reader holds, by position
        if inp is None:
            gone[at[here]] = False
            continue
        zero = (inp.float().cpu().movedim(s.axis[name], 0).flatten(1) == 0).all(1)
        gone[at[here & ~zero]] = False
    if not gone.any():
        return None
    keep_mask = s.fill(~gone, round_to)
    return None if keep_mask.all() else torch.nonzero(keep_mask).flatten()


@torch.no_grad()
def harvest_channels(model: nn.Module, groups: list[ChannelGroup], input_shape: tuple[int, ...],
                     round_to: int = 1) -> Harvest:
    """Physically remove, in place, every channel of a prunable group whose producers are all zero,
    folding constants into consumer biases where exact. With `round_to` > 1 each group keeps a
    multiple of that many channels (widths a runtime runs fast), taking back some removable ones.
    The model must be in eval mode (BatchNorm uses its running statistics)."""
    result = Harvest()
    example = torch.zeros(2, *input_shape)  # the batch the groups were traced with: shapes as the graph saw them
    for group in groups:
        if not group.prunable:
            continue
        idx = torch.nonzero(_dead(model, group)).flatten()
        if len(idx) == 0:
            continue
        if group.shuffle is not None:
            keep = _stream_keep(model, group, idx, example, round_to)
            if keep is not None:
                remove_channels(model, group, keep, constants_folded=True)
                result.keep[group_key(group)] = keep.tolist()
            continue
        # one forward: what each consumer reads, and what a conv along the channels (ECA) reads
        inputs = _consumer_inputs(model, [n for n, _ in group.consumers] + group.along, example)
        ok = torch.ones(len(idx), dtype=torch.bool)
        terms = []
        for name, per_channel in group.consumers:
            m, inp = model.get_submodule(name), inputs[name]
            if inp is None:
                ok[:] = False
                break
            t = 0
            for offset in group.offsets(name):  # a consumer reading these channels twice: both reads fold
                foldable, part = _fold_terms(m, inp.float().cpu(), idx, per_channel, offset)
                ok &= foldable
                t = t + part
            terms.append((name, m, t))
        for inp in (inputs[name] for name in group.along):  # only channels that are exact zeros there go
            ok &= torch.zeros_like(ok) if inp is None else (inp.float().cpu()[..., idx] == 0).flatten(0, -2).all(0)
        if ok.all() and len(idx) == group.size:
            ok[0] = False  # never to zero width
        keep_mask = torch.ones(group.size, dtype=torch.bool)
        keep_mask[idx[ok]] = False
        if group.contiguous:
            keep_mask = _fill_run(keep_mask, unit_round(round_to, group.unit))
        else:
            keep_mask = _fill_blocks(keep_mask, group.blocks, unit_round(round_to, group.unit))
        ok &= ~keep_mask[idx]  # only what is really removed gets its constant folded
        if not ok.any():
            continue
        for name, m, t in terms:
            add = t[ok].sum(0)
            if not torch.any(add != 0):
                continue
            if m.bias is None:
                m.bias = nn.Parameter(torch.zeros(add.numel(), dtype=m.weight.dtype, device=m.weight.device))
                result.biased.append(name)
            m.bias += add.to(m.bias)
        carried = torch.zeros(int(ok.sum()), dtype=torch.bool)
        for _, _, t in terms:
            carried |= (t[ok] != 0).any(1)
        result.folded += int(carried.sum())
        keep = torch.nonzero(keep_mask).flatten()
        remove_channels(model, group, keep, constants_folded=True)
        result.keep[group_key(group)] = keep.tolist()
    return result
