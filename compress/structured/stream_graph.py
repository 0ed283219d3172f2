"""Where a traced model shuffles channels: the streams of cat / chunk / shuffle ops (`find_regions`).

A channel shuffle is `x.view(B, g, C // g, ...).transpose(1, 2).reshape(B, C, ...)` (or the permute,
`nn.ChannelShuffle`, `torch.channel_shuffle`), read only where the smaller model would shuffle its own
width: g written in the code, C // g and C computed from x's shape. A stream is every cat and chunk along
the channel axis connected to a shuffle, with the shuffles; its inputs are the tensors entering it, its
exits the ones read from outside. A stream whose width the code reads elsewhere (a size, a branch) is
marked with why (`Region.defect`). What a stream is as a channel group: shuffle.py.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
from torch import fx, nn

_CAT = {torch.cat, torch.concat, "cat"}
_CHUNK = {torch.chunk, "chunk"}
_RESHAPE = {"view", "reshape", torch.reshape}
_TRANSPOSE = {torch.transpose, "transpose"}
_NATIVE_SHUFFLE = {nn.functional.channel_shuffle, torch.channel_shuffle, nn.functional.native_channel_shuffle,
                   torch.native_channel_shuffle}


def shape_of(node) -> tuple | None:
    """The shape fx recorded for a traced tensor node, or None (not a node, or not a tensor)."""
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if hasattr(meta, "shape") else None


def _dim(node: fx.Node, at: int, default=0):
    return node.args[at] if len(node.args) > at else node.kwargs.get("dim", default)


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _swaps_blocks(t: fx.Node, rank: int) -> bool:
    """Whether `t` swaps dims 1 and 2 of a `rank`-dim tensor and nothing else (transpose or permute)."""
    if t.target in _TRANSPOSE:
        dims = t.args[1:3]
        return len(dims) == 2 and all(isinstance(d, int) for d in dims) and sorted(d % rank for d in dims) == [1, 2]
    if t.target in ("permute", torch.permute):
        dims = t.args[1] if len(t.args) == 2 and isinstance(t.args[1], (tuple, list)) else t.args[1:]
        return all(isinstance(d, int) for d in dims) and [d % rank for d in dims] == [0, 2, 1, *range(3, rank)]
    return False


def _read_from(arg, x: fx.Node) -> bool:
    """Whether a size argument is computed from x's shape alone (`x.size()`, `x.shape`, arithmetic on
    them): the smaller model then computes it from its own width."""
    todo, seen = [arg], set()
    while todo:
        n = todo.pop()
        if not isinstance(n, fx.Node) or n in seen:
            continue
        seen.add(n)
        if (n.op == "call_method" and n.target == "size") or \
                (n.op == "call_function" and n.target is getattr and n.args[1:] == ("shape",)):
            if n.args[0] is not x:
                return False
        elif n.op == "call_function" and getattr(n.target, "__module__", None) == "_operator":
            todo += n.all_input_nodes
        else:
            return False
    return True


def _shuffle_at(v2: fx.Node) -> tuple[fx.Node, int, tuple[fx.Node, ...]] | None:
    """(input, g, inner nodes) when `v2` ends a channel shuffle of its input x [B, C, ...]:
    view(B, g, C//g, ...) → transpose(1, 2) (or the permute) → (contiguous) → view(B, C, ...), with g written
    in the code and C // g and C computed from x's shape (or -1), so that the smaller model shuffles its
    own width."""
    if v2.op != "call_method" or v2.target not in _RESHAPE or not v2.args:
        return None
    t = v2.args[0]
    inner = []
    if isinstance(t, fx.Node) and t.op == "call_method" and t.target == "contiguous":
        inner.append(t)
        t = t.args[0]
    v1 = t.args[0] if isinstance(t, fx.Node) and t.args else None
    if not (isinstance(v1, fx.Node) and v1.target in _RESHAPE and v1.args and isinstance(v1.args[0], fx.Node)):
        return None
    x = v1.args[0]
    before, mid, after = shape_of(x), shape_of(v1), shape_of(v2)
    if before is None or mid is None or after != before or len(before) < 2 or len(mid) != len(before) + 1 or \
            mid[0] != before[0] or mid[1] * mid[2] != before[1] or mid[3:] != before[2:] or mid[1] < 2 or \
            not _swaps_blocks(t, len(mid)):
        return None
    sizes = v1.args[1:] if len(v1.args) > 2 else (v1.args[1] if len(v1.args) > 1 else ())
    outs = v2.args[1:] if len(v2.args) > 2 else (v2.args[1] if len(v2.args) > 1 else ())
    if len(sizes) != len(mid) or len(outs) != len(before) or sizes[1] != mid[1] or \
            not (sizes[2] == -1 or (isinstance(sizes[2], fx.Node) and _read_from(sizes[2], x))) or \
            not (outs[1] == -1 or (isinstance(outs[1], fx.Node) and _read_from(outs[1], x))):
        return None
    if any(_only_user(n) is None for n in (v1, t, *inner)):
        return None
    return x, mid[1], (v1, t, *inner)


def _inner(node: fx.Node) -> tuple[fx.Node, ...]:
    """The view, transpose (and contiguous) a written-out shuffle ending at `node` goes through; () else."""
    found = _shuffle_at(node)
    return found[2] if found else ()


def _channel_count_read(n: fx.Node, views: set[fx.Node]) -> fx.Node | None:
    """A node outside the stream's own shuffles (`views`) that uses n's channel count, or None."""
    ndim = len(shape_of(n) or ())
    todo = []
    for u in n.users:
        if u.op == "call_method" and u.target == "size":
            d = u.args[1] if len(u.args) > 1 else u.kwargs.get("dim")
            if d is None:
                todo += [v for v in u.users if not (v.target is operator.getitem and isinstance(v.args[1], int)
                                                    and ndim and v.args[1] % ndim != 1)]
            elif not (isinstance(d, int) and ndim and d % ndim != 1):
                todo.append(u)
        elif u.op == "call_function" and u.target is getattr and u.args[1:] == ("shape",):
            todo += [v for v in u.users if not (v.target is operator.getitem and isinstance(v.args[1], int)
                                                and ndim and v.args[1] % ndim != 1)]
    seen = set()
    while todo:
        v = todo.pop()
        if v in seen:
            continue
        seen.add(v)
        if v in views:
            continue
        if v.op == "call_function" and getattr(v.target, "__module__", None) == "_operator":
            todo += list(v.users)
            continue
        return v
    return None


def _stream_op(node: fx.Node, traced: fx.GraphModule):
    """(kind, tensor inputs, argument) for a cat / chunk / chunk item along dim 1 or a shuffle, or None."""
    shape = shape_of(node)
    if node.op == "call_module" and type(traced.get_submodule(node.target)) is nn.ChannelShuffle and \
            len(node.args) == 1 and isinstance(node.args[0], fx.Node):
        return ("shuffle", (node.args[0],), traced.get_submodule(node.target).groups) \
            if shape is not None and len(shape) >= 3 else None
    if node.target in _NATIVE_SHUFFLE and node.args and isinstance(node.args[0], fx.Node):
        g = node.args[1] if len(node.args) > 1 else node.kwargs.get("groups")
        return ("shuffle", (node.args[0],), g) if isinstance(g, int) and shape is not None and len(shape) >= 3 \
            else None
    if node.op not in ("call_function", "call_method"):
        return None
    if node.target in _CAT:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors", ())
        dim = _dim(node, 1)
        if shape is not None and len(shape) >= 2 and isinstance(dim, int) and dim % len(shape) == 1 and \
                isinstance(tensors, (list, tuple)) and all(isinstance(t, fx.Node) for t in tensors):
            return "cat", tuple(tensors), None
    elif node.target in _CHUNK and node.args and isinstance(node.args[0], fx.Node):
        n = node.args[1] if len(node.args) > 1 else node.kwargs.get("chunks")
        x, dim = shape_of(node.args[0]), _dim(node, 2)
        if isinstance(n, int) and x is not None and len(x) >= 2 and isinstance(dim, int) and dim % len(x) == 1 and \
                all(u.target is operator.getitem and isinstance(u.args[1], int) for u in node.users):
            return "chunk", (node.args[0],), n
    elif node.target is operator.getitem and isinstance(node.args[0], fx.Node) and \
            node.args[0].target in _CHUNK and isinstance(node.args[1], int):
        return "item", (node.args[0],), node.args[1]
    shuffled = _shuffle_at(node)
    if shuffled is not None:
        return "shuffle", (shuffled[0],), shuffled[1]
    return None


@dataclass(eq=False)
class Region:
    """The traced nodes of one stream: a program of cat / chunk / item / shuffle steps, in graph order."""
    steps: list[tuple[fx.Node, str, tuple[fx.Node, ...], object]]
    nodes: set[fx.Node]                       # the steps' nodes and the shuffles' inner ones
    inputs: list[fx.Node] = field(default_factory=list)   # tensors entering (the producers' outputs)
    exits: list[fx.Node] = field(default_factory=list)    # steps read from outside
    defect: str | None = None                             # why it cannot be cut, seen in the graph alone
    why: str | None = None                                # set when the walk finds it cannot be cut
    entering: dict = field(default_factory=dict)          # input -> the group it carries (the walk's)
    exit_gid: dict = field(default_factory=dict)          # exit -> the group its readers join
    shifted: str | None = None                            # an input carries a constant where cut
    foreign: bool = False  # its inputs are no channels on axis 1 (tokens shuffled): the ordinary rules' case

    def reset(self) -> None:
        """Forget what a walk noted (before another walk)."""
        self.entering, self.exit_gid, self.why, self.shifted, self.foreign = {}, {}, None, None, False


def find_regions(traced: fx.GraphModule) -> list[Region]:
    """The streams of `traced` that hold at least one channel shuffle."""
    ops = {}
    for node in traced.graph.nodes:
        op = _stream_op(node, traced)
        if op is not None:
            ops[node] = op
    inner = {n: v2 for v2 in ops for n in _inner(v2)}
    seen, regions = set(), []
    for seed, (kind, _, _) in ops.items():
        if kind != "shuffle" or seed in seen:
            continue
        todo, members = [seed], set()
        while todo:
            n = todo.pop()
            if n in members:
                continue
            members.add(n)
            todo += [a for a in ops[n][1] if a in ops]
            todo += [u for u in n.users if u in ops and n in ops[u][1]]
            todo += [inner[u] for u in n.users if u in inner and ops[inner[u]][1][0] is n]
        seen |= members
        steps = [(n, *ops[n]) for n in traced.graph.nodes if n in members]
        nodes = members | {i for n in members for i in _inner(n)}
        region = Region(steps, nodes)
        for n, _, tensors, _ in steps:
            region.inputs += [t for t in tensors if t not in members and t not in region.inputs]
        views = {v for n in members if _inner(n) for v in (n, _inner(n)[0])}
        for n in nodes:
            reader = _channel_count_read(n, views)
            if reader is not None and region.defect is None:
                region.defect = f"{reader.name} reads the channel count of {n.name}"
        shape_reads = ("size", "dim")
        for n, kind, _, _ in steps:
            outside = [u for u in n.users if u not in nodes and not (u.op == "call_method" and u.target in shape_reads)
                       and not (u.target is getattr)]
            if outside and kind != "chunk":
                region.exits.append(n)
            elif outside:
                region.defect = f"chunk {n.name} used whole"
        regions.append(region)
    return regions
