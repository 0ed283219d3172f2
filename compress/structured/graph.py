"""Which channels must be removed together: a channel dependency graph traced with torch.fx.

Every tensor's channel axis (dim 1, or the last dim after Linear) is labelled with the group
that owns its channels. A Conv2d (groups = 1) or Linear starts a new group (its output
channels); BatchNorm, activations, pooling, dropout and depthwise convs pass the group through
(their per-channel parameters join it); a residual add merges the groups of its operands;
flatten passes the group on with a spatial factor (the Linear after it consumes channel c as
inputs c·k … c·k+k−1); a concatenation along the channels lays several groups side by side, and
every module reading it records which groups come before (`ChannelGroup.offset`). Anything else
that touches a channel-carrying tensor (slicing, reshapes, unknown ops) makes the groups involved
unprunable, naming the operation, so an unknown model is never cut wrongly.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

PASS_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU,
                nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                nn.AdaptiveMaxPool2d, nn.Dropout, nn.Identity)
PASS_FUNCTIONS = {torch.relu, nn.functional.relu, nn.functional.relu6, nn.functional.hardswish, torch.sigmoid,
                  nn.functional.adaptive_avg_pool2d, nn.functional.max_pool2d, nn.functional.avg_pool2d,
                  nn.functional.dropout, torch.tanh}
PASS_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "detach", "float"}
ADD = {operator.add, operator.iadd, torch.add}
CAT = {torch.cat, torch.concat, torch.concatenate}


@dataclass
class ChannelGroup:
    """Channels that must be cut together. `size` channels; index i means the same channel in every member."""
    id: int
    size: int
    producers: list[str] = field(default_factory=list)     # Conv2d / Linear whose output rows are these channels
    passthrough: list[str] = field(default_factory=list)   # BatchNorm / depthwise conv: per-channel params
    consumers: list[tuple[str, int]] = field(default_factory=list)  # (Conv2d / Linear, inputs per channel)
    blockers: list[str] = field(default_factory=list)      # why it must stay whole
    # member -> the (group, inputs per channel) concatenated before this group in that member's input
    before: dict[str, list] = field(default_factory=dict)

    @property
    def prunable(self) -> bool:
        return not self.blockers and bool(self.producers)

    def offset(self, member: str) -> int:
        """Where this group's channels start in `member`'s input: 0 unless a concatenation put others first."""
        return sum(g.size * per for g, per in self.before.get(member, []))


class _Groups:
    def __init__(self):
        self.groups: dict[int, ChannelGroup] = {}
        self.parent: dict[int, int] = {}

    def new(self, size: int) -> int:
        gid = len(self.parent)
        self.parent[gid] = gid
        self.groups[gid] = ChannelGroup(gid, size)
        return gid

    def find(self, gid: int) -> int:
        while self.parent[gid] != gid:
            gid = self.parent[gid]
        return gid

    def get(self, gid: int) -> ChannelGroup:
        return self.groups[self.find(gid)]

    def merge(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        ga, gb = self.groups.pop(rb), self.groups[ra]
        for attr in ("producers", "passthrough", "consumers", "blockers"):
            getattr(gb, attr).extend(getattr(ga, attr))
        gb.before.update(ga.before)
        if ga.size != gb.size:
            gb.blockers.append(f"residual add of {ga.size} and {gb.size} channels")
        self.parent[rb] = ra
        return ra


def channel_groups(model: nn.Module, example: torch.Tensor) -> list[ChannelGroup]:
    """The channel groups of `model` for inputs shaped like `example` ([B, C, H, W] or [B, F])."""
    try:
        traced = fx.symbolic_trace(model)
    except Exception as e:  # data-dependent control flow and the like
        raise ValueError(f"cannot trace {type(model).__name__} with torch.fx: {str(e).splitlines()[0]}") from None
    ShapeProp(traced).propagate(example)
    modules = dict(traced.named_modules())
    g = _Groups()
    # node -> its channel axis as segments (group id, inputs per channel); several after a concatenation
    label: dict[fx.Node, tuple[tuple[int, int], ...]] = {}
    members: dict[str, tuple[tuple[int, int], ...]] = {}  # module -> the segments of its input
    protected: list[int] = []

    def arg_label(node):
        return label.get(node) if isinstance(node, fx.Node) else None

    def block(node, why):
        for a in node.all_input_nodes:
            for gid, _ in label.get(a, ()):
                g.get(gid).blockers.append(why)

    def join(name, segs, role):
        """Module `name` reads `segs`: it joins each group as consumer or passthrough, after the others."""
        members[name] = segs
        for i, (gid, per) in enumerate(segs):
            grp = g.get(gid)
            if role == "consumer":
                grp.consumers.append((name, per))
            else:
                grp.passthrough.append(name)
            if i:
                grp.before[name] = list(segs[:i])

    def new(size, producer):
        gid = g.new(size)
        g.get(gid).producers.append(producer)
        return ((gid, 1),)

    for node in traced.graph.nodes:
        meta = node.meta.get("tensor_meta")
        shape = meta.shape if isinstance(meta, TensorMetadata) else None
        if node.op == "placeholder":
            gid = g.new(shape[1])
            g.get(gid).blockers.append("model input")
            label[node] = ((gid, 1),)
        elif node.op == "call_module":
            m, src = modules[node.target], arg_label(node.args[0])
            if isinstance(m, nn.Conv2d):
                if src is None or any(per != 1 for _, per in src):
                    block(node, f"conv {node.target} after an unsupported reshape")
                    gid = g.new(m.out_channels)
                    g.get(gid).blockers.append(f"conv {node.target} after an unsupported reshape")
                    label[node] = ((gid, 1),)
                elif m.groups == 1:
                    join(node.target, src, "consumer")
                    label[node] = new(m.out_channels, node.target)
                elif m.groups == m.in_channels == m.out_channels:  # depthwise: channels pass through
                    join(node.target, src, "passthrough")
                    label[node] = src
                else:
                    block(node, f"grouped conv {node.target}")
                    gid = g.new(m.out_channels)
                    g.get(gid).blockers.append(f"grouped conv {node.target}")
                    label[node] = ((gid, 1),)
            elif isinstance(m, nn.Linear):
                if src is not None:
                    join(node.target, src, "consumer")
                label[node] = new(m.out_features, node.target)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                if src is not None:
                    join(node.target, src, "passthrough")
                label[node] = src
            elif isinstance(m, PASS_MODULES):
                label[node] = src
            elif isinstance(m, nn.Flatten):
                label[node] = _flatten(node, src)
            else:
                block(node, f"unsupported module {node.target} ({type(m).__name__})")
        elif node.op in ("call_function", "call_method"):
            fn = node.target
            srcs = [label[a] for a in node.all_input_nodes if a in label]
            if fn in ADD or fn == "add" or fn == "add_":
                if len(srcs) == 2:
                    label[node] = _merge(g, node, srcs[0], srcs[1])
                elif srcs:
                    label[node] = srcs[0]  # tensor + scalar
            elif fn in CAT or (node.op == "call_method" and fn == "cat"):
                label[node] = _concat(g, node, label)
            elif fn in PASS_FUNCTIONS or (node.op == "call_method" and fn in PASS_METHODS):
                if srcs:
                    label[node] = srcs[0]
            elif fn in (torch.flatten, "flatten") or (node.op == "call_method" and fn in ("view", "reshape")):
                label[node] = _flatten(node, srcs[0]) if srcs else None
                if label[node] is None:
                    block(node, f"unsupported reshape {node.name}")
            elif fn in (getattr, operator.getitem) or (node.op == "call_method" and fn == "size"):
                if shape is not None and srcs:  # a tensor cut out of a channel-carrying one
                    block(node, f"indexing {node.name}")
            elif srcs:
                block(node, f"unsupported operation {node.name} ({getattr(fn, '__name__', fn)})")
        elif node.op == "output":
            for a in node.all_input_nodes:
                protected += [gid for gid, _ in label.get(a, ())]
        if label.get(node, ()) is None:
            del label[node]  # no channels tracked past this node: whatever fed it was blocked
    for gid in protected:
        g.get(gid).blockers.append("model output")
    for name, segs in members.items():  # the same channels twice in one input cannot be cut consistently
        roots = [g.find(gid) for gid, _ in segs]
        for r in {r for r in roots if roots.count(r) > 1}:
            g.groups[r].blockers.append(f"{name} reads the same channels twice (concatenation)")
    for grp in g.groups.values():
        grp.before = {name: [(g.get(gid), per) for gid, per in segs] for name, segs in grp.before.items()}
    return sorted(g.groups.values(), key=lambda grp: grp.id)


def _merge(g: _Groups, node: fx.Node, a, b):
    """A residual add: the operands' channels are the same channels, segment by segment."""
    if len(a) != len(b) or any(g.get(x).size != g.get(y).size or p != q for (x, p), (y, q) in zip(a, b)):
        for gid, _ in (*a, *b):
            g.get(gid).blockers.append(f"add {node.name} of differently concatenated tensors")
        return a
    return tuple((g.merge(x, y), p) for (x, p), (y, _) in zip(a, b))


def _concat(g: _Groups, node: fx.Node, label: dict):
    """torch.cat along the channel axis: the inputs' segments side by side; any other axis blocks."""
    tensors = node.args[0] if node.args else node.kwargs.get("tensors", ())
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    ndim = len(node.meta["tensor_meta"].shape)
    parts = [label.get(t) if isinstance(t, fx.Node) else None for t in tensors]
    if dim % ndim == 1 and all(p is not None for p in parts):
        return tuple(seg for p in parts for seg in p)
    for p in parts:
        for gid, _ in p or ():
            g.get(gid).blockers.append(f"concatenation {node.name} along dim {dim}")
    return None


def _flatten(node: fx.Node, src):
    """A flatten of [B, C, H, W] from dim 1 keeps C channels, each now H·W inputs wide."""
    if src is None:
        return None
    before = node.all_input_nodes[0].meta["tensor_meta"].shape
    after = node.meta["tensor_meta"].shape
    if len(after) == 2 and after[0] == before[0] and len(before) >= 2:
        spatial = int(torch.tensor(before[2:]).prod()) if len(before) > 2 else 1
        return tuple((gid, per * spatial) for gid, per in src)
    return None
