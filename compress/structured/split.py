"""The channel rule of torch.split / chunk / tensor_split / unbind.

Along another axis than the channels' (q, k, v apart) every part carries all the channels. Along the
channel axis each part carries a slice of them, and a cut must leave the parts where the model's code
will split the smaller tensor:

- `chunk(n)` (and `tensor_split(n)`) splits into n equal parts whatever the width: the parts are tied
  into one group, channel i of every part cut together, so they stay equal (a GLU's halves, CSP's
  two paths, ShuffleNet's branches).
- `split(x, self.width)`: equal parts of a size the code reads from an int attribute (Res2Net's
  `self.width`, CSPNet's `self.expand_chs // 2`): tied the same way, and the cut sets the attribute.
- `split(x, self.splits)`: parts of the sizes in a list attribute (MixNet's kernel groups): each part
  its own group, each entry set to what its part keeps.

The attribute must be proved to be what fixes the split and nothing else (width_attributes.problem,
after the walk); a size written as a literal, or held by no attribute or several, blocks.
"""
from __future__ import annotations

import operator

import torch
from torch import fx

from .ops import argument, caller_attributes, cut_into_parts, tie
from .rules import function_rule


@function_rule(torch.split, "split", torch.chunk, "chunk", torch.tensor_split, "tensor_split", torch.unbind,
               "unbind")
def split(w, node, m) -> None:
    x = w.first(node)
    if x not in w.label:
        return
    metas = node.meta.get("tensor_meta")
    unbind = node.target in (torch.unbind, "unbind")
    at = 1 if unbind else 2
    dim = argument(node, at, "dim", 0)
    by_index = all(u.op == "call_function" and u.target is operator.getitem and isinstance(u.args[1], int)
                   for u in node.users)  # the tuple itself handed on would escape the walk
    if not (by_index and isinstance(metas, (tuple, list)) and isinstance(dim, int)):
        w.block(node, f"split {node.name} whose parts are not taken one by one")
        return
    if dim % w.ndim(x) != w.axis[x]:
        axis = w.axis[x] - (unbind and dim % w.ndim(x) < w.axis[x])
        w.parts[node] = [(w.label[x], axis)] * len(metas)
        w.shifted[node] = w.shifted.get(x)
        return
    sizes = [meta.shape[w.axis[x]] for meta in metas]
    try:
        why = "one channel per part" if unbind else _split_channels(w, node, x, sizes)
    except ValueError as e:  # a group the parts would cut through cannot be split (a grouped conv's)
        why = str(e)
    if why is not None:
        w.block(node, f"split {node.name} along the channel axis: {why}")
        # each part a new group that stays whole: what meets it downstream stays whole too, the rest is free
        w.parts[node] = []
        for size in sizes:
            gid = w.g.new(size)
            w.g.get(gid).blockers.append(f"a part of split {node.name}")
            w.parts[node].append((((gid, 1),), w.axis[x]))


def _split_channels(w, node: fx.Node, x: fx.Node, sizes: list[int]) -> str | None:
    """Label each part of a split along the channel axis; None when done, else why it cannot be."""
    segs = w.label[x]
    arg = node.args[1] if len(node.args) > 1 else next(
        (node.kwargs[k] for k in ("split_size_or_sections", "split_size", "chunks", "indices_or_sections", "sections",
                                  "indices") if k in node.kwargs), None)
    if not isinstance(arg, (int, list, tuple)):
        return "at sizes computed at run time"
    if len(sizes) == 1 and isinstance(arg, int):  # the whole tensor (chunk(1), a split size at least as wide
        w.parts[node] = [(segs, w.axis[x])]  # as it): still one part after a cut
        w.shifted[node] = w.shifted.get(x)
        return None
    chunked = node.target in (torch.chunk, "chunk", torch.tensor_split, "tensor_split") and isinstance(arg, int)
    equal = len(set(sizes)) == 1
    if chunked and not equal:
        return f"{sum(sizes)} channels into unequal parts {sizes}"
    if not chunked and node.target not in (torch.split, "split"):
        return "at indices written in the code"
    parts = cut_into_parts(w, segs, sizes)
    counters: list[list[tuple[str, str, int]]] = []
    if not chunked:
        if any(per != 1 for _, per in segs):
            return "at sizes an attribute gives, of channels several entries wide"
        found = _size_attribute(w, node, arg, sizes)
        if isinstance(found, str):
            return found
        counters = found
    if chunked or isinstance(arg, int):  # equal parts whatever the width: tie them, channel by channel
        parts = [tie(w, node, segs, sizes)] * len(sizes)
    # proved after the walk, then set by the cut; tied parts are one set of groups, counted once
    for part, candidates, size in list(zip(parts, counters, sizes))[:1 if isinstance(arg, int) else None]:
        w.width_checks.append(([gid for gid, _ in part], node.name, candidates, size))
    w.parts[node] = [(w.resolve(p), w.axis[x]) for p in parts]
    w.shifted[node] = w.shifted.get(x)
    return None


def _size_attribute(w, node: fx.Node, arg, sizes: list[int]) -> list[list[tuple[str, str, int]]] | str:
    """For each part, the attributes that may give its size (module path, attribute, channels per
    unit), for the proof to pick from: int attributes holding the equal parts' size, or the whole width
    (SKNet's `self.in_channels // self.num_paths`), or entry i of a list attribute holding the sizes.
    Else why not."""
    path, attrs = caller_attributes(w, node)
    if isinstance(arg, int):
        size, n = sizes[0], len(sizes)
        found = [(path, k, per) for per in dict.fromkeys((1, n)) for k, v in attrs.items()
                 if type(v) is int and v == size * per]
        return [found] * len(sizes) if found else \
            f"at a size of {size} that no int attribute of {path or 'the model'} holds"
    if isinstance(arg, (list, tuple)) and all(isinstance(a, int) for a in arg):
        names = [k for k, v in attrs.items() if type(v) in (list, tuple) and list(v) == list(sizes)]
        return [[(path, f"{k}[{i}]", 1) for k in names] for i in range(len(sizes))] if names else \
            f"at sizes {sizes} that no list attribute of {path or 'the model'} holds"
    return "at sizes computed at run time"
