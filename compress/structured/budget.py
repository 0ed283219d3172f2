"""How many channels each group keeps: per-group ratios, or one ratio found for a MAC or latency target.

Pure counting plus a bisection: the MACs (or the measured latency) of a candidate set of widths
are taken on a pruned copy of the model, so every layer kind the removal supports is counted the
way it will run. Latency is measured by a function the caller passes in (the runtime lives in
`deploy`), NetAdapt's point: a target in measured time, not in a proxy.
"""
from __future__ import annotations

import copy
import math
from typing import Callable

import torch
from torch import nn

from .. import distributed
from ..flops import count_macs
from ..ranking import lowest
from .graph import ChannelGroup
from .remove import remove_channels


def keep_count(n: int, ratio: float, round_to: int = 1, pow2: bool = False, blocks: int = 1) -> int:
    """Channels kept of `n` when cutting `ratio` of them: never 0; a multiple of round_to when n allows,
    or with pow2 the nearest power of two (at most n's largest). With `blocks` > 1 (a grouped conv's
    channel groups) the rule applies to each of the equal blocks and the counts add up.

    With round_to = 1 this keeps n − min(ceil(ratio·n), n − 1), GReg's and the L1 rule's count.
    """
    if blocks > 1:
        return blocks * keep_count(n // blocks, ratio, round_to, pow2)
    if pow2 and ratio > 0:
        nearest = 2 ** round(math.log2(max(n * (1 - ratio), 1)))
        return min(nearest, 2 ** int(math.log2(n)))
    if round_to == 1:
        return n - min(math.ceil(ratio * n - 1e-9), n - 1)
    return min(max(round_to, int(round(n * (1 - ratio) / round_to)) * round_to), n)


def unit_round(round_to: int, unit: int) -> int:
    """round_to for a group whose channels are `unit` rows wide (attention heads): widths that are a
    multiple of round_to rows need that many channels only up to the unit."""
    return round_to // math.gcd(round_to, unit) if round_to > 1 else round_to


def group_keep_count(group: ChannelGroup, ratio: float, round_to: int = 1, pow2: bool = False) -> int:
    """`keep_count` for a group: per block for a grouped conv's; for a shuffled stream the same width
    in every producer, the smallest its shuffles can run at from the count asked (shuffle.py), all its
    producers' channels."""
    if group.shuffle is not None:
        s = group.shuffle
        return len(s.producers) * s.at_least(keep_count(s.width, ratio, round_to, pow2), round_to)
    return keep_count(group.size, ratio, unit_round(round_to, group.unit), pow2, group.blocks)


def drop_lowest(group: ChannelGroup, scores: torch.Tensor, count: int) -> torch.Tensor:
    """The channels of `group` to drop, about `count` of the lowest `scores` (`ranking.lowest`, as the group
    allows: per block, from the ends of a run; for a shuffled stream as many as its widths allow, at most
    `count`, the lowest within what each producer sends each reader). Ascending."""
    if group.shuffle is None:
        return lowest(scores, count, group.blocks, group.contiguous)
    s = group.shuffle
    kept = s.keep(s.width_for(group.size - int(count)), scores.flatten().cpu())
    mask = torch.ones(group.size, dtype=torch.bool)
    mask[kept] = False
    return torch.nonzero(mask).flatten()


def first_kept(group: ChannelGroup, count: int) -> torch.Tensor:
    """Channel indices keeping `count` of `group`: the first ones of each block (for counting MACs)."""
    if group.shuffle is not None:
        return group.shuffle.keep(group.shuffle.width_for(count))
    width, per = group.size // group.blocks, count // group.blocks
    return torch.cat([b * width + torch.arange(per) for b in range(group.blocks)])


def random_kept(group: ChannelGroup, count: int, generator: torch.Generator) -> torch.Tensor:
    """Seeded random channel indices keeping `count` of `group` (as many in each block; one run where
    the group needs it): keep sets that no scoring rule would pick, for checking a cut."""
    if group.shuffle is not None:
        s = group.shuffle
        return s.keep(s.width_for(count), torch.rand(group.size, generator=generator))
    if group.contiguous:
        start = int(torch.randint(group.size - count + 1, (1,), generator=generator))
        return torch.arange(start, start + count)
    width, per = group.size // group.blocks, count // group.blocks
    return torch.cat([b * width + torch.randperm(width, generator=generator)[:per].sort().values
                      for b in range(group.blocks)])


def group_key(group: ChannelGroup) -> str:
    """A group's stable name: its first producer (with the rows it writes there, for the parts of a split)."""
    return group.key or group.producers[0]


def cut_copy(model: nn.Module, groups: list[ChannelGroup], keep: dict[str, int]) -> nn.Module:
    """A copy of `model` with each group cut to keep[group key] channels (the first ones: for
    counting and timing, where only the widths matter)."""
    smaller, groups = copy.deepcopy(model), copy.deepcopy(groups)
    for g in groups:
        k = keep.get(group_key(g), g.size)
        if k < g.size:
            remove_channels(smaller, g, first_kept(g, k), constants_folded=True)
    return smaller


def macs_with_widths(model: nn.Module, groups: list[ChannelGroup], keep: dict[str, int],
                     input_shape: tuple[int, ...]) -> int:
    """MACs of one sample after cutting each group to keep[group key] channels (on a copy)."""
    return count_macs(cut_copy(model, groups, keep), input_shape)["dense"]


def keep_counts(groups: list[ChannelGroup], ratio: float, round_to: int = 1, pow2: bool = False,
                fixed: dict[str, float] | None = None) -> dict[str, int]:
    """Channels kept per group key when `ratio` is cut from every group not in `fixed`."""
    fixed = fixed or {}
    return {group_key(g): group_keep_count(g, fixed.get(group_key(g), ratio), round_to, pow2) for g in groups}


ROUNDINGS = ((1, False), (8, False), (16, False), (1, True))  # (round_to, pow2) tried by default


def widths_for_latency(model: nn.Module, groups: list[ChannelGroup], factor: float,
                       latency_ratio: Callable[[nn.Module, nn.Module], float], round_to: int = 0,
                       fixed: dict[str, float] | None = None, pow2: bool = False,
                       probes: int = 6, refine: int = 8, _local: bool = False) -> dict:
    """Widths whose cut model measures at most 1/factor of the model's latency, cutting one ratio
    from every group not in `fixed`. `latency_ratio(model, cut)` times both side by side and returns
    cut / model. Latency jumps with the widths (a runtime runs some much faster than their
    neighbours), so unless `round_to` (≥ 1) or `pow2` is given, four roundings are searched — any width,
    multiples of 8, of 16, powers of two — each by bisection over the ratio (`probes` timings;
    each distinct set of widths timed once); of every set that measured under the goal, the one
    keeping the most channels wins. One ratio for all groups moves latency in steps, so the winner
    can land well under the goal; up to `refine` more timings then give channels back one group at a
    time (NetAdapt's idea, measured, not modelled): each group, the largest gain first, tries the
    width of the nearest cut of the same rounding that measured over the goal, and keeps it if the
    model still measures under. Returns {"keep": group key → channels, "ratio", "round_to", "pow2",
    "latency_ratio", "probes", "refined": group keys widened}. Raises ValueError when no cut
    measures under the goal.
    Under torchrun only rank 0 times (the others would share its cores); every rank gets its answer."""
    if distributed.current().size > 1 and not _local:
        keys = [group_key(g) for g in groups]
        flat, found, error = [-1.0, 0.0, 0.0, 0.0] + [0.0] * len(keys), None, ""
        if distributed.current().main:
            try:
                found = widths_for_latency(model, groups, factor, latency_ratio, round_to, fixed, pow2, probes,
                                           refine, _local=True)
                flat = [found["ratio"], found["round_to"], float(found["pow2"]), found["latency_ratio"]] + \
                       [float(found["keep"][k]) for k in keys]
            except ValueError as e:
                error = str(e)
        flat = distributed.from_main(flat)
        if flat[0] < 0:
            raise ValueError(error or f"a {factor:g}x latency reduction is out of reach (measured on rank 0)")
        return found or {"ratio": flat[0], "round_to": int(flat[1]), "pow2": bool(flat[2]),
                         "latency_ratio": flat[3], "keep": {k: int(v) for k, v in zip(keys, flat[4:])},
                         "probes": [], "refined": []}
    goal = 1.0 / factor
    measured: dict[tuple, dict] = {}

    def probe(ratio: float, rounding: tuple[int, bool], keep: dict[str, int] | None = None) -> float:
        keep = keep or keep_counts(groups, ratio, rounding[0], rounding[1], fixed)
        widths = tuple(sorted(keep.items()))
        if widths not in measured:
            measured[widths] = {"ratio": ratio, "round_to": rounding[0], "pow2": rounding[1], "keep": keep,
                                "latency_ratio": latency_ratio(model, cut_copy(model, groups, keep))}
        return measured[widths]["latency_ratio"]

    for rounding in ((max(round_to, 1), pow2),) if round_to >= 1 or pow2 else ROUNDINGS:
        lo, hi = 0.0, 0.999
        if probe(hi, rounding) > goal:
            continue
        for _ in range(probes):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if probe(mid, rounding) <= goal else (mid, hi)
    under = [m for m in measured.values() if m["latency_ratio"] <= goal]
    if not under:
        deepest = min(m["latency_ratio"] for m in measured.values())
        raise ValueError(f"a {factor:g}x latency reduction is out of reach: the deepest cut measured "
                         f"{1 / deepest:.2f}x")
    best = max(under, key=lambda m: (sum(m["keep"].values()), -m["latency_ratio"]))
    rounding = (best["round_to"], best["pow2"])
    over = [m for m in measured.values() if m["latency_ratio"] > goal and (m["round_to"], m["pow2"]) == rounding
            and all(m["keep"][k] >= n for k, n in best["keep"].items())]
    refined = []
    if over and refine > 0:
        nearest = min(over, key=lambda m: sum(m["keep"].values()))
        gains = sorted((nearest["keep"][k] - n, k) for k, n in best["keep"].items() if nearest["keep"][k] > n)
        for _, key in reversed(gains[-refine:]):
            keep = {**best["keep"], key: nearest["keep"][key]}
            if probe(best["ratio"], rounding, keep) <= goal:
                best = measured[tuple(sorted(keep.items()))]
                refined.append(key)
    trail = [{k: m[k] for k in ("ratio", "round_to", "pow2", "latency_ratio")} for m in measured.values()]
    return {**best, "probes": trail, "refined": refined}


def ratio_for_macs(model: nn.Module, groups: list[ChannelGroup], input_shape: tuple[int, ...], factor: float,
                   round_to: int = 1, fixed: dict[str, float] | None = None,
                   pow2: bool = False) -> tuple[float, int, int]:
    """The smallest ratio, cut from every group not in `fixed` (group key → its own ratio), that
    divides the model's MACs by at least `factor`. Returns (ratio, dense MACs, MACs after).
    Raises ValueError when even the deepest cut allowed misses the target."""
    fixed = fixed or {}
    dense = macs_with_widths(model, [], {}, input_shape)
    goal = dense / factor

    def macs(ratio: float) -> int:
        return macs_with_widths(model, groups, keep_counts(groups, ratio, round_to, pow2, fixed), input_shape)

    hi = 0.999
    if macs(hi) > goal:
        raise ValueError(f"a {factor:g}x MAC reduction is out of reach: cutting all but one channel "
                         f"(or round_to) of every prunable group leaves {dense / macs(hi):.2f}x")
    lo = 0.0
    for _ in range(20):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if macs(mid) <= goal else (mid, hi)
    return hi, dense, macs(hi)
