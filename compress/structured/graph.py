"""Which channels must be removed together: a channel dependency graph traced with torch.fx.

Every tensor that carries channels is labelled with the groups that own them and with its channel
axis, tracked explicitly: 1 for a conv's output, the last dim for a Linear's. A Conv1d/2d/3d
(groups = 1) or Linear starts a new group (its output channels) and consumes its input's channels
only along the axis it reads (a Linear over another axis blocks); BatchNorm, element-wise
activations, dropout, pooling (channel axis 1 only) and depthwise convs pass the group through
(their per-channel parameters join it); a residual add merges the groups of its operands (an
operand that is an untracked tensor blocks: it is not a scalar); flatten of a channel-major
tensor passes the group on with a spatial factor (the Linear after it consumes channel c as inputs
c·k … c·k+k−1); a permute moves the channel axis; a LayerNorm over the channel axis passes the
group through (the cut model counts removed channels as zeros in its statistics, see norm.py); a
parameter added or multiplied along the channel axis (ConvNeXt's layer scale, a position
embedding) joins the group; a concatenation along the channel axis lays several groups side by side, and
every module reading it records which groups come before (`ChannelGroup.offset`). Activations
with f(0) ≠ 0 (sigmoid, hardsigmoid) are recorded in `ChannelGroup.shifts`: a removed channel then
carried a constant, so a cut is exact only with that constant folded (the freeze stage's harvest
does; `remove_channels` refuses otherwise). Anything else that touches a channel-carrying tensor
(slicing, other reshapes, unknown ops) makes the groups involved unprunable, naming the
operation, so an unknown model is never cut wrongly.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from .norm import NormWithRemoved, norm_axis

CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# element-wise, f(0) = 0: any channel axis, and a removed (zero) channel stays zero
ELEMENTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.GELU, nn.Tanh, nn.LeakyReLU, nn.ELU, nn.Mish,
                       nn.Dropout, nn.Identity)
ELEMENTWISE_FUNCTIONS = {torch.relu, nn.functional.relu, nn.functional.relu6, nn.functional.hardswish,
                         nn.functional.silu, nn.functional.gelu, nn.functional.dropout, torch.tanh}
ELEMENTWISE_METHODS = {"relu", "relu_", "tanh", "contiguous", "clone", "detach", "float"}
# element-wise with f(0) != 0: pass through, recorded as a shift
SHIFT_MODULES = (nn.Sigmoid, nn.Hardsigmoid)
SHIFT_FUNCTIONS = {torch.sigmoid, nn.functional.sigmoid, nn.functional.hardsigmoid}
SHIFT_METHODS = {"sigmoid"}
# per channel over the spatial dims: channel axis 1 only
POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                nn.AdaptiveMaxPool2d)
POOL_FUNCTIONS = {nn.functional.adaptive_avg_pool2d, nn.functional.max_pool2d, nn.functional.avg_pool2d}
ADD = {operator.add, operator.iadd, torch.add}
MUL = {operator.mul, operator.imul, torch.mul}
CAT = {torch.cat, torch.concat, torch.concatenate}


@dataclass
class ChannelGroup:
    """Channels that must be cut together. `size` channels; index i means the same channel in every member."""
    id: int
    size: int
    producers: list[str] = field(default_factory=list)     # Conv2d / Linear whose output rows are these channels
    passthrough: list[str] = field(default_factory=list)   # BatchNorm / depthwise conv: per-channel params
    consumers: list[tuple[str, int]] = field(default_factory=list)  # (Conv2d / Linear, inputs per channel)
    parameters: list[tuple[str, int]] = field(default_factory=list)  # (parameter, its channel dim) added or multiplied
    blockers: list[str] = field(default_factory=list)      # why it must stay whole
    shifts: list[str] = field(default_factory=list)        # ops with f(0) != 0 between producers and consumers
    blocks: int = 1  # a grouped conv reads or writes these channels in this many equal blocks: cut evenly
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
        for attr in ("producers", "passthrough", "consumers", "parameters", "blockers", "shifts"):
            getattr(gb, attr).extend(getattr(ga, attr))
        gb.before.update(ga.before)
        if ga.size != gb.size:
            gb.blockers.append(f"residual add of {ga.size} and {gb.size} channels")
        gb.blocks = math.lcm(ga.blocks, gb.blocks)
        if gb.size % gb.blocks:
            gb.blockers.append(f"{gb.size} channels do not split into {gb.blocks} equal blocks")
        self.parent[rb] = ra
        return ra


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with LayerNorm-like modules kept whole (their axis is known as a module)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (nn.LayerNorm, NormWithRemoved)) or super().is_leaf_module(m, qualname)


def channel_groups(model: nn.Module, example: torch.Tensor) -> list[ChannelGroup]:
    """The channel groups of `model` for inputs shaped like `example` ([B, C, ...] or [B, F])."""
    try:
        traced = fx.GraphModule(model, _Tracer().trace(model))
    except Exception as e:  # data-dependent control flow and the like
        raise ValueError(f"cannot trace {type(model).__name__} with torch.fx: {str(e).splitlines()[0]}") from None
    try:
        ShapeProp(traced).propagate(example)
    except Exception as e:  # the model does not run on this input (too small, wrong channels, ...)
        raise ValueError(f"{type(model).__name__} does not run on an input of shape {list(example.shape)}: "
                         f"{str(e).strip().splitlines()[0][:200]}") from None
    modules = dict(traced.named_modules())
    g = _Groups()
    # node -> its channel axis as segments (group id, inputs per channel); several after a concatenation
    label: dict[fx.Node, tuple[tuple[int, int], ...]] = {}
    axis: dict[fx.Node, int] = {}  # node -> which dim of its tensor carries the channels
    # node -> why a removed (zeroed) channel is not zero in this tensor (an f(0) != 0 on the way), or None
    shifted: dict[fx.Node, str | None] = {}
    members: dict[str, tuple[tuple[int, int], ...]] = {}  # module -> the segments of its input
    protected: list[int] = []

    def ndim(node) -> int | None:
        meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        return len(meta.shape) if isinstance(meta, TensorMetadata) else None

    def block(node, why):
        for a in node.all_input_nodes:
            for gid, _ in label.get(a, ()):
                g.get(gid).blockers.append(why)

    def join(name, segs, role, src=None):
        """Module `name` reads `segs`: it joins each group as consumer or passthrough, after the others."""
        members[name] = segs
        if role == "consumer" and shifted.get(src):  # it would read a constant where a channel was removed
            for gid, _ in segs:
                g.get(gid).shifts.append(f"{name} reads {shifted[src]}")
        for i, (gid, per) in enumerate(segs):
            grp = g.get(gid)
            if role == "consumer":
                grp.consumers.append((name, per))
            else:
                grp.passthrough.append(name)
            if i:
                grp.before[name] = list(segs[:i])

    def start(node, size, producer=None, blocker=None):
        """`node` outputs a new group of `size` channels on axis 1 (a conv) or the last axis (a Linear)."""
        gid = g.new(size)
        if producer:
            g.get(gid).producers.append(producer)
        if blocker:
            g.get(gid).blockers.append(blocker)
        label[node], shifted[node] = ((gid, 1),), None
        axis[node] = 1 if not isinstance(modules.get(node.target), nn.Linear) else ndim(node) - 1

    def follow(node, src_node, shift=None, reset=False):
        """`node` carries `src_node`'s channels on the same axis (element-wise ops). `shift`: this op
        maps 0 to a non-zero value; `reset`: it maps a removed channel back to exact zero (BatchNorm
        and depthwise conv with their per-channel parameters zeroed)."""
        if src_node in label:
            label[node], axis[node] = label[src_node], axis[src_node]
            shifted[node] = None if reset else shifted.get(src_node) or shift

    for node in traced.graph.nodes:
        inputs = [a for a in node.all_input_nodes if a in label]
        first = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        on_axis1 = first in label and axis[first] == 1
        if node.op == "placeholder":
            start(node, node.meta["tensor_meta"].shape[1], blocker="model input")
        elif node.op == "call_module":
            m = modules[node.target]
            if isinstance(m, CONV):
                if first in label and (not on_axis1 or any(per != 1 for _, per in label[first])):
                    why = f"conv {node.target} after an unsupported reshape"
                    block(node, why)
                    start(node, m.out_channels, blocker=why)
                elif m.groups == 1:
                    if first in label:
                        join(node.target, label[first], "consumer", first)
                    start(node, m.out_channels, producer=node.target)
                elif m.groups == m.in_channels == m.out_channels and first in label:  # depthwise: pass through
                    join(node.target, label[first], "passthrough")
                    follow(node, first, reset=True)
                elif first in label and len(label[first]) == 1 and label[first][0][1] == 1:
                    # grouped: it reads its input in `groups` blocks and writes its output in as many;
                    # both are cut evenly per block
                    gid = label[first][0][0]
                    join(node.target, label[first], "consumer", first)
                    grp = g.get(gid)
                    grp.blocks = math.lcm(grp.blocks, m.groups)
                    start(node, m.out_channels, producer=node.target)
                    g.get(label[node][0][0]).blocks = m.groups
                else:
                    why = f"grouped conv {node.target} ({m.groups} groups) after a concatenation or reshape"
                    block(node, why)
                    start(node, m.out_channels, blocker=why)
            elif isinstance(m, nn.Linear):
                if first in label and axis[first] == ndim(first) - 1:
                    join(node.target, label[first], "consumer", first)
                elif first in label:
                    block(node, f"Linear {node.target} reads axis {ndim(first) - 1}, not the channel axis "
                                f"{axis[first]}")
                start(node, m.out_features, producer=node.target)
            elif isinstance(m, BATCHNORM):
                if on_axis1:
                    join(node.target, label[first], "passthrough")
                    follow(node, first, reset=True)
                elif first in label:
                    block(node, f"{node.target} normalises axis 1, not the channel axis {axis[first]}")
            elif norm_axis(m) is not None:
                if first in label and axis[first] == norm_axis(m) % ndim(first) and \
                        all(per == 1 for _, per in label[first]):
                    if shifted.get(first):  # the statistics would see the constant, not a zero
                        block(node, f"{node.target} normalises channels that carry {shifted[first]}")
                    else:
                        join(node.target, label[first], "passthrough")
                        follow(node, first, reset=True)
                elif first in label:
                    block(node, f"{node.target} ({type(m).__name__}) normalises axis "
                                f"{norm_axis(m) % ndim(first)}, not the channel axis {axis[first]}")
            elif isinstance(m, ELEMENTWISE_MODULES) or type(m).__name__ == "StochasticDepth":
                follow(node, first)  # stochastic depth scales whole samples: a zero channel stays zero
            elif isinstance(m, SHIFT_MODULES):
                follow(node, first, shift=f"{node.target} ({type(m).__name__}: f(0) != 0)")
            elif isinstance(m, POOL_MODULES):
                if on_axis1:
                    follow(node, first)
                elif first in label:
                    block(node, f"pooling {node.target} over the channel axis")
            elif isinstance(m, nn.Flatten):
                _flatten(node, first, label, axis, block)
            elif inputs:
                block(node, f"unsupported module {node.target} ({type(m).__name__})")
        elif node.op in ("call_function", "call_method"):
            fn, method = node.target, node.op == "call_method"
            if fn in ADD or fn in ("add", "add_") or fn in MUL or fn in ("mul", "mul_"):
                # add: a residual; mul: e.g. squeeze-and-excitation, x * scale[B, C, 1, 1]. Either way the
                # operands' channels are the same channels, so their groups merge.
                kind = "add" if fn in ADD or fn in ("add", "add_") else "mul"
                tensors = [a for a in node.all_input_nodes if ndim(a) is not None]
                if len(tensors) == 2 and all(t in label for t in tensors) and axis[tensors[0]] == axis[tensors[1]]:
                    a, b = tensors
                    label[node], axis[node] = _merge(g, node, label[a], label[b]), axis[a]
                    # a removed channel is zero in a sum if zero in both, in a product if zero in either
                    shifted[node] = (shifted.get(a) or shifted.get(b)) if kind == "add" else \
                        (shifted.get(a) and shifted.get(b))
                elif len(tensors) == 1 and tensors[0] in label:
                    follow(node, tensors[0], shift=f"{node.name} (+ a constant)" if kind == "add" else None)
                elif len(tensors) == 2 and sum(t in label for t in tensors) == 1 and \
                        any(t.op == "get_attr" for t in tensors if t not in label):
                    x = next(t for t in tensors if t in label)
                    _parameter(g, node, x, next(t for t in tensors if t not in label), kind, label, axis, shifted,
                               block)
                elif inputs:
                    block(node, f"{kind} {node.name} of a channel tensor and an untracked tensor")
            elif fn in CAT or (method and fn == "cat"):
                _concat(g, node, label, axis)
            elif fn in ELEMENTWISE_FUNCTIONS or (method and fn in ELEMENTWISE_METHODS) or \
                    getattr(fn, "__name__", "") == "stochastic_depth":  # torchvision's: whole samples scaled
                follow(node, first)
            elif fn in SHIFT_FUNCTIONS or (method and fn in SHIFT_METHODS):
                follow(node, first, shift=f"{node.name} (sigmoid: f(0) != 0)")
            elif fn in POOL_FUNCTIONS:
                if on_axis1:
                    follow(node, first)
                elif inputs:
                    block(node, f"pooling {node.name} over the channel axis")
            elif fn in (torch.permute, "permute") and first in label:
                dims = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], (list, tuple)) \
                    else node.args[1:] or node.kwargs.get("dims")
                label[node], axis[node] = label[first], [d % len(dims) for d in dims].index(axis[first])
            elif fn in (torch.flatten, "flatten") or (method and fn in ("view", "reshape")):
                _flatten(node, first, label, axis, block)
            elif fn in (torch.mean, "mean") and first in label:
                _mean(node, first, label, axis, block)
            elif fn in (getattr, operator.getitem) or (method and fn == "size"):
                if ndim(node) is not None and inputs:  # a tensor cut out of a channel-carrying one
                    block(node, f"indexing {node.name}")
            elif inputs:
                block(node, f"unsupported operation {node.name} ({getattr(fn, '__name__', fn)})")
        elif node.op == "output":
            for a in node.all_input_nodes:
                protected += [gid for gid, _ in label.get(a, ())]
        if node in label and node not in shifted:  # reshapes, concatenations, means: as their inputs
            shifted[node] = next((shifted[a] for a in node.all_input_nodes if shifted.get(a)), None)
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


def _concat(g: _Groups, node: fx.Node, label: dict, axis: dict) -> None:
    """torch.cat along the channel axis: the inputs' segments side by side; any other axis blocks."""
    tensors = node.args[0] if node.args else node.kwargs.get("tensors", ())
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    ndim = len(node.meta["tensor_meta"].shape)
    parts = [label.get(t) if isinstance(t, fx.Node) else None for t in tensors]
    axes = {axis.get(t) for t in tensors if isinstance(t, fx.Node)}
    if all(p is not None for p in parts) and len(axes) == 1 and dim % ndim == axes.pop():
        label[node] = tuple(seg for p in parts for seg in p)
        axis[node] = dim % ndim
        return
    for p in parts:
        for gid, _ in p or ():
            g.get(gid).blockers.append(f"concatenation {node.name} along dim {dim}, not the channel axis")


