"""A model's channel structure as data: cut dead channels and record the widths kept (`harvest`),
and replay that record on a freshly built model (`apply_structure`)."""
from __future__ import annotations

import torch
from torch import nn

from ..flops import count_macs
from .graph import channel_groups
from .harvest import harvest_channels
from .remove import remove_channels


def model_sizes(model: nn.Module, input_shape: tuple[int, ...], suffix: str) -> dict:
    """Parameters and MACs per sample, as `params_SUFFIX` and `macs_SUFFIX`."""
    return {f"params_{suffix}": sum(p.numel() for p in model.parameters()),
            f"macs_{suffix}": count_macs(model, input_shape)["dense"]}


def harvest(model: nn.Module, input_shape: tuple[int, ...], round_to: int = 1) -> dict:
    """Remove dead channels in place (constants folded where exact), each group keeping a multiple
    of `round_to` channels; returns the structure record: kept channels per group (by first
    producer), biased consumers, widths, the groups left whole and why, MACs and parameters."""
    before = model_sizes(model, input_shape, "before")
    try:
        groups = channel_groups(model, torch.zeros(2, *input_shape))
    except ValueError as e:  # e.g. a model torch.fx cannot trace: nothing removed, and the report says why
        return {"keep": {}, "skipped": str(e), **before, **model_sizes(model, input_shape, "after")}
    widths = {g.producers[0]: g.size for g in groups if g.producers}
    whole = {g.producers[0]: g.blockers[0] for g in groups if g.producers and not g.prunable and g.blockers}
    result = harvest_channels(model.eval(), groups, input_shape, round_to)
    keep = result.keep
    return {"keep": keep, "round_to": round_to, "biased": result.biased, "constant_channels_folded": result.folded,
            "widths": {p: (widths[p], len(k)) for p, k in keep.items()},
            "channels_removed": sum(widths[p] - len(k) for p, k in keep.items()),
            "whole": whole,  # groups that cannot be cut, by first producer, with why
            **before, **model_sizes(model, input_shape, "after")}


def apply_structure(model: nn.Module, structure: dict, input_shape: tuple[int, ...]) -> None:
    """Cut `model` to the recorded widths (for each group, named by its first producer, keep those
    channels), with a bias on the consumers the harvest folded constant channels into."""
    if not structure.get("keep"):
        return
    for name in structure.get("biased", []):
        m = model.get_submodule(name)
        m.bias = nn.Parameter(torch.zeros(m.weight.shape[0], dtype=m.weight.dtype))
    groups = {g.producers[0]: g for g in channel_groups(model, torch.zeros(2, *input_shape)) if g.producers}
    for producer, indices in structure["keep"].items():
        group = groups.get(producer)
        if group is None or not group.prunable:
            raise ValueError(f"keep: {producer!r} is not a group of channels this model can cut")
        if not isinstance(indices, list) or not indices or not all(type(i) is int for i in indices) or \
                indices != sorted(set(indices)) or indices[0] < 0 or indices[-1] >= group.size:
            raise ValueError(f"keep.{producer}: expected increasing channel indices in [0, {group.size}), "
                             f"without repeats")
        remove_channels(model, group, torch.tensor(indices, dtype=torch.long), constants_folded=True)
