"""Cut channels out of every module of a group (physically smaller layers), or zero them (the mask).

`zero_channels` gives the masked model the removal must reproduce: producers' output rows and
biases, the passthrough per-channel parameters (BatchNorm and LayerNorm γ and β, depthwise
filters) and the parameters added or multiplied along the channel axis are set to exact zeros, so
those channels carry exact zeros to every consumer.
"""
from __future__ import annotations

import torch
from torch import nn

from .graph import CONV, ChannelGroup
from .norm import (GroupNormWithRemoved, NormActWithRemoved, is_response_norm, keep_group_norm_channels,
                   keep_norm_channels, keep_response_norm_channels, norm_axis)
from .undo import snapshot
from .width_attributes import get_count, set_count
from .std_conv import is_std_conv, keep_std_conv_columns, keep_std_conv_rows
from .recurrent import cut_recurrent_hidden, cut_recurrent_inputs, unit_rows
from .weights import RECURRENT, TRANSPOSED, in_dim, out_dim, rows_first, take_columns


def _index(t: torch.Tensor, keep: torch.Tensor, dim: int) -> nn.Parameter | torch.Tensor:
    out = t.detach().index_select(dim, keep).clone()
    return nn.Parameter(out, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else out


def _consumer_columns(keep: torch.Tensor, per_channel: int) -> torch.Tensor:
    return (keep[:, None] * per_channel + torch.arange(per_channel)[None, :]).flatten()


def _span(total: int, offset: int | list[int], width: int, inside: torch.Tensor) -> torch.Tensor:
    """Indices of a `total`-wide axis: all outside [offset, offset + width), and offset + `inside`
    within it (the other groups of a concatenation stay untouched); with several offsets, the same
    within each of those windows."""
    parts, at = [], 0
    for start in sorted([offset] if isinstance(offset, int) else offset):
        parts += [torch.arange(at, start), start + inside]
        at = start + width
    return torch.cat([*parts, torch.arange(at, total)])


@torch.no_grad()
def zero_channels(model: nn.Module, group: ChannelGroup, drop: torch.Tensor) -> None:
    for name in group.producers:
        m = model.get_submodule(name)
        if isinstance(m, RECURRENT):
            for t, channel in unit_rows(m, cells=group.cells):
                t[torch.isin(channel, torch.as_tensor(drop, dtype=torch.long)).to(t.device)] = 0
            continue
        rows = group.rows(name, drop)
        rows_first(m.weight, m)[rows] = 0
        if m.bias is not None:
            m.bias[rows] = 0
        for extra in (getattr(m, "removed", None), getattr(m, "gain", None)) if is_std_conv(m) else ():
            if extra is not None:  # a cut std conv's removed weights would still give the row a spread
                extra[rows] = 0
    for name in group.passthrough:
        m = model.get_submodule(name)
        cols = _consumer_columns(torch.as_tensor(drop, dtype=torch.long), group.passthrough_per.get(name, 1))
        at = group.shuffle.places(name, cols) if group.shuffle is not None else \
            torch.cat([offset + cols for offset in group.offsets(name)])
        # depthwise conv: its filter for the channel; BatchNorm: γ = β = 0 gives exact zeros whatever the
        # statistics; a norm without affine parameters already maps a zero channel to zero
        for t in (getattr(m, "weight", None), getattr(m, "bias", None)):
            if t is not None:
                t[at] = 0
    for target, dim in group.parameters:
        at = group.offset(target) + torch.as_tensor(drop, dtype=torch.long)
        _get_parameter(model, target).index_fill_(dim, at, 0)


def _positions(group: ChannelGroup, name: str, channels: torch.Tensor) -> torch.Tensor:
    """Where member `name` holds `channels` of a shuffled stream, in the order a cut model has them."""
    return group.shuffle.positions(name, torch.as_tensor(channels, dtype=torch.long).sort().values)


def _get_parameter(model: nn.Module, target: str) -> torch.Tensor:
    owner, _, attr = target.rpartition(".")
    return getattr(model.get_submodule(owner), attr)


@torch.no_grad()
def remove_channels(model: nn.Module, group: ChannelGroup, keep: torch.Tensor, constants_folded: bool = False) -> None:
    """Keep only channels `keep` (sorted indices) of `group` in every coupled module, in place.

    Exact or refused: a group whose removed channels would have carried a constant (an activation
    with f(0) != 0 on the way) is refused unless the caller folded those constants already
    (`constants_folded`, as the harvest does). If anything fails, the model is left as it was.
    """
    if not group.prunable:
        raise ValueError(f"group of {group.producers or group.passthrough} cannot be pruned: {group.blockers}")
    if len(keep) == 0:
        raise ValueError(f"refusing to prune {group.producers} to zero width")
    keep = torch.as_tensor(keep, dtype=torch.long).sort().values
    if group.blocks > 1:
        width = group.size // group.blocks
        counts = torch.bincount(keep // width, minlength=group.blocks)
        if len(set(counts.tolist())) != 1:
            raise ValueError(f"group of {group.producers}: a grouped conv needs the same number of channels kept "
                             f"in each of its {group.blocks} blocks, got {counts.tolist()}")
    if group.contiguous and len(keep) and int(keep[-1] - keep[0]) + 1 != len(keep):
        raise ValueError(f"group of {group.producers}: a conv along the channels needs the kept channels to be one "
                         f"run, got {keep.tolist()[:8]}...")
    if group.shuffle is not None and group.shuffle.spent:
        raise ValueError(f"group of {group.producers[0]}: a shuffled stream cut already (trace the cut model to cut "
                         "it again)")
    if group.shuffle is not None and (why := group.shuffle.check(keep)) is not None:
        raise ValueError(f"group of {group.producers[0]}: {why}")
    if group.shifts and not constants_folded and len(keep) < group.size:
        raise ValueError(f"group of {group.producers}: removed channels would carry a constant through "
                         f"{group.shifts[0]}; cut it with the harvest (which folds constants) or not at all")
    names = [*group.producers, *group.passthrough, *(n for n, _ in group.consumers),
             *(t.rpartition(".")[0] for t, _ in group.parameters), *(path for path, _, _ in group.counters)]
    # each module and its parent (a replaced norm is swapped in its parent's submodules)
    restore = snapshot(model.get_submodule(p) for n in names for p in (n, n.rpartition(".")[0]))
    try:
        _cut(model, group, keep)
    except Exception:
        restore()  # never leave a half-cut model behind
        raise
    group.size = len(keep)
    if group.shuffle is not None:  # its places were the uncut model's: trace the cut one to cut again
        group.shuffle.spent = True


def _cut(model: nn.Module, group: ChannelGroup, keep: torch.Tensor) -> None:
    for name in group.producers:
        m = model.get_submodule(name)
        if isinstance(m, RECURRENT):
            cut_recurrent_hidden(m, keep, cells=group.cells)
            continue
        rows = group.rows(name, keep) if name in group.layout or group.shuffle is not None else \
            _span(m.weight.shape[out_dim(m)], group.out_offsets(name), group.size, keep)  # other groups' rows stay
        m.weight = _index(m.weight, rows, out_dim(m))
        if m.bias is not None:
            m.bias = _index(m.bias, rows, 0)
        if isinstance(m, (*CONV, *TRANSPOSED)):
            m.out_channels = len(rows)
        else:
            m.out_features = len(rows)
        if is_std_conv(m):
            keep_std_conv_rows(m, rows)
    for name in group.passthrough:
        m = model.get_submodule(name)
        per = group.passthrough_per.get(name, 1)
        rows = _positions(group, name, keep) if group.shuffle is not None else \
            _span(_width(m), group.offsets(name), group.size * per, _consumer_columns(keep, per))
        if isinstance(m, (*CONV, *TRANSPOSED)):  # depthwise (a filter per channel), or losing whole groups
            per_group = m.in_channels // m.groups
            m.weight = _index(m.weight, rows, 0)
            if m.bias is not None:
                m.bias = _index(m.bias, rows, 0)
            m.in_channels = m.out_channels = len(rows)
            m.groups = len(rows) // per_group
            if is_std_conv(m):
                keep_std_conv_rows(m, rows)
        elif norm_axis(m) is not None:  # removed channels stay in its statistics as zeros
            model.set_submodule(name, keep_norm_channels(m, rows))
        elif isinstance(m, (nn.GroupNorm, GroupNormWithRemoved, NormActWithRemoved)):  # the same, in its groups
            model.set_submodule(name, keep_group_norm_channels(m, rows))
        elif is_response_norm(m):  # its mean over channels still counts the removed ones
            model.set_submodule(name, keep_response_norm_channels(m, rows))
        else:  # BatchNorm, InstanceNorm, PReLU, a registered per-channel module: every per-channel tensor
            for attr in ("weight", "bias", "running_mean", "running_var"):
                t = getattr(m, attr, None)
                if t is not None and t.dim() >= 1 and t.shape[0] > 1:
                    setattr(m, attr, _index(t, rows, 0))
            for attr in ("num_features", "num_parameters"):
                if hasattr(m, attr):
                    setattr(m, attr, len(rows))
    for target, dim in group.parameters:
        owner, _, attr = target.rpartition(".")
        t = _get_parameter(model, target)
        module = model.get_submodule(owner)
        setattr(module, attr, _index(t, _span(t.shape[dim], group.offset(target), group.size, keep), dim))
        if isinstance(module, nn.Linear) and attr == "weight":  # e.g. Swin V2's position bias MLP: a row per head
            module.out_features = module.weight.shape[0]
    for name, per_channel in group.consumers:
        m = model.get_submodule(name)
        if is_std_conv(m):  # each row's statistics still count its removed columns
            columns = _grouped_columns(m, keep) if m.groups > 1 else \
                _span(m.weight.shape[1], group.offsets(name), group.size * per_channel,
                      _consumer_columns(keep, per_channel)).expand(m.out_channels, -1)
            model.set_submodule(name, keep_std_conv_columns(m, columns))
            continue
        if isinstance(m, CONV) and m.groups > 1:  # each block of rows reads its own block of inputs
            _cut_grouped_inputs(m, keep)
            continue
        if isinstance(m, RECURRENT):
            cut_recurrent_inputs(m, _span(m.input_size, group.offsets(name), group.size * per_channel,
                                          _consumer_columns(keep, per_channel)))
            continue
        cols = _positions(group, name, keep) if group.shuffle is not None else \
            _span(m.weight.shape[in_dim(m)], group.offsets(name), group.size * per_channel,
                  _consumer_columns(keep, per_channel))
        m.weight = _index(m.weight, cols, in_dim(m))
        if isinstance(m, (*CONV, *TRANSPOSED)):
            m.in_channels = len(cols)
        else:
            m.in_features = len(cols)
    for path, attr, per in group.counters:  # e.g. an attention module's num_heads; several groups may add up
        owner = model.get_submodule(path)
        set_count(owner, attr, get_count(owner, attr) - (group.size - len(keep)) * per)


def _width(m: nn.Module) -> int:
    """How many channels a per-channel (passthrough) module has now."""
    if isinstance(m, nn.GroupNorm):
        return m.num_channels
    for attr in ("num_features", "num_parameters"):
        if isinstance(getattr(m, attr, None), int):
            return getattr(m, attr)
    return m.weight.shape[0]


def _grouped_columns(m: nn.Module, keep: torch.Tensor) -> torch.Tensor:
    """For each row of a grouped conv, the columns of its weight that read input channels `keep`:
    rows of conv-group k read input block k (the same number kept in every block)."""
    blocks, width = m.groups, m.in_channels // m.groups
    per_block = [keep[(keep // width) == k] - k * width for k in range(blocks)]
    return torch.stack(per_block).repeat_interleave(m.out_channels // blocks, 0)


def _cut_grouped_inputs(m: nn.Module, keep: torch.Tensor) -> None:
    """Keep input channels `keep` of a grouped conv."""
    kept = take_columns(m.weight.detach(), _grouped_columns(m, keep))
    m.weight = nn.Parameter(kept.clone(), requires_grad=m.weight.requires_grad)
    m.in_channels = len(keep)
