"""How important each channel of a coupled group is: the norms of the filters that produce it (for a
weight-standardised conv, of its standardised filters: the scale of its raw weights means nothing)."""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .graph import ChannelGroup
from .recurrent import unit_rows
from .std_conv import effective_weight
from .weights import RECURRENT, rows_first

Norm = Literal["l1", "l2"]


@torch.no_grad()
def channel_importance(model: nn.Module, group: ChannelGroup, norm: Norm = "l1") -> torch.Tensor:
    """Per channel: the L1 (or L2) norm of its filter, summed over the producers a residual add couples.

    GReg's filter mode and the `filter` method both score with this, so on the same weights they pick
    the same channels.
    """
    total = torch.zeros(group.size)
    for name in group.producers:
        m = model.get_submodule(name)
        if isinstance(m, RECURRENT):  # a unit's rows in every gate of both weights
            acc = torch.zeros(group.size)
            for t, channel in unit_rows(m, biases=False, cells=group.cells):
                t = t.detach().float().cpu()
                acc.index_add_(0, channel, t.abs().sum(1) if norm == "l1" else t.pow(2).sum(1))
            total += acc if norm == "l1" else acc.sqrt()
            continue
        rows = group.per_channel_rows(name, rows_first(effective_weight(m).detach(), m)).float().cpu()
        total += rows.abs().sum(1) if norm == "l1" else rows.pow(2).sum(1).sqrt()
    return total

