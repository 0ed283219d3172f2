"""Which channels must be removed together: a channel dependency graph traced with torch.fx.

Every tensor's channel axis (dim 1, or the last dim after Linear) is labelled with the group
that owns its channels. A Conv2d (groups = 1) or Linear starts a new group (its output
channels); BatchNorm, activations, pooling, dropout and depthwise convs pass the group through
(their per-channel parameters join it); a residual add merges the groups of its operands;
flatten passes the group on with a spatial factor (the Linear after it consumes channel c as
inputs c·k … c·k+k−1). Anything else that touches a channel-carrying tensor makes the groups
involved unprunable, naming the operation, so an unknown model is never cut wrongly.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

PASS_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU,
                nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                nn.AdaptiveMaxPool2d, nn.Dropout, nn.Identity)
PASS_FUNCTIONS = {torch.relu, nn.functional.relu, nn.functional.relu6, nn.functional.hardswish, torch.sigmoid,
                  nn.functional.adaptive_avg_pool2d, nn.functional.max_pool2d, nn.functional.avg_pool2d,
                  nn.functional.dropout, torch.tanh}
PASS_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "detach", "float"}
ADD = {operator.add, operator.iadd, torch.add}


@dataclass
class ChannelGroup:
    """Channels that must be cut together. `size` channels; index i means the same channel in every member."""
    id: int
    size: int
    producers: list[str] = field(default_factory=list)     # Conv2d / Linear whose output rows are these channels
    passthrough: list[str] = field(default_factory=list)   # BatchNorm / depthwise conv: per-channel params
    consumers: list[tuple[str, int]] = field(default_factory=list)  # (Conv2d / Linear, inputs per channel)
    blockers: list[str] = field(default_factory=list)      # why it must stay whole

    @property
    def prunable(self) -> bool:
        return not self.blockers and bool(self.producers)


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
    label: dict[fx.Node, tuple[int, int]] = {}  # node -> (group id, inputs per channel after flatten)
    protected: list[int] = []

    def arg_label(node):
        return label.get(node) if isinstance(node, fx.Node) else None

    def block(node, why):
        for a in node.all_input_nodes:
            if a in label:
                g.get(label[a][0]).blockers.append(why)

    for node in traced.graph.nodes:
        shape = getattr(node.meta.get("tensor_meta"), "shape", None)
        if node.op == "placeholder":
            gid = g.new(shape[1])
            g.get(gid).blockers.append("model input")
            label[node] = (gid, 1)
        elif node.op == "call_module":
            m, src = modules[node.target], arg_label(node.args[0])
            if isinstance(m, nn.Conv2d):
                if src is None or src[1] != 1:
                    block(node, f"conv {node.target} after an unsupported reshape")
                    label[node] = (g.new(m.out_channels), 1)
                elif m.groups == 1:
                    g.get(src[0]).consumers.append((node.target, 1))
                    gid = g.new(m.out_channels)
                    g.get(gid).producers.append(node.target)
                    label[node] = (gid, 1)
                elif m.groups == m.in_channels == m.out_channels:  # depthwise: channels pass through
                    g.get(src[0]).passthrough.append(node.target)
                    label[node] = src
                else:
                    g.get(src[0]).blockers.append(f"grouped conv {node.target}")
                    gid = g.new(m.out_channels)
                    g.get(gid).blockers.append(f"grouped conv {node.target}")
                    label[node] = (gid, 1)
            elif isinstance(m, nn.Linear):
                if src is not None:
                    g.get(src[0]).consumers.append((node.target, src[1]))
                gid = g.new(m.out_features)
                g.get(gid).producers.append(node.target)
                label[node] = (gid, 1)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                g.get(src[0]).passthrough.append(node.target)
                label[node] = src
            elif isinstance(m, PASS_MODULES):
                label[node] = src
            elif isinstance(m, nn.Flatten):
                label[node] = _flatten(node, src)
            else:
                block(node, f"unsupported module {node.target} ({type(m).__name__})")
        elif node.op in ("call_function", "call_method"):
            fn = node.target
            srcs = [arg_label(a) for a in node.args if isinstance(a, fx.Node) and a in label]
            if fn in ADD or fn == "add" or fn == "add_":
                if len(srcs) == 2:
                    label[node] = (g.merge(srcs[0][0], srcs[1][0]), srcs[0][1])
                elif srcs:
                    label[node] = srcs[0]  # tensor + scalar
            elif fn in PASS_FUNCTIONS or (node.op == "call_method" and fn in PASS_METHODS):
                if srcs:
                    label[node] = srcs[0]
            elif fn in (torch.flatten, "flatten") or (node.op == "call_method" and fn in ("view", "reshape")):
                label[node] = _flatten(node, srcs[0]) if srcs else None
                if label[node] is None:
                    block(node, f"unsupported reshape {node.name}")
            elif fn in (getattr, operator.getitem) or (node.op == "call_method" and fn == "size"):
                pass  # shape queries carry no channels
            elif srcs:
                block(node, f"unsupported operation {node.name} ({getattr(fn, '__name__', fn)})")
        elif node.op == "output":
            for a in node.all_input_nodes:
                if a in label:
                    protected.append(label[a][0])
    for gid in protected:
        g.get(gid).blockers.append("model output")
    return sorted(g.groups.values(), key=lambda grp: grp.id)


def _flatten(node: fx.Node, src) -> tuple[int, int] | None:
    """A flatten of [B, C, H, W] from dim 1 keeps C channels, each now H·W inputs wide."""
    if src is None:
        return None
    before = node.all_input_nodes[0].meta["tensor_meta"].shape
    after = node.meta["tensor_meta"].shape
    if len(after) == 2 and after[0] == before[0] and len(before) >= 2:
        spatial = int(torch.tensor(before[2:]).prod()) if len(before) > 2 else 1
        return (src[0], src[1] * spatial)
    return None