def _flatten(node: fx.Node, src: fx.Node | None, label: dict, axis: dict, block) -> None:
    """Flatten of a channel-major [B, C, ...] to [B, C·k]: C channels, each now k inputs wide. Any other
    reshape of a channel-carrying tensor blocks (e.g. [B, T, F] → [B, T·F] interleaves the channels)."""
    if src not in label:
        return
    before, after = src.meta["tensor_meta"].shape, node.meta["tensor_meta"].shape
    if axis[src] == 1 and len(after) == 2 and after[0] == before[0] and len(before) >= 2:
        spatial = int(torch.tensor(before[2:]).prod()) if len(before) > 2 else 1
        label[node], axis[node] = tuple((gid, per * spatial) for gid, per in label[src]), 1
    else:
        block(node, f"reshape {node.name} of {list(before)} with channels on axis {axis[src]}")


def _mean(node: fx.Node, src: fx.Node, label: dict, axis: dict, block) -> None:
    """A mean over dims that do not include the channel axis keeps the channels (e.g. global pooling)."""
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    ndim = len(src.meta["tensor_meta"].shape)
    dims = [d % ndim for d in ([dims] if isinstance(dims, int) else dims or [])]
    if not dims or axis[src] in dims:
        block(node, f"mean {node.name} over the channel axis")
        return
    label[node] = label[src]
    axis[node] = axis[src] if keep else axis[src] - sum(d < axis[src] for d in dims)


