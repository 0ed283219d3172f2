"""A model's channel structure as data: cut dead channels and record the widths kept (`harvest`),
and replay that record on a freshly built model (`apply_structure`)."""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..flops import count_macs
from ..modes import evaluating
from .budget import group_key
from .graph import channel_groups
from .harvest import harvest_channels
from .remove import remove_channels
from .outputs import output_tensors
from .undo import snapshot
from .weights import out_dim


def model_sizes(model: nn.Module, input_shape: tuple[int, ...], suffix: str) -> dict:
    """Parameters and MACs per sample, as `params_SUFFIX` and `macs_SUFFIX`."""
    return {f"params_{suffix}": sum(p.numel() for p in model.parameters()),
            f"macs_{suffix}": count_macs(model, input_shape)["dense"]}


def harvest(model: nn.Module, input_shape: tuple[int, ...], round_to: int = 1) -> dict:
    """Remove dead channels in place (constants folded where exact), each group keeping a multiple
    of `round_to` channels; returns the structure record: kept channels per group (by first
    producer), biased consumers, widths, the groups left whole and why, MACs and parameters.
    Runs in eval mode (BatchNorm statistics untouched); every module keeps its training flag."""
    with evaluating(model):
        return _harvest(model, input_shape, round_to)


def _harvest(model: nn.Module, input_shape: tuple[int, ...], round_to: int) -> dict:
    before = model_sizes(model, input_shape, "before")
    try:
        groups = channel_groups(model, torch.zeros(2, *input_shape))
    except ValueError as e:  # e.g. a model torch.fx cannot trace: nothing removed, and the report says why
        return {"keep": {}, "skipped": str(e), **before, **model_sizes(model, input_shape, "after")}
    widths = {group_key(g): g.size for g in groups if g.producers}
    whole = {group_key(g): g.blockers[0] for g in groups if g.producers and not g.prunable and g.blockers}
    try:  # before the cut: no uncut copy kept beside it
        reference: tuple | str = reference_outputs(model, input_shape)
    except Exception as e:  # e.g. a model that reads token ids: a random batch is no input for it
        reference = f"the model fails on the random batch a cut is checked with ({type(e).__name__}: " \
                    f"{(str(e).splitlines() or [''])[0][:120]})"
    restore = snapshot(model.modules())
    try:
        result = harvest_channels(model, groups, input_shape, round_to)
    except Exception as e:  # a rule met a case the cut cannot follow: refuse, keep the model as it was
        restore()
        return {"keep": {}, "skipped": f"the channel cut failed ({type(e).__name__}: "
                                       f"{(str(e).splitlines() or [''])[0][:160]}); left uncut", "whole": whole,
                **before, **model_sizes(model, input_shape, "after")}
    keep = result.keep
    if keep:
        differs = None if isinstance(reference, str) else cut_differs(reference, model)
        if isinstance(reference, str) or differs:  # unchecked, or a rule met a model it does not describe
            restore()
            why = f"cannot check the channel cut: {reference}" if isinstance(reference, str) else \
                f"the channel cut changed the model's output ({differs})"
            return {"keep": {}, "skipped": f"{why}; left uncut", "whole": whole,
                    **before, **model_sizes(model, input_shape, "after")}
    return {"keep": keep, "round_to": round_to, "biased": result.biased, "constant_channels_folded": result.folded,
            "widths": {p: (widths[p], len(k)) for p, k in keep.items()},
            "channels_removed": sum(widths[p] - len(k) for p, k in keep.items()),
            "whole": whole,  # groups that cannot be cut, by first producer, with why
            **before, **model_sizes(model, input_shape, "after")}


def reference_outputs(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A seeded random batch and `model`'s outputs on it (eval mode, on a copy so that stateful layers
    keep their state): what a cut must reproduce (`cut_differs`)."""
    p = next(model.parameters(), None)
    x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0)).to(
        p.device if p is not None else "cpu", p.dtype if p is not None and p.is_floating_point() else torch.float32)
    with torch.no_grad():
        return x, output_tensors(copy.deepcopy(model).eval()(x))


def cut_differs(reference: tuple[torch.Tensor, list[torch.Tensor]], after: nn.Module, tol: float = 1e-4) -> str | None:
    """None when `after` computes the `reference` outputs (from `reference_outputs` before the cut) on
    their batch, relative max difference below `tol`, run on a copy; else what differs."""
    x, want = reference
    with torch.no_grad():
        try:
            got = output_tensors(copy.deepcopy(after).eval()(x))
        except Exception as e:  # e.g. a forward that hard-codes a channel count the cut changed
            return f"the cut model fails: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}"
    if len(want) != len(got) or any(a.shape != b.shape for a, b in zip(want, got)):
        return "output shapes " + str([tuple(a.shape) for a in want]) + " became " + str([tuple(b.shape) for b in got])
    for a, b in zip(want, got):
        rel = float((a.float() - b.float()).abs().max() / a.float().abs().max().clamp_min(1e-6)) if a.numel() else 0.0
        if not rel < tol:
            return f"relative difference {rel:.2g}"
    return None


def apply_structure(model: nn.Module, structure: dict, input_shape: tuple[int, ...]) -> None:
    """Cut `model` to the recorded widths (for each group, named by its first producer, keep those
    channels), with a bias on the consumers the harvest folded constant channels into."""
    if not structure.get("keep"):
        return
    for name in structure.get("biased", []):
        m = model.get_submodule(name)
        m.bias = nn.Parameter(torch.zeros(m.weight.shape[out_dim(m)], dtype=m.weight.dtype))
    groups = {group_key(g): g for g in channel_groups(model, torch.zeros(2, *input_shape)) if g.producers}
    for producer, indices in structure["keep"].items():
        group = groups.get(producer)
        if group is None or not group.prunable:
            raise ValueError(f"keep: {producer!r} is not a group of channels this model can cut")
        if not isinstance(indices, list) or not indices or not all(type(i) is int for i in indices) or \
                indices != sorted(set(indices)) or indices[0] < 0 or indices[-1] >= group.size:
            raise ValueError(f"keep.{producer}: expected increasing channel indices in [0, {group.size}), "
                             f"without repeats")
        try:  # the keep set breaks a rule of the group (as many per block, one run)
            remove_channels(model, group, torch.tensor(indices, dtype=torch.long), constants_folded=True)
        except ValueError as e:
            raise ValueError(f"keep.{producer}: {e}") from None
