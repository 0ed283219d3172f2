"""What the channel pruners share: the coupled groups among the selected layers, and keeping
dropped channels at exact zeros in every module of their group."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from ..structured import ChannelGroup, channel_groups, group_key, zero_channels
from ..structured.weights import RECURRENT


def selected_groups(model: nn.Module, layers: list[str], input_shape: tuple[int, ...] | None,
                    where: str) -> tuple[dict[str, ChannelGroup], dict[str, str]]:
    """Prunable channel groups with a producer among `layers` (or produced by a recurrent layer, whose
    hidden units are channels: the weight-level selection never lists those layers), by group key; and
    the selected groups that must stay whole, with the reason (for the report)."""
    if input_shape is None:
        raise UserError(f"{where} needs the input shape to trace the model")
    try:
        groups = channel_groups(model, torch.zeros(2, *input_shape))
    except ValueError as e:
        raise UserError(f"{where}: {e}") from None
    recurrent = {n for n, m in model.named_modules() if isinstance(m, RECURRENT)}
    selected = [g for g in groups if set(g.producers) & set(layers) or
                (g.producers and set(g.producers) <= recurrent)]
    chosen = {group_key(g): g for g in selected if g.prunable}
    whole = {group_key(g): g.blockers[0] for g in selected if not g.prunable}
    if not chosen:
        reasons = "; ".join(f"{k}: {v}" for k, v in list(whole.items())[:3])
        raise UserError(f"{where}: no prunable channel group among the selected layers ({reasons})")
    return chosen, whole


def zero_dropped(model: nn.Module, groups: dict[str, ChannelGroup], dropped: dict[str, torch.Tensor]) -> None:
    """Set the dropped channels of every group to exact zeros (filters, biases, BatchNorm γ and β)."""
    for key, idx in dropped.items():
        if len(idx):
            zero_channels(model, groups[key], idx)