def _parameter(g: _Groups, node: fx.Node, x: fx.Node, p: fx.Node, kind: str, label: dict, axis: dict,
               shifted: dict, block) -> None:
    """x + p or x * p with p a parameter (get_attr). Broadcast along the channel axis (size 1 there, or
    too few dims to reach it) p is a constant: a product keeps removed channels zero, a sum shifts
    them. With one entry per channel (ConvNeXt's layer scale [C, 1, 1], ViT's position embedding
    [1, T, C]) p joins the groups along that dim: the masked model zeroes those entries too."""
    shape, nd = p.meta["tensor_meta"].shape, len(x.meta["tensor_meta"].shape)
    dim = axis[x] - (nd - len(shape))
    label[node], axis[node] = label[x], axis[x]
    if dim < 0 or shape[dim] == 1:
        shifted[node] = shifted.get(x) or (f"{node.name} (+ a constant)" if kind == "add" else None)
        return
    segs = label[x]
    if len(p.users) > 1:  # cutting it would change what its other uses compute
        block(node, f"{kind} {node.name}: parameter {p.target} is used elsewhere too")
        return
    if shape[dim] != sum(g.get(gid).size for gid, _ in segs) or any(per != 1 for _, per in segs):
        block(node, f"{kind} {node.name} of a channel tensor and parameter {p.target} of shape {list(shape)}")
        return
    for i, (gid, _) in enumerate(segs):
        grp = g.get(gid)
        grp.parameters.append((p.target, dim))
        if i:
            grp.before[p.target] = list(segs[:i])
    # a product with a zeroed entry is zero whatever x carried; a sum keeps what x carried
    shifted[node] = shifted.get(x) if kind == "add" else None
