"""The built-in channel rules: how channels flow through the ops torchvision and timm models use.

Each function is one op kind's rule (see rules.py for the verbs). A conv (groups = 1) or Linear
starts a new group and consumes its input's channels along the axis it reads; BatchNorm,
InstanceNorm, PReLU and depthwise convs pass the group through with their per-channel
parameters; element-wise activations, dropout and pooling or upsampling (channel axis 1) pass it on; a residual
add or a product merges its operands' groups; flatten of a channel-major tensor passes the group
on with a spatial factor; permute moves the channel axis; a LayerNorm over the channel axis passes
it through (removed channels count as zeros in its statistics, see norm.py); a parameter added or
multiplied along the channel axis joins the group; a concatenation along the channel axis lays
groups side by side. Activations with f(0) != 0 are recorded as shifts (a removed channel then
carries a constant, folded by the harvest).
"""
from __future__ import annotations

import itertools
import math
import operator

import torch
from torch import fx, nn

from .attention import HeadsAttention
from .norm import GRN, GroupNormWithRemoved, NormWithRemoved, ResponseNormWithRemoved, norm_axis
from .rules import (elementwise_rule, function_rule, module_rule, register_function_rule, register_module_rule,
                    register_module_rule_by_name)
from .std_conv import TIMM_STD_CONVS, StandardizedConv2d
from .weights import RECURRENT, TRANSPOSED

CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
INSTANCENORM = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
                nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
                nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)  # each channel on its own
PAD_MODULES = tuple(getattr(nn, f"{kind}Pad{d}d") for kind in ("Constant", "Zero", "Reflection", "Replication", "Circular")
                    for d in (1, 2, 3) if hasattr(nn, f"{kind}Pad{d}d"))
F = nn.functional


SHAPE_READS = {("call_method", "size"), ("call_method", "dim"), ("call_function", getattr)}
# ops whose output shape depends on the values of their input (how many are nonzero, unique, selected)
_VALUE_SHAPED = {torch.nonzero, torch.masked_select, torch.unique, torch.unique_consecutive, torch.argwhere,
                 torch.repeat_interleave, torch.bincount, torch.histc, F.one_hot, "nonzero", "masked_select",
                 "unique", "unique_consecutive", "argwhere", "repeat_interleave", "bincount", "histc"}
# new tensors whose shape is what their arguments say: torch.arange(n), x.new_zeros(n, m)
FACTORIES = {torch.arange, torch.zeros, torch.ones, torch.empty, torch.full, torch.rand, torch.randn, torch.randint,
             torch.linspace, torch.eye, "new_zeros", "new_ones", "new_empty", "new_full"}
# ops with sizes among their arguments (a tensor's value there gives a value-dependent shape)
_SIZED_BY_ARGUMENTS = FACTORIES | {torch.narrow, torch.topk, torch.tensor_split, "narrow", "topk", "tensor_split",
                                   "expand", "repeat", "view", "reshape", "tile", "unflatten"}


def shape_only(node: fx.Node, memo: dict | None = None) -> bool:
    """Whether `node` is computed from tensor shapes alone: every path back to a tensor goes through
    a shape read (`.shape`, `.size()`, `.dim()`) and only arithmetic and comparisons follow it, and
    no shape read reads a tensor whose shape depends on values (`x[x > 0].shape`)."""
    memo = {} if memo is None else memo
    todo, seen = [node], set()
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if (n.op, n.target) in SHAPE_READS:
            if n.target is getattr and n.args[1] not in ("shape", "ndim"):
                return False
            rank_only = n.target == "dim" or n.target is getattr and n.args[1] == "ndim"
            if not rank_only and isinstance(n.args[0], fx.Node) and value_shaped(n.args[0], memo):
                return False
            continue
        arithmetic = n.op == "call_function" and getattr(n.target, "__module__", None) in ("_operator", "math") \
            or n.target in (min, max, abs, int, len)
        if not arithmetic:
            return False
        todo.extend(n.all_input_nodes)
    return True


def value_shaped(node: fx.Node, memo: dict) -> bool:
    """Whether the shape of `node`'s tensor can depend on tensor values: somewhere upstream it comes from
    nonzero / masked_select / unique / one-argument where, or indexing with a computed tensor."""
    stack = [node]
    while stack:
        n = stack[-1]
        if n in memo:
            stack.pop()
            continue
        pending = [a for a in n.all_input_nodes if a not in memo]
        if pending:
            stack.extend(pending)
            continue
        stack.pop()
        memo[n] = any(memo[a] for a in n.all_input_nodes) or _makes_value_shape(n, memo)
    return memo[node]


def _makes_value_shape(n: fx.Node, memo: dict) -> bool:
    if n.op not in ("call_function", "call_method"):
        return False
    if n.target in _VALUE_SHAPED:
        return True
    if n.target in (torch.where, "where") and len(n.args) + len(n.kwargs) == 1:
        return True
    if n.target in _SIZED_BY_ARGUMENTS:  # a size given by a tensor's value (torch.arange(t), x.narrow(1, 0, t))
        data = None if n.op == "call_function" and n.target in FACTORIES else n.args[0]
        return any(a is not data and a.op != "get_attr" and not shape_only(a, memo) for a in n.all_input_nodes)
    if n.target is operator.getitem and isinstance(n.args[0], fx.Node):
        nodes: list[fx.Node] = []
        fx.node.map_arg(n.args[1], nodes.append)
        return any(i.op != "get_attr" and not shape_only(i, memo) for i in nodes)
    return False


def argument(node: fx.Node, i: int, name: str, default=None):
    """The call's argument given at position `i` or as keyword `name`, else `default`."""
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


# --- producers ---------------------------------------------------------------------------------

@module_rule(*CONV)
def conv(w, node, m, name: str | None = None) -> None:
    name = name or node.target
    x = w.first(node)
    on_axis1 = x in w.label and w.axis[x] == 1
    if x in w.label and isinstance(m, nn.Conv1d) and w.ndim(x) == 3 and w.axis[x] == 2:
        _conv_along_channels(w, node, x, m, name)
    elif x in w.label and (not on_axis1 or any(per != 1 for _, per in w.label[x])):
        why = f"conv {name} after an unsupported reshape"
        w.block(node, why)
        w.start(node, m.out_channels, blocker=why)
    elif m.groups == 1:
        if x in w.label:
            w.join(name, w.label[x], "consumer", x)
        w.start(node, m.out_channels, producer=name)
    elif m.groups == m.in_channels == m.out_channels and x in w.label:  # depthwise: pass through
        w.join(name, w.label[x], "passthrough")
        w.follow(node, x, reset=True)
    elif x in w.label and len(w.label[x]) == 1:
        # grouped: it reads its input in `groups` blocks and writes its output in as many; both are cut
        # evenly per block
        gid = w.label[x][0][0]
        w.join(name, w.label[x], "consumer", x)
        grp = w.g.get(gid)
        grp.blocks = math.lcm(grp.blocks, m.groups)
        if grp.size % grp.blocks:
            grp.blockers.append(f"{grp.size} channels do not split into {grp.blocks} equal blocks")
        w.start(node, m.out_channels, producer=name)
        w.g.get(w.label[node][0][0]).blocks = m.groups
    else:
        why = f"grouped conv {name} ({m.groups} groups) after a concatenation or reshape"
        w.block(node, why)
        w.start(node, m.out_channels, blocker=why)


def _conv_along_channels(w, node: fx.Node, x: fx.Node, m: nn.Conv1d, name: str) -> None:
    """A Conv1d sliding along the channels ([B, k, C]: ECA's gate, `conv(x.mean((2, 3)).view(B, 1, -1))`).
    With zero padding that keeps the length, stride 1, and removed channels exact zeros in its input, a
    channel's neighbours past the ends of a kept run are zeros in both models; inside the run, a removed
    neighbour would be zero in the masked model and another channel once cut. So the channels kept must
    be one contiguous run (group.along names the conv), and its output at a removed channel mixes kept
    ones: it is marked shifted (a product with the channels' own zeros, as ECA's `x * gate`, clears it;
    a second conv along them reads it shifted and blocks)."""
    k, d = m.kernel_size[0], m.dilation[0]
    same = m.padding == "same" or (not isinstance(m.padding, str) and 2 * m.padding[0] == d * (k - 1))
    segs = w.label[x]
    why = None
    if m.stride[0] != 1 or m.padding_mode != "zeros" or not same or len(segs) != 1 or segs[0][1] != 1:
        why = f"conv {name} along the channels: not a zero-padded stride-1 conv keeping the length of one group"
    elif w.shifted.get(x):
        why = f"conv {name} along the channels reads removed channels that are not zero ({w.shifted[x]})"
    if why:
        w.block(node, why)
        w.start(node, m.out_channels, blocker=why)
        return
    w.g.get(segs[0][0]).along.append(name)
    w.follow(node, x)
    w.shifted[node] = f"{name} (a conv along the channels)"


# weight-standardised convs (timm's, and ours once cut: std_conv.py) are convs for channel flow; kept
# whole by the tracer, whose look inside would meet a conv with a computed weight
register_module_rule(StandardizedConv2d, conv)
for _name in TIMM_STD_CONVS:
    register_module_rule_by_name(_name, conv)


@module_rule(*TRANSPOSED)
def conv_transpose(w, node, m) -> None:
    """A transposed conv reads channels and writes new ones as a conv does; its weight holds them the other
    way round ([in, out / groups, k…], see weights.py). A depthwise one (groups = in = out) passes its
    channels through. A grouped one reads its input in `groups` blocks, cut evenly (its weight's rows);
    its output channels, a column per block of rows, stay whole."""
    name, x = node.target, w.first(node)
    if x in w.label and (w.axis[x] != 1 or any(per != 1 for _, per in w.label[x])):
        why = f"{type(m).__name__} {name} after an unsupported reshape"
        w.block(node, why)
        w.start(node, m.out_channels, blocker=why)
    elif m.groups == 1:
        if x in w.label:
            w.join(name, w.label[x], "consumer", x)
        w.start(node, m.out_channels, producer=name)
    elif m.groups == m.in_channels == m.out_channels and x in w.label:
        w.join(name, w.label[x], "passthrough")
        w.follow(node, x, reset=True)
    else:
        if x in w.label and len(w.label[x]) == 1:
            w.join(name, w.label[x], "consumer", x)
            grp = w.g.get(w.label[x][0][0])
            grp.blocks = math.lcm(grp.blocks, m.groups)
            if grp.size % grp.blocks:
                grp.blockers.append(f"{grp.size} channels do not split into {grp.blocks} equal blocks")
        elif x in w.label:
            w.block(node, f"{type(m).__name__} {name} ({m.groups} groups) after a concatenation")
        w.start(node, m.out_channels, blocker=f"{type(m).__name__} {name}: the output channels of a grouped "
                                              f"transposed conv ({m.groups} groups; not cut yet)")


@module_rule(nn.Linear)
def linear(w, node, m, name: str | None = None) -> None:
    name = name or node.target
    x = w.first(node)
    if x in w.label and w.axis[x] == w.ndim(x) - 1:
        w.join(name, w.label[x], "consumer", x)
    elif x in w.label:
        w.block(node, f"Linear {name} reads axis {w.ndim(x) - 1}, not the channel axis {w.axis[x]}")
    w.start(node, m.out_features, producer=name, axis=w.ndim(node) - 1)


@module_rule(*RECURRENT)
def recurrent(w, node, m) -> None:
    """nn.RNN / LSTM / GRU: reads features on its input's last axis (columns of weight_ih_l0, both
    directions). It writes hidden_size channels per direction (see recurrent.py; a bidirectional one
    [forward | backward], cut evenly; a stacked one cuts unit u in every layer) to its output (element 0
    of its result) and, one direction only, to its final state h_n (element 1, [layers, batch, hidden];
    LSTM: (h_n, c_n)), channels last in both. A projected LSTM writes proj_size channels there and to
    h_n, and its cells (a second group, `cells`) to c_n only. Calls given an initial state (which has
    their width) and a bidirectional layer's final state (directions stacked on its first axis) keep the
    units whole."""
    name, x = node.target, w.first(node)
    kind = type(m).__name__
    if x in w.label:
        if w.axis[x] != w.ndim(x) - 1:
            w.block(node, f"{kind} {name} reads axis {w.ndim(x) - 1}, not the channel axis {w.axis[x]}")
        else:
            w.join(name, w.label[x], "consumer", x)
    state = argument(node, 1, "hx")
    why = None
    if state is not None:
        why = f"{kind} {name}: called with an initial state, whose width is the hidden size"
    elif not _only_indexed(node):
        why = f"{kind} {name}: its result is used as a whole tuple"
    if state is not None:  # whatever produced the state keeps its width too
        states: list = []
        fx.node.map_arg(state, states.append)
        for gid in {gid for n in states for gid in _groups_in(w, n)}:
            w.g.get(gid).blockers.append(f"{kind} {name}: its initial state (the hidden size) reads these channels")
    out = node.meta.get("tensor_meta")
    nd = len(out[0].shape) if isinstance(out, (tuple, list)) and hasattr(out[0], "shape") else 3
    directions = 2 if m.bidirectional else 1

    def written(width: int, cells: bool = False):
        """A new group of `width` channels per direction, and how the final state carries it."""
        gid = w.g.new(width * directions)
        grp = w.g.get(gid)
        grp.producers, grp.blocks, grp.cells = ([] if why else [name]), directions, cells
        if why:
            grp.blockers.append(why)
        seg = (((gid, 1),), nd - 1)
        if directions == 2:
            seg = {"segments": seg[0], "why": f"{kind} {name}: the final state of a bidirectional layer is used"}
        return gid, seg

    gid, h_n = written(getattr(m, "proj_size", 0) or m.hidden_size)  # what its output and h_n carry
    w.produced[name] = ((gid, 1),)
    w.label[node], w.shifted[node], w.axis[node] = ((gid, 1),), None, nd - 1
    c_n = written(m.hidden_size, cells=True)[1] if getattr(m, "proj_size", 0) else h_n
    w.parts[node] = [(w.label[node], nd - 1), [h_n, c_n] if isinstance(m, nn.LSTM) else h_n]


def _groups_in(w, node: fx.Node) -> list[int]:
    """The groups a node carries: its label, or every element of a tuple of channel tensors."""
    out = [gid for gid, _ in w.label.get(node, ())]

    def walk(part):
        if isinstance(part, list):
            for p in part:
                walk(p)
        elif isinstance(part, dict):
            out.extend(gid for gid, _ in part["segments"])
        elif part is not None:
            out.extend(gid for gid, _ in part[0])
    walk(w.parts.get(node))
    return out


def _only_indexed(node: fx.Node) -> bool:
    """Every use of `node` (a tuple) takes one element by a constant index."""
    return all(u.op == "call_function" and u.target is operator.getitem and isinstance(u.args[1], int)
               for u in node.users)


# attention with a fused qkv Linear (rows [3, heads, head_dim]) and an output projection `proj`; the
# first two reshape the heads' output to `attn_dim` only in newer timm (older ones to the input's width,
# which a cut breaks): without an int attn_dim they block. Swin's reshapes to -1.
QKV_ATTENTION = {"timm.layers.attention.Attention": True, "timm.models.vision_transformer.Attention": True,
                 "timm.models.swin_transformer.WindowAttention": False,
                 "compress.structured.window_attention.WindowHeadsAttention": False,  # torchvision's Swin
                 "compress.structured.window_attention.WindowHeadsAttentionV2": False,
                 "compress.structured.window_attention.PartitionHeadsAttention": False,  # MaxViT's
                 "compress.structured.metaformer_attention.MetaFormerHeadsAttention": True,  # timm's CAFormer
                 "compress.structured.pvt_attention.LocalHeadsAttention": True,  # timm's Twins (windows)
                 "compress.structured.channel_attention.ChannelHeadsAttention": True,  # timm's DaViT
                 "compress.structured.channel_attention.XcaHeadsAttention": True}  # timm's XCiT
# the attributes holding (fused qkv Linear, output Linear, head count) where they are not qkv / proj / num_heads
QKV_NAMES = {"compress.structured.window_attention.PartitionHeadsAttention": ("to_qkv", "merge", "n_heads")}


def qkv_attention(w, node, m) -> None:
    """timm's Attention and Swin's WindowAttention: `qkv` reads the tokens' channels (last axis),
    `proj` writes new ones; in between, whole heads form a group of their own. A head is head_dim
    rows in each of q, k and v and head_dim input columns of proj; a zeroed head attends uniformly to
    zero values, so it outputs exact zeros and cutting it is exact (head_dim, and with it the
    attention scale, stays). num_heads (and attn_dim) count the heads kept; Swin's relative position
    bias table loses the heads' columns."""
    name, x = node.target, w.first(node)
    names = QKV_NAMES.get(_qualname(m), ("qkv", "proj", "num_heads"))
    qkv, proj, heads = (getattr(m, a, None) for a in names)
    ok = isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear) and isinstance(heads, int) and heads > 0 \
        and qkv.out_features % (3 * heads) == 0 and proj.in_features == qkv.out_features // 3 \
        and all(isinstance(getattr(m, a, None), (type(None), nn.Identity)) for a in ("norm", "gate")) \
        and (isinstance(getattr(m, "attn_dim", None), int) or not QKV_ATTENTION.get(_qualname(m), False))
    if not ok or (x in w.label and w.axis[x] != w.ndim(x) - 1):
        why = f"{name} ({type(m).__name__}): an attention layout this rule does not know"
        w.block(node, why)
        w.start(node, proj.out_features if isinstance(proj, nn.Linear) else 1, blocker=why, axis=w.ndim(node) - 1)
        return
    grp = _heads_group(w, name, names[0], names[1], x, heads, qkv.out_features // (3 * heads), names[2])
    dim = qkv.out_features // (3 * heads)
    if isinstance(getattr(m, "attn_dim", None), int):
        grp.counters.append((name, "attn_dim", dim))
    table = getattr(m, "relative_position_bias_table", None)
    if isinstance(table, nn.Parameter) and table.dim() == 2 and table.shape[1] == heads:
        grp.parameters.append((f"{name}.relative_position_bias_table", 1))
    temperature = getattr(m, "temperature", None)  # XCiT: one per head
    if isinstance(temperature, nn.Parameter) and temperature.dim() >= 1 and temperature.shape[0] == heads:
        grp.parameters.append((f"{name}.temperature", 0))
    scale, mlp = getattr(m, "logit_scale", None), getattr(m, "cpb_mlp", None)  # Swin V2: one of each per head
    if isinstance(scale, nn.Parameter) and scale.dim() >= 1 and scale.shape[0] == heads:
        grp.parameters.append((f"{name}.logit_scale", 0))
    if isinstance(mlp, nn.Sequential) and isinstance(mlp[-1], nn.Linear) and mlp[-1].out_features == heads:
        grp.parameters.append((f"{name}.cpb_mlp.{len(mlp) - 1}.weight", 0))
    w.start(node, proj.out_features, producer=f"{name}.{names[1]}", axis=w.ndim(node) - 1)


for _name in QKV_ATTENTION:
    register_module_rule_by_name(_name, qkv_attention)


def _heads_group(w, name: str, qkv: str, proj: str, x: fx.Node, heads: int, dim: int, counter: str = "num_heads"):
    """The heads of attention `name` as a group of their own: `name.qkv` (rows [3, heads, dim]) reads
    x's channels and produces the heads, `name.proj` reads dim inputs per head; `counter` counts them."""
    if x in w.label:
        w.join(f"{name}.{qkv}", w.label[x], "consumer", x)
    grp = w.g.get(w.g.new(heads))
    grp.producers.append(f"{name}.{qkv}")
    grp.layout[f"{name}.{qkv}"] = (dim, 3)
    w.join(f"{name}.{proj}", ((grp.id, dim),), "consumer")
    grp.counters.append((name, counter, 1))
    return grp


@module_rule(HeadsAttention)
def heads_attention(w, node, m) -> None:
    """nn.MultiheadAttention (made a HeadsAttention by prepare_attention) used as self-attention
    (query, key and value one tensor, channels last): heads cut as timm's Attention's, `in_proj` reading
    the channels and `out_proj` writing new ones as element 0 of its (output, weights) result. Masks
    (whose shape may count heads) and attention weights that are used (an average over the heads
    changes when heads go) keep it whole."""
    name = node.target
    names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask")
    given = {**dict(zip(names, node.args)), **node.kwargs}
    x = given.get("query")
    weights_used = any(u.target is not operator.getitem or u.args[1] != 0 and u.users for u in node.users)
    ok = isinstance(x, fx.Node) and given.get("key") is x and given.get("value") is x and \
        given.get("key_padding_mask") is None and given.get("attn_mask") is None and not weights_used and \
        (x not in w.label or w.axis[x] == w.ndim(x) - 1)
    nd = w.ndim(x) if isinstance(x, fx.Node) else None
    if not ok or nd is None:
        why = f"{name} (MultiheadAttention): not self-attention of one tensor, with masks, or its weights used"
        w.block(node, why)
        w.start(node, m.out_proj.out_features, blocker=why, axis=(nd or 1) - 1)
    else:
        _heads_group(w, name, "in_proj", "out_proj", x, m.num_heads, m.head_dim)
        w.start(node, m.out_proj.out_features, producer=f"{name}.out_proj", axis=nd - 1)
    w.parts[node] = [(w.label[node], w.axis[node]), None]  # (output, attention weights)


def _qualname(m: nn.Module) -> str:
    return f"{type(m).__module__}.{type(m).__qualname__}"


@function_rule(F.linear, F.conv1d, F.conv2d, F.conv3d)
def functional_layer(w, node, m) -> None:
    """F.linear / F.conv2d(x, self.weight, self.bias, ...) inside a Linear or conv subclass with its own
    forward (timm's Linear, Conv2dSame): the module owning those tensors, as if called itself. A weight
    that is computed (transposed, standardised) or belongs to no such module blocks."""
    kind = nn.Linear if node.target is F.linear else CONV
    args = [*node.args[1:3], node.kwargs.get("weight"), node.kwargs.get("bias")]
    owners = {a.target.rpartition(".")[0] for a in args if isinstance(a, fx.Node) and a.op == "get_attr"}
    weight = argument(node, 1, "weight")
    owner = next(iter(owners)) if len(owners) == 1 else None
    ok = owner is not None and isinstance(weight, fx.Node) and weight.op == "get_attr" and \
        weight.target == f"{owner}.weight" and isinstance(w.modules.get(owner), kind)
    if not ok:
        w.block(node, f"{node.name}: a functional {getattr(node.target, '__name__', node.target)} whose weight "
                      f"is not a layer's own")
    elif kind is nn.Linear:
        linear(w, node, w.modules[owner], name=owner)
    else:
        conv(w, node, w.modules[owner], name=owner)


# --- per-channel modules (pass through, their parameters cut with the channels) ------------------

def _per_channel(w, node, name: str, what: str) -> None:
    """Module `name` normalises or scales each channel of axis 1 on its own (BatchNorm, InstanceNorm,
    PReLU): it joins the groups; after a flatten it has one entry per flattened input."""
    x = w.first(node)
    if x in w.label and w.axis[x] == 1:
        w.join(name, w.label[x], "passthrough")
        w.follow(node, x, reset=True)
    elif x in w.label:
        w.block(node, f"{name} ({what}) works on axis 1, not the channel axis {w.axis[x]}")


@module_rule(*BATCHNORM)
def batchnorm(w, node, m) -> None:
    _per_channel(w, node, node.target, type(m).__name__)


@module_rule(*INSTANCENORM)
def instancenorm(w, node, m) -> None:
    """Statistics per sample and channel: a zero channel normalises to zero, and the others do not see it."""
    x = w.first(node)
    if x in w.label and any(per != 1 for _, per in w.label[x]):
        w.block(node, f"{node.target} (InstanceNorm) after a flatten")
    else:
        _per_channel(w, node, node.target, "InstanceNorm")


@module_rule(nn.PReLU)
def prelu(w, node, m) -> None:
    if m.num_parameters == 1:  # one shared slope: element-wise
        w.follow(node, w.first(node))
    else:
        _per_channel(w, node, node.target, "PReLU")


@module_rule(ResponseNormWithRemoved)
def response_norm(w, node, m) -> None:
    """ConvNeXt-V2's global response norm: per-channel γ and β on its channel axis; the mean over
    channels keeps counting removed ones (norm.py), so a zero channel with γ = β = 0 stays zero."""
    x = w.first(node)
    if x not in w.label:
        return
    if w.shifted.get(x):  # a removed channel's constant would stay, and count in the mean
        w.block(node, f"{node.target} (global response norm) reads channels that carry {w.shifted[x]}")
    elif w.axis[x] == m.channel_dim % w.ndim(x) and all(per == 1 for _, per in w.label[x]):
        w.join(node.target, w.label[x], "passthrough")
        w.follow(node, x, reset=True)
    else:
        w.block(node, f"{node.target} (global response norm) works on axis {m.channel_dim}, "
                      f"not the channel axis {w.axis[x]}")


register_module_rule_by_name(GRN, response_norm)


@function_rule(F.batch_norm, F.instance_norm)
def functional_norm(w, node, m) -> None:
    """F.batch_norm(x, running_mean, running_var, weight, bias, ...) inside a module (timm's
    BatchNormAct2d and relatives): the module owning those tensors is a per-channel member."""
    owners = {a.target.rpartition(".")[0] for a in node.all_input_nodes if a.op == "get_attr"}
    owner = next(iter(owners)) if len(owners) == 1 else None
    if owner is not None and isinstance(w.modules.get(owner), (*BATCHNORM, *INSTANCENORM)):
        _per_channel(w, node, owner, type(w.modules[owner]).__name__)
    else:
        w.block(node, f"{node.name}: a functional norm whose parameters belong to no single norm module")


@module_rule(nn.GroupNorm, GroupNormWithRemoved)
def groupnorm(w, node, m, name: str | None = None) -> None:
    """Statistics per sample over groups of channels: a removed channel stays in them as a zero (see
    GroupNormWithRemoved), so any channel can go, as long as it is an exact zero there."""
    name, x = name or node.target, w.first(node)
    if x not in w.label:
        return
    if w.axis[x] != 1 or any(per != 1 for _, per in w.label[x]):
        w.block(node, f"{name} (GroupNorm) normalises axis 1, not the channel axis {w.axis[x]}")
    elif m.weight is None:  # with no γ = β = 0 to silence it, a zero channel comes out as −mean/std
        w.block(node, f"{name} (GroupNorm without affine) turns a removed channel into −mean/std")
    elif w.shifted.get(x):  # the statistics would see the constant, not a zero
        w.block(node, f"{name} normalises channels that carry {w.shifted[x]}")
    else:
        w.join(name, w.label[x], "passthrough")
        w.follow(node, x, reset=True)


@function_rule(F.group_norm)
def functional_group_norm(w, node, m) -> None:
    """F.group_norm(x, groups, self.weight, self.bias) inside a GroupNorm subclass with its own forward
    (timm's GroupNorm1 in PoolFormer): that GroupNorm, as if called itself."""
    owners = {a.target.rpartition(".")[0] for a in node.all_input_nodes if a.op == "get_attr"}
    owner = next(iter(owners)) if len(owners) == 1 else None
    groups = argument(node, 1, "num_groups")
    gn = w.modules.get(owner) if owner is not None else None
    stack = node.meta.get("nn_module_stack") or {}
    inside_owner = next(reversed(stack), None) == owner  # called in its own forward, not by a parent
    # its forward is F.group_norm with its own parameters (and then, for timm's norm-act layers, an
    # activation the trace records as a node of its own)
    plain = type(gn).forward is nn.GroupNorm.forward or f"{type(gn).__module__}.{type(gn).__qualname__}" in (
        "timm.layers.norm.GroupNorm", "timm.layers.norm.GroupNorm1", "timm.layers.norm_act.GroupNormAct",
        "timm.layers.norm_act.GroupNorm1Act")
    if isinstance(gn, nn.GroupNorm) and groups == gn.num_groups and inside_owner and plain:
        groupnorm(w, node, gn, name=owner)
    elif w.first(node) in w.label:
        w.block(node, f"{node.name}: a functional group norm whose parameters belong to no GroupNorm of "
                      f"{groups} groups")


@function_rule(torch.addcmul)
def addcmul(w, node, m) -> None:
    """torch.addcmul(β, α, x) = β + α·x with α, β parameters of one entry per channel (timm's Affine in
    ResMLP): a per-channel scale and shift, cut with the channels like BatchNorm's γ and β."""
    args = list(node.args[:3])
    if len(args) != 3 or node.kwargs.get("value", 1) != 1 or not all(isinstance(a, fx.Node) for a in args):
        if any(a in w.label for a in node.all_input_nodes):
            w.block(node, f"addcmul {node.name} of a form this rule does not know")
        return
    beta, alpha, x = args
    if x not in w.label or beta in w.label or alpha in w.label or \
            _parameter_of(alpha) is None or _parameter_of(beta) is None:
        if any(a in w.label for a in node.all_input_nodes):
            w.block(node, f"addcmul {node.name} of a channel tensor and an untracked tensor")
        return
    _parameter(w, node, x, alpha, "mul")
    if node in w.label:  # not blocked: β joins as a per-channel shift of the scaled channels
        _parameter(w, node, node, beta, "add")


@module_rule(nn.LayerNorm, NormWithRemoved)
def layernorm(w, node, m) -> None:
    x = w.first(node)
    axis = norm_axis(m)
    if x not in w.label:
        return
    if axis is None:
        w.block(node, f"unsupported module {node.target} ({type(m).__name__}: not a LayerNorm over one axis)")
    elif w.axis[x] == axis % w.ndim(x) and all(per == 1 for _, per in w.label[x]):
        if w.shifted.get(x):  # the statistics would see the constant, not a zero
            w.block(node, f"{node.target} normalises channels that carry {w.shifted[x]}")
        else:
            w.join(node.target, w.label[x], "passthrough")
            w.follow(node, x, reset=True)
    else:
        w.block(node, f"{node.target} ({type(m).__name__}) normalises axis {axis % w.ndim(x)}, "
                      f"not the channel axis {w.axis[x]}")


# --- element-wise --------------------------------------------------------------------------------

for _cls in (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.GELU, nn.Tanh, nn.LeakyReLU, nn.ELU, nn.Mish,
             nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Identity, nn.Hardtanh, nn.Softsign,
             nn.Tanhshrink, nn.Hardshrink, nn.Softshrink, nn.CELU, nn.SELU):
    register_module_rule(_cls, elementwise_rule)
for _fn in (torch.relu, F.relu, F.relu6, F.hardswish, F.silu, F.gelu, F.dropout, torch.tanh, F.leaky_relu, F.elu,
            F.mish, F.hardtanh, F.dropout2d, torch.nn.functional.relu_, "relu", "relu_", "tanh", "contiguous",
            "clone", "detach", "float", torch.square, "square"):
    register_function_rule(_fn, elementwise_rule)


def stochastic_depth(w, node, m) -> None:
    """torchvision's stochastic depth scales whole samples: a zero channel stays zero."""
    w.follow(node, w.first(node))


try:
    import torchvision.ops

    register_module_rule(torchvision.ops.StochasticDepth, stochastic_depth)
    register_function_rule(torchvision.ops.stochastic_depth, stochastic_depth)
except ImportError:  # torchvision is optional here
    pass


@module_rule(nn.Sigmoid, nn.Hardsigmoid)
def shift_module(w, node, m) -> None:
    w.follow(node, w.first(node), shift=f"{node.target} ({type(m).__name__}: f(0) != 0)")


@function_rule(torch.pow, operator.pow, "pow")
def power(w, node, m) -> None:
    """x ** e with a number e > 0 (timm's StarReLU squares): 0 ** e = 0, so a removed channel stays zero."""
    x, e = (node.args + (None, None))[:2]
    e = node.kwargs.get("exponent", e)
    if not isinstance(x, fx.Node) or x not in w.label:
        if any(a in w.label for a in node.all_input_nodes):
            w.block(node, f"pow {node.name} with a channel tensor as the exponent")
        return
    if isinstance(e, (int, float)) and not isinstance(e, bool) and e > 0:
        w.follow(node, x)
    else:
        w.block(node, f"pow {node.name} with exponent {e!r}: 0 ** e is not 0")


@function_rule(torch.sigmoid, F.sigmoid, F.hardsigmoid, "sigmoid")
def shift_function(w, node, m) -> None:
    w.follow(node, w.first(node), shift=f"{node.name} (sigmoid: f(0) != 0)")


@module_rule(*POOL_MODULES)
def pool(w, node, m) -> None:
    x = w.first(node)
    if x in w.label and w.axis[x] == 1:
        w.follow(node, x)
    elif x in w.label:
        w.block(node, f"pooling {node.name} over the channel axis")


for _fn in (F.adaptive_avg_pool2d, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_max_pool2d,
            F.avg_pool1d, F.max_pool1d, F.interpolate, F.upsample, F.upsample_nearest, F.upsample_bilinear):
    register_function_rule(_fn, pool)


@function_rule(F.pad)
def pad(w, node, m) -> None:
    """F.pad over the spatial dims (timm's same-padding convs): each channel padded on its own. A pad
    value other than 0 (constant mode) is what a removed channel then carries."""
    widths = argument(node, 1, "pad", ())
    mode = argument(node, 2, "mode", "constant")
    value = argument(node, 3, "value", None)
    _pad(w, node, widths, value if mode == "constant" else None)


@module_rule(*PAD_MODULES)
def pad_module(w, node, m) -> None:
    """nn.ZeroPad2d, ConstantPad2d, ReflectionPad2d, …: as F.pad with the module's widths and value."""
    _pad(w, node, tuple(m.padding), getattr(m, "value", None))


def _pad(w, node, widths, value) -> None:
    x = w.first(node)
    if x not in w.label:
        return
    nd = w.ndim(x)
    if not isinstance(widths, (tuple, list)) or nd is None or \
            any(not (isinstance(v, int) or isinstance(v, fx.Node) and shape_only(v)) for v in widths):
        w.block(node, f"pad {node.name} with widths computed at run time")
    elif nd - 1 - w.axis[x] < len(widths) // 2 and \
            list(widths[2 * (nd - 1 - w.axis[x]):2 * (nd - w.axis[x])]) != [0, 0]:
        w.block(node, f"pad {node.name} of the channel axis {w.axis[x]}")
    else:
        w.follow(node, x, shift=f"{node.name} (padded with {value})" if value not in (None, 0, 0.0) else None)


# --- reshapes ------------------------------------------------------------------------------------

@module_rule(nn.Flatten)
def flatten_module(w, node, m) -> None:
    flatten(w, node, m)


@function_rule(torch.flatten, "flatten", "view", "reshape")
def flatten(w, node, m) -> None:
    """A reshape that keeps the channel axis whole (the dims before it and after it regrouped among
    themselves, e.g. ViT's [B, C, H, W] → [B, C, H·W] or Swin's windows [B, H, W, C] → [B, h, 7, w, 7, C])
    carries the channels on; flatten of a channel-major [B, C, ...] to [B, C·k]: C channels, each now k
    inputs wide. Any other reshape of a channel-carrying tensor blocks (it would interleave them)."""
    src = w.first(node)
    other = _sized_by_another(w, node, src)
    if other is not None and src in w.label and len(w.label[src]) == len(w.label[other]) == 1 and \
            w.label[src][0][1] == w.label[other][0][1] == 1 and \
            w.g.get(w.label[src][0][0]).size == w.g.get(w.label[other][0][0]).size:
        # Swin's `attn_windows.view(-1, ws, ws, C)` with C of its input: as wide as it by construction,
        # so cut as one (as the residual add after it does anyway)
        _merge(w, node, w.label[src], w.label[other])
    elif other is not None:
        w.block(node, f"reshape {node.name} to the channel count of {other.name}, which is not its own (a cut "
                      f"would change one and not the other)", also=(other,))
        return
    if src not in w.label:
        return
    before, after = tuple(src.meta["tensor_meta"].shape), tuple(node.meta["tensor_meta"].shape)
    axis = w.axis[src]
    k = _same_axis(before, after, axis)
    inner = _merged_after_channels(before, after, axis) if k is None else None
    out_axis = k if k is not None else 1 if axis == 1 and len(after) == 2 else axis if inner is not None else \
        (_merged_into_channels(before, after, axis) or (None,))[0]
    fixed = _fixed_size(node, out_axis) if out_axis is not None else None
    if fixed is not None:
        counter = _width_attribute(w, node, src, fixed)
        if counter is None:
            w.block(node, f"reshape {node.name} to a fixed {fixed} on the channel axis "
                          f"(it would not fit once channels are cut)")
            return
        w.width_checks.append(([w.label[src][0][0]], node.name, [counter], fixed))  # proved after the walk
    if k is not None:
        w.follow(node, src)
        w.axis[node] = k
    elif axis == 1 and len(after) == 2 and after[0] == before[0] and len(before) >= 2:
        spatial = math.prod(before[2:])
        w.label[node], w.axis[node] = tuple((gid, per * spatial) for gid, per in w.label[src]), 1
    elif inner is not None:
        w.follow(node, src)  # a CRNN's [B, C, H, W] → [B, C·H, W]: C channels, each H entries wide
        w.label[node] = tuple((gid, per * inner) for gid, per in w.label[src])
    elif (merged := _merged_into_channels(before, after, axis)) is not None:
        k, copies = merged  # Swin's patch merging: [.., 2, 2, C] → [.., 4·C], the channels four times over
        w.follow(node, src)
        w.label[node], w.axis[node] = w.label[src] * copies, k
    elif (parts := _split_channel_axis(before, after, axis)) is not None and _fixed_size(node, axis) == parts \
            and not _fixed_size(node, axis + 1):  # n written in the code (an attribute), C/n computed
        _tie_parts(w, node, src, parts)
    else:
        w.block(node, f"reshape {node.name} of {list(before)} with channels on axis {axis}")


def _reshape_sizes(node: fx.Node) -> tuple | None:
    """The sizes a view / reshape asks for, as written (ints and nodes), or None."""
    if node.op == "call_method" and node.target in ("view", "reshape"):
        sizes = node.args[1:]
    elif node.op == "call_function" and node.target is torch.reshape:
        sizes = node.args[1:2]
    else:
        return None
    return tuple(sizes[0]) if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)) else tuple(sizes)


def _shape_read(a) -> tuple[fx.Node, int] | None:
    """(tensor, dim) when `a` is tensor.shape[dim], tensor.size()[dim] or tensor.size(dim)."""
    if not isinstance(a, fx.Node):
        return None
    if a.op == "call_method" and a.target == "size" and len(a.args) == 2 and isinstance(a.args[1], int):
        return a.args[0], a.args[1]
    if a.op == "call_function" and a.target is operator.getitem and isinstance(a.args[1], int) and \
            isinstance(a.args[0], fx.Node):
        b = a.args[0]
        if (b.op == "call_function" and b.target is getattr and b.args[1] == "shape") or \
                (b.op == "call_method" and b.target == "size" and len(b.args) == 1):
            return b.args[0], a.args[1]
    return None


def _sized_by_another(w, node: fx.Node, src: fx.Node) -> fx.Node | None:
    """The channel-carrying tensor whose channel count a reshape of `src` takes as one of its sizes
    (metaformer's attention reshapes the heads' output with `C` of its input, `B, N, C = x.shape`) when
    `src` does not carry those same channels: a cut would change the one and not the other."""
    for size in _reshape_sizes(node) or ():
        read = _shape_read(size)
        if read is None or read[0] not in w.label or w.ndim(read[0]) is None:
            continue
        t, d = read
        if d % w.ndim(t) == w.axis[t] and (src not in w.label or w.label[src] != w.label[t]):
            return t
    return None


def _fixed_size(node: fx.Node, dim: int) -> int | None:
    """The size a view / reshape fixes for output dim `dim` when it is a literal in the code
    (`x.view(b, 64, -1)`, timm's `scale.view(self.shape)`): a cut would no longer fit it. None when
    that size is computed (`x.shape[1]`, -1) or the op is not a reshape with sizes."""
    sizes = _reshape_sizes(node)
    if sizes is None:
        return None
    size = sizes[dim] if -len(sizes) <= dim < len(sizes) else None
    return size if isinstance(size, int) and size != -1 else None


def _width_attribute(w, node: fx.Node, src: fx.Node, size: int) -> tuple[str, str, int] | None:
    """(module path, attribute, 1) when the module whose code reshapes to a channel count holds it in
    exactly one int attribute (torchvision's ViT: `x.reshape(n, self.hidden_dim, -1)`): the cut then sets
    that attribute to the channels kept, once width_attributes.problem has proved that the attribute is
    what fixes the reshape and nothing else. None otherwise (several attributes hold the number)."""
    label = w.label[src]
    if len(label) != 1 or label[0][1] != 1 or w.g.get(label[0][0]).size != size:
        return None
    return _count_attribute(w, node, size)


def caller_attributes(w, node: fx.Node) -> tuple[str, dict]:
    """(path, public attributes) of the module whose code runs `node`: where a size written as
    `self.width` in that code may come from."""
    path = next(reversed(node.meta.get("nn_module_stack") or {}), "")
    owner = w.modules.get(path)
    return path, {k: v for k, v in vars(owner).items() if not k.startswith("_")} if owner is not None else {}


def _count_attribute(w, node: fx.Node, size: int) -> tuple[str, str, int] | None:
    """(module path, attribute, 1): the one attribute of the module whose code runs `node` that holds
    `size`, an int or one entry of a tuple of ints ("shape[0]"); None when none or several do."""
    path, attrs = caller_attributes(w, node)
    names = []
    for k, v in attrs.items():
        if type(v) is int and v == size:
            names.append(k)
        elif type(v) in (tuple, list) and all(type(e) is int for e in v):
            names += [f"{k}[{i}]" for i, e in enumerate(v) if e == size]
    return (path, names[0], 1) if len(names) == 1 else None


def _merged_after_channels(before: tuple, after: tuple, axis: int) -> int | None:
    """How many entries each channel becomes when dims just after the channel axis merge into it (the
    channels outermost, the dims before it and after the merged ones unchanged), or None."""
    if tuple(after[:axis]) != tuple(before[:axis]) or len(after) >= len(before):
        return None
    j = axis + 1 + len(before) - len(after)  # before[axis:j] became after[axis]
    if tuple(after[axis + 1:]) != tuple(before[j:]) or after[axis] != math.prod(before[axis:j]):
        return None
    return math.prod(before[axis + 1:j])


def _merged_into_channels(before: tuple, after: tuple, axis: int) -> tuple[int, int] | None:
    """(dim of `after`, copies) when dims just before the channel axis merge into it, the channels
    innermost and everything after them unchanged: the channels side by side `copies` times."""
    if tuple(after[len(after) - (len(before) - axis - 1):]) != tuple(before[axis + 1:]):
        return None
    k = len(after) - (len(before) - axis)  # where the merged dim lands
    for i in range(axis):
        if k >= 0 and math.prod(before[:i]) == math.prod(after[:k]) and after[k] == math.prod(before[i:axis + 1]):
            copies = math.prod(before[i:axis])
            return (k, copies) if copies <= _MAX_COPIES else None
    return None


_MAX_COPIES = 64  # more copies of a group in one input (a whole feature map flattened channels-last) block


def _same_axis(before: tuple, after: tuple, axis: int) -> int | None:
    """The dim of `after` holding `before`'s dim `axis` unchanged (the same elements before it, and
    the same size), or None."""
    pre, size = math.prod(before[:axis]), before[axis]
    for k in range(len(after)):
        if math.prod(after[:k]) == pre and after[k] == size:
            return k
        if math.prod(after[:k]) > pre:
            return None
    return None


@function_rule(torch.unsqueeze, "unsqueeze")
def unsqueeze(w, node, m) -> None:
    """A new dim of size 1: the channels move one dim on when it comes before them."""
    x = w.first(node)
    if x not in w.label:
        return
    d = argument(node, 1, "dim")
    w.follow(node, x)
    w.axis[node] = w.axis[x] + (d % (w.ndim(x) + 1) <= w.axis[x])


@function_rule(torch.squeeze, "squeeze")
def squeeze(w, node, m) -> None:
    """Given dims of size 1 dropped: the channels move back past those before them. Squeezing the
    channel axis itself (one channel), the batch dim or every dim of size 1 (`x.squeeze()`, which after
    a cut to one channel, or on a batch of one, drops other dims) blocks."""
    x = w.first(node)
    if x not in w.label:
        return
    shape, nd = x.meta["tensor_meta"].shape, w.ndim(x)
    d = argument(node, 1, "dim")
    if d is None or 0 in [g % nd for g in ([d] if isinstance(d, int) else d)]:
        # which dims go depends on the sizes at run time: a channel axis cut to one channel, a batch of one
        w.block(node, f"squeeze {node.name} of {'every dim of size 1' if d is None else 'the batch dim'}")
        return
    dims = {g % nd for g in ([d] if isinstance(d, int) else d) if shape[g % nd] == 1}
    if w.axis[x] in dims:
        w.block(node, f"squeeze {node.name} of the channel axis")
        return
    w.follow(node, x)
    w.axis[node] = w.axis[x] - sum(g < w.axis[x] for g in dims)


@function_rule(torch.transpose, "transpose", torch.swapaxes, "swapaxes", torch.swapdims, "swapdims")
def transpose(w, node, m) -> None:
    x = w.first(node)
    if x not in w.label:
        return
    nd = w.ndim(x)
    a, b = (d % nd for d in node.args[1:3])
    w.follow(node, x)
    w.axis[node] = b if w.axis[x] == a else a if w.axis[x] == b else w.axis[x]


@function_rule(torch.softmax, "softmax", F.softmax, torch.log_softmax, "log_softmax", F.log_softmax)
def softmax(w, node, m) -> None:
    """A softmax over another dim than the channels' (SKNet's weights over its paths) treats each channel
    apart; a removed channel's zeros give a constant (1/n) there. Over the channel axis it mixes them."""
    x = w.first(node)
    if x not in w.label:
        return
    dim = argument(node, 1, "dim")
    if not isinstance(dim, int) or dim % w.ndim(x) == w.axis[x]:
        w.block(node, f"softmax {node.name} over the channel axis")
    else:
        w.follow(node, x, shift=f"{node.name} (a softmax: zeros become 1/n)")


@function_rule(torch.roll, "roll")
def roll(w, node, m) -> None:
    """Swin's shifted windows: a roll along other dims moves values, not channels."""
    x = w.first(node)
    if x not in w.label:
        return
    dims = argument(node, 2, "dims")
    dims = [dims] if isinstance(dims, int) else list(dims or [])
    if not dims or w.axis[x] in [d % w.ndim(x) for d in dims]:
        w.block(node, f"roll {node.name} along the channel axis")
    else:
        w.follow(node, x)


@function_rule(torch.permute, "permute")
def permute(w, node, m) -> None:
    x = w.first(node)
    if x not in w.label:
        return
    dims = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], (list, tuple)) \
        else node.args[1:] or node.kwargs.get("dims")
    w.label[node], w.axis[node] = w.label[x], [d % len(dims) for d in dims].index(w.axis[x])


@function_rule(torch.mean, "mean", torch.sum, "sum", torch.amax, "amax")
def mean(w, node, m) -> None:
    """A mean, sum or max over dims that do not include the channel axis keeps the channels (e.g. global
    pooling, or summing the branches a stack put side by side); a zero channel stays zero."""
    src = w.first(node)
    if src not in w.label:
        return
    dims = argument(node, 1, "dim")
    keep = argument(node, 2, "keepdim", False)
    ndim = w.ndim(src)
    dims = [d % ndim for d in ([dims] if isinstance(dims, int) else dims or [])]
    if not dims or w.axis[src] in dims:
        w.block(node, f"mean {node.name} over the channel axis")
        return
    w.label[node] = w.label[src]
    w.axis[node] = w.axis[src] if keep else w.axis[src] - sum(d < w.axis[src] for d in dims)


@function_rule(getattr, operator.getitem, "size", "dim")
def indexing(w, node, m) -> None:
    """Basic indexing that leaves the channel axis whole (ViT's x[:, 0], Swin's x[:, 0::2, 0::2, :])
    carries the channels on; any other indexing of a channel-carrying tensor blocks. One part of a
    torch.split / chunk carries that part's channels."""
    x = w.first(node)
    if x in w.parts and node.target is operator.getitem and isinstance(node.args[1], int):
        part = w.parts[x][node.args[1]]
        if isinstance(part, list):  # a tuple inside the tuple (an LSTM's (h_n, c_n))
            w.parts[node] = part
            if not _only_indexed(node):
                for gid in set(_groups_in(w, node)):
                    w.g.get(gid).blockers.append(f"{node.name}: a tuple of channel tensors used whole")
        elif isinstance(part, dict):  # an element whose channels cannot be followed: used, it blocks them
            for gid, _ in part["segments"] if node.users else ():
                w.g.get(gid).blockers.append(part["why"])
        elif part is not None:  # None: an element that carries no channels (attention weights)
            w.label[node], w.axis[node] = part
            w.shifted[node] = w.shifted.get(x)
        return
    if x in w.label and node.target is operator.getitem and w.ndim(node) is not None:
        k = _index_axis(node.args[1], w.ndim(x), w.axis[x], x.meta["tensor_meta"].shape[w.axis[x]])
        if k is not None:
            w.follow(node, x)
            w.axis[node] = k
            return
        why = _slice_channels(w, node, x)
        if why is None:
            return
        w.block(node, f"indexing {node.name}: {why}")
        index = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
        at = _channel_position(index, w.ndim(x), w.axis[x])
        k = _index_axis(index[:at] + (slice(None),) + index[at + 1:], w.ndim(x), w.axis[x]) \
            if at is not None and isinstance(index[at], slice) else None
        if k is not None:  # a new group that stays whole: what meets it stays whole too, the rest is free
            w.start(node, node.meta["tensor_meta"].shape[k], blocker=f"a slice {node.name} of channels", axis=k)
        return
    if w.ndim(node) is not None and any(a in w.label for a in node.all_input_nodes):
        w.block(node, f"indexing {node.name}")  # a tensor cut out of a channel-carrying one


def _slice_channels(w, node: fx.Node, x: fx.Node) -> str | None:
    """x[:, a:b] on the channel axis (RexNet's `x[:, 0:self.in_channels] + shortcut`, DPN's residual and
    dense paths `x[:, :self.num_1x1_c]`, `x[:, self.num_1x1_c:]`): the channels in [a, b) carry on, cut
    apart from the rest at a and b. A bound inside the tensor must come from an int attribute of the
    module whose code slices (proved after the walk, set by the cut to the channels kept before it).
    None when done, else why not."""
    index = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
    at = _channel_position(index, w.ndim(x), w.axis[x])
    if at is None or not isinstance(index[at], slice):
        return "not a slice of the channel axis"
    entry, size = index[at], x.meta["tensor_meta"].shape[w.axis[x]]
    start, stop = entry.start or 0, size if entry.stop is None else entry.stop
    if entry.step not in (None, 1) or not all(isinstance(b, int) and 0 <= b for b in (start, stop)) or start >= stop:
        return f"a slice {entry} of the channel axis"
    if any(per != 1 for _, per in w.label[x]):
        return "a slice of channels several entries wide"
    stop = min(stop, size)  # a stop past the end stays past the end after a cut
    sizes = [n for n in (start, stop - start, size - stop) if n]
    path, attrs = caller_attributes(w, node)
    ints = {k: v for k, v in attrs.items() if type(v) is int}
    bounds = [b for b in (start, stop) if 0 < b < size]
    candidates = {b: [(path, k, 1) for k, v in ints.items() if v == b] for b in bounds}
    missing = [b for b in bounds if not candidates[b]]
    if missing:
        return f"at channel {missing[0]}, which no int attribute of {path or 'the model'} holds"
    try:
        parts = cut_into_parts(w, w.label[x], sizes)
    except ValueError as e:  # a group the bounds fall inside cannot be split (a grouped conv's)
        return str(e)
    ends = list(itertools.accumulate(sizes))
    for b in bounds:  # the groups before the bound: what its attribute counts
        w.width_checks.append(([gid for part in parts[:ends.index(b) + 1] for gid, _ in part], node.name,
                               candidates[b], b))
    w.follow(node, x)
    w.label[node] = parts[1 if start else 0]
    w.axis[node] = _index_axis(index[:at] + (slice(None),) + index[at + 1:], w.ndim(x), w.axis[x])
    return None


def _channel_position(index: tuple, ndim: int, axis: int) -> int | None:
    """Which entry of a basic index (ints, slices, None, one Ellipsis) indexes the channel axis."""
    if sum(i is Ellipsis for i in index) > 1 or \
            not all(i is None or i is Ellipsis or isinstance(i, (int, slice)) for i in index):
        return None
    dim = 0
    for pos, i in enumerate(index):
        if i is Ellipsis:
            dim += ndim - sum(j is not None for j in index if j is not Ellipsis)
            if dim > axis:
                return None
            continue
        if i is None:
            continue
        if dim == axis:
            return pos
        dim += 1
    return None


def _index_axis(index, ndim: int, axis: int, size: int | None = None) -> int | None:
    """Where the channel axis lands after `x[index]` (ints, slices, None, one Ellipsis), or None when
    the index touches it or is not basic indexing. A slice of all `size` channels (GhostNet's
    x[:, :out_chs] of exactly out_chs) leaves them whole, and stays whole after a cut."""
    index = index if isinstance(index, tuple) else (index,)
    if sum(i is Ellipsis for i in index) > 1 or not all(i is None or i is Ellipsis or isinstance(i, (int, slice))
                                                        for i in index):
        return None
    if Ellipsis in index:
        at = index.index(Ellipsis)
        fill = ndim - sum(i is not None for i in index if i is not Ellipsis)
        index = index[:at] + (slice(None),) * fill + index[at + 1:]
    dim, out = 0, 0
    for i in index:
        if i is None:
            out += 1
            continue
        if dim == axis:
            whole = isinstance(i, slice) and i.start in (None, 0) and i.step in (None, 1) and \
                (i.stop is None or (size is not None and isinstance(i.stop, int) and i.stop >= size))
            return out if whole else None
        out += isinstance(i, slice)
        dim += 1
    return out + (axis - dim) if axis >= dim else None


# --- sums, products, concatenation ----------------------------------------------------------------

@function_rule(operator.add, operator.iadd, torch.add, "add", "add_")
def add(w, node, m) -> None:
    _binary(w, node, "add")


@function_rule(operator.sub, operator.isub, torch.sub, "sub", "sub_")
def sub(w, node, m) -> None:
    """x − y: as a sum (PoolFormer's pool(x) − x); a removed channel is zero in both, so in the difference."""
    _binary(w, node, "sub")


@function_rule(operator.mul, operator.imul, torch.mul, "mul", "mul_")
def mul(w, node, m) -> None:
    _binary(w, node, "mul")


def _binary(w, node, kind: str) -> None:
    """add: a residual; mul: e.g. squeeze-and-excitation, x * scale[B, C, 1, 1]. Either way the operands'
    channels are the same channels, so their groups merge."""
    tensors = [a for a in node.all_input_nodes if w.ndim(a) is not None]
    if len(tensors) == 2 and all(t in w.label for t in tensors) and w.axis[tensors[0]] == w.axis[tensors[1]]:
        a, b = tensors
        w.label[node], w.axis[node] = _merge(w, node, w.label[a], w.label[b]), w.axis[a]
        # a removed channel is zero in a sum if zero in both, in a product if zero in either
        w.shifted[node] = (w.shifted.get(a) or w.shifted.get(b)) if kind != "mul" else \
            (w.shifted.get(a) and w.shifted.get(b))
    elif len(tensors) == 1 and tensors[0] in w.label:
        others = [a for a in node.args if not isinstance(a, fx.Node)]
        plus_zero = all(isinstance(a, (int, float)) and a == 0 for a in others)  # timm's `0 + branch`
        w.follow(node, tensors[0], shift=f"{node.name} (+ a constant)" if kind != "mul" and not plus_zero else None)
    elif len(tensors) == 2 and sum(t in w.label for t in tensors) == 1 and \
            any(_parameter_of(t) is not None for t in tensors if t not in w.label):
        x = next(t for t in tensors if t in w.label)
        _parameter(w, node, x, next(t for t in tensors if t not in w.label), kind)
    elif any(a in w.label for a in node.all_input_nodes):
        w.block(node, f"{kind} {node.name} of a channel tensor and an untracked tensor")


def _cut_at(w, segs, bounds: set[int]) -> tuple:
    """`segs` with every segment that a boundary (a channel position) falls inside split there."""
    out, at, rest = [], 0, list(segs)
    while rest:
        rest = list(w.resolve(rest))  # an earlier split may have split a group met again here
        gid, per = rest.pop(0)
        size = w.g.get(gid).size
        inside = sorted(b - at for b in bounds if at < b < at + size * per)
        if inside and all(b % per == 0 for b in inside):  # on channel boundaries (a channel is `per` entries)
            inside = [b // per for b in inside]
            out += [(q, per) for q in w.split(gid, [b - a for a, b in zip([0, *inside], [*inside, size])])]
        else:
            out.append((gid, per))
        at += size * per
    return w.resolve(out)


def _bounds(w, segs) -> set[int]:
    at, out = 0, set()
    for gid, per in segs:
        at += w.g.get(gid).size * per
        out.add(at)
    return out


def _merge(w, node, a, b):
    """A residual add: the operands' channels are the same channels, segment by segment. Segments
    that split the channels at different places (GhostNet: a group beside its own copy, added to
    one group as wide as both) are split to match first."""
    g = w.g
    if len(a) != len(b) or any(g.get(x).size != g.get(y).size or p != q for (x, p), (y, q) in zip(a, b)):
        total = [sum(g.get(x).size * p for x, p in side) for side in (a, b)]
        if total[0] == total[1] and all(p == 1 for _, p in (*a, *b)):
            bounds = _bounds(w, a) | _bounds(w, b)
            try:
                for _ in range(3):  # splitting one side can split a group the other side holds too
                    a, b = _cut_at(w, a, bounds), _cut_at(w, b, bounds)
                    a, b = w.resolve(a), w.resolve(b)
            except ValueError:  # one side split, the other could not be: both as they are now
                a, b = w.resolve(a), w.resolve(b)
    if len(a) != len(b) or any(g.get(x).size != g.get(y).size or p != q for (x, p), (y, q) in zip(a, b)):
        for gid, _ in (*a, *b):
            g.get(gid).blockers.append(f"add {node.name} of differently concatenated tensors")
        return a
    return tuple((g.merge(x, y), p) for (x, p), (y, _) in zip(a, b))


def tie(w, node: fx.Node, segs, sizes: list[int]) -> tuple:
    """Cut `segs` into equal consecutive parts of `sizes` entries and tie them, channel i of every part
    one channel of one group (merged as in a residual add); returns the tied parts' segments."""
    parts = cut_into_parts(w, segs, sizes)
    for part in parts[1:]:  # a merge may split groups of the parts: resolve them each time
        _merge(w, node, w.resolve(parts[0]), w.resolve(part))
    return w.resolve(parts[0])


def cut_into_parts(w, segs, sizes: list[int]) -> list[tuple]:
    """`segs` cut at the bounds of consecutive parts of `sizes` entries, grouped by part."""
    out, rest = [], list(_cut_at(w, segs, set(itertools.accumulate(sizes))))
    for size in sizes:
        part, n = [], 0
        while n < size:
            gid, per = rest.pop(0)
            part.append((gid, per))
            n += w.g.get(gid).size * per
        if n != size:
            raise ValueError(f"a part of {size} entries would cut a channel of {per} entries apart")
        out.append(tuple(part))
    return out


@function_rule(torch.cat, torch.concat, torch.concatenate, "cat")
def concat(w, node, m) -> None:
    """torch.cat along the channel axis: the inputs' segments side by side. Along another axis (ViT's
    class token before the patch tokens) the inputs' channels are the same channels: their groups
    merge, and a parameter among them (expanded or not) joins them along its channel dim."""
    tensors = node.args[0] if node.args else node.kwargs.get("tensors", ())
    dim = argument(node, 1, "dim", 0)
    ndim = w.ndim(node)
    if not isinstance(tensors, (list, tuple)) or not isinstance(dim, int) or ndim is None:
        w.block(node, f"concatenation {node.name} of tensors or along a dim computed at run time")
        return
    parts = [w.label.get(t) if isinstance(t, fx.Node) else None for t in tensors]
    axes = {w.axis.get(t) for t in tensors if isinstance(t, fx.Node) and t in w.label}
    if all(p is not None for p in parts) and len(axes) == 1 and dim % ndim == next(iter(axes)):
        w.label[node] = tuple(seg for p in parts for seg in p)
        w.axis[node] = dim % ndim
        return
    if len(axes) == 1 and ndim is not None and dim % ndim != next(iter(axes)) and _concat_along(w, node, tensors):
        return
    for p in parts:
        for gid, _ in p or ():
            w.g.get(gid).blockers.append(f"concatenation {node.name} along dim {dim}, not the channel axis")


def patch_merging_pad(w, node, m) -> None:
    """torchvision's Swin patch merging (`_patch_merging_pad`, an fx leaf): pads H and W to even sizes
    with zeros and lays the four 2x2 neighbours' channels side by side on the last axis, the input's
    channels four times over."""
    x = w.first(node)
    if x not in w.label:
        return
    if w.axis[x] != w.ndim(x) - 1:
        w.block(node, f"{node.name}: patch merging with channels on axis {w.axis[x]}, not the last")
        return
    w.follow(node, x)
    w.label[node] = w.label[x] * 4


try:  # a function torchvision wraps for fx, so traced as one call
    from torchvision.models.swin_transformer import _patch_merging_pad
except ImportError:  # pragma: no cover - torchvision is a dependency; older ones lack the function
    _patch_merging_pad = None
if _patch_merging_pad is not None:
    register_function_rule(_patch_merging_pad, patch_merging_pad)


@function_rule(torch.stack, "stack")
def stack(w, node, m) -> None:
    """torch.stack of tensors carrying channels on the same axis, along a new dim: the same channels
    side by side (their groups merge, as in a sum); the channel axis moves past the new dim."""
    tensors = node.args[0] if node.args else node.kwargs.get("tensors", ())
    dim = argument(node, 1, "dim", 0)
    labelled = [t for t in tensors if isinstance(t, fx.Node) and t in w.label]
    if not labelled:
        return
    axes = {w.axis[t] for t in labelled}
    if len(labelled) != len(tensors) or len(axes) != 1:
        w.block(node, f"stack {node.name} of a channel tensor and an untracked tensor")
        return
    axis, label = axes.pop(), w.label[labelled[0]]
    for t in labelled[1:]:
        label = _merge(w, node, label, w.label[t])
    w.label[node], w.axis[node] = label, axis + (dim % w.ndim(node) <= axis)
    w.shifted[node] = next((w.shifted[t] for t in labelled if w.shifted.get(t)), None)


def _concat_along(w, node: fx.Node, tensors) -> bool:
    """Concatenation along a non-channel axis: merge the labelled inputs' groups; each other input must
    be a parameter (or its expand) of one entry per channel. False when that is not the case."""
    labelled = [t for t in tensors if t in w.label]
    axis, label = w.axis[labelled[0]], w.label[labelled[0]]
    params = []
    for t in tensors:
        if t in w.label:
            continue
        p = t.args[0] if t.op == "call_method" and t.target == "expand" and isinstance(t.args[0], fx.Node) else t
        if p.op != "get_attr" or len(p.users) > 1 or w.ndim(p) != w.ndim(node):
            return False
        if any(per != 1 for _, per in label) or \
                p.meta["tensor_meta"].shape[axis] != sum(w.g.get(gid).size for gid, _ in label):
            return False
        params.append(p)
    for t in labelled[1:]:
        if w.axis[t] != axis:
            return False
        label = _merge(w, node, label, w.label[t])
    w.label[node], w.axis[node] = label, axis
    w.shifted[node] = next((w.shifted[t] for t in labelled if w.shifted.get(t)), None)
    for p in params:
        for i, (gid, _) in enumerate(label):
            grp = w.g.get(gid)
            grp.parameters.append((p.target, axis))
            if i:
                grp.before[p.target] = list(label[:i])
    return True


def _parameter_of(t: fx.Node) -> fx.Node | None:
    """The parameter (get_attr node) `t` is, or reshapes (timm's layer scale gamma.reshape(1, -1, 1, 1))."""
    if t.op == "get_attr":
        return t
    reshape = (t.op == "call_method" and t.target in ("reshape", "view")) or \
        (t.op == "call_function" and t.target is torch.reshape)
    src = t.args[0] if reshape and t.args and isinstance(t.args[0], fx.Node) else None
    return src if src is not None and src.op == "get_attr" else None


def _split_channel_axis(before: tuple, after: tuple, axis: int) -> int | None:
    """n when the channel axis C becomes two dims [n, C/n] (the rest unchanged), else None."""
    if len(after) != len(before) + 1 or tuple(after[:axis]) != tuple(before[:axis]) or \
            tuple(after[axis + 2:]) != tuple(before[axis + 1:]) or after[axis] * after[axis + 1] != before[axis]:
        return None
    return after[axis] if after[axis] > 1 else None


def _tie_parts(w, node: fx.Node, src: fx.Node, n: int) -> None:
    """[.., C, ..] → [.., n, C/n, ..] with C/n computed from the tensor's shape (SKNet's attention over
    its paths: `x.view(B, self.num_paths, C // self.num_paths, H, W)`): the n parts are tied channel by
    channel, as a chunk ties them (split.py), and the channel axis is the C/n dim."""
    try:
        label = tie(w, node, w.label[src], [src.meta["tensor_meta"].shape[w.axis[src]] // n] * n)
    except ValueError as e:
        w.block(node, f"reshape {node.name} of the channel axis into {n} parts: {e}")
        return
    w.follow(node, src)
    w.label[node], w.axis[node] = label, w.axis[src] + 1


@function_rule("reshape_as", "view_as")
def reshape_as(w, node, m) -> None:
    """x.reshape_as(y) (LeViT's `bn(x.flatten(0, 1)).reshape_as(x)`): a reshape to y's shape, which
    after a cut is still right when y carries the same channels on the output's channel axis."""
    src, other = node.args[0], node.args[1]
    flatten(w, node, m)
    if node not in w.label or not isinstance(other, fx.Node):
        return
    if other not in w.label or w.axis[other] != w.axis[node]:
        w.block(node, f"{node.name}: reshaped to the shape of {getattr(other, 'name', other)}, which does not "
                      "carry these channels there", also=(node,))
        return
    w.label[node] = _merge(w, node, w.label[node], w.label[other])


@function_rule("expand_as")
def expand_as(w, node, m) -> None:
    """y.expand_as(x) (ECA's gate `y.expand_as(x)` before `x * y`): y broadcast to x's shape, its
    channels on the same axis, which after a cut still fits when x carries the same channels there."""
    src, other = node.args[0], node.args[1]
    if src not in w.label:
        if other in w.label:
            w.block(node, f"{node.name}: an untracked tensor expanded to the shape of {other.name}", also=(other,))
        return
    axis = w.axis[src] + w.ndim(node) - w.ndim(src)
    if other not in w.label or w.axis[other] != axis:
        w.block(node, f"{node.name}: expanded to the shape of {getattr(other, 'name', other)}, which does not "
                      "carry these channels there", also=(other,) if other in w.label else ())
        return
    w.follow(node, src)
    w.label[node], w.axis[node] = _merge(w, node, w.label[src], w.label[other]), axis


def _parameter(w, node: fx.Node, x: fx.Node, p: fx.Node, kind: str) -> None:
    """x + p or x * p with p a parameter (get_attr) or a reshape of one. Broadcast along the channel
    axis (size 1 there, or too few dims to reach it) p is a constant: a product keeps removed channels
    zero, a sum shifts them. With one entry per channel (ConvNeXt's layer scale [C, 1, 1] or [C]
    reshaped, ViT's position embedding [1, T, C]) p joins the groups along that dim: the masked model
    zeroes those entries too."""
    shape, nd = p.meta["tensor_meta"].shape, w.ndim(x)
    dim = w.axis[x] - (nd - len(shape))
    w.label[node], w.axis[node] = w.label[x], w.axis[x]
    if dim < 0 or shape[dim] == 1:
        w.shifted[node] = w.shifted.get(x) or (f"{node.name} (+ a constant)" if kind != "mul" else None)
        return
    segs = w.label[x]
    src = _parameter_of(p)
    if len(p.users) > 1 or len(src.users) > 1:  # cutting it would change what its other uses compute
        w.block(node, f"{kind} {node.name}: parameter {src.target} is used elsewhere too")
        return
    if shape[dim] != sum(w.g.get(gid).size for gid, _ in segs) or any(per != 1 for _, per in segs):
        w.block(node, f"{kind} {node.name} of a channel tensor and parameter {src.target} of shape {list(shape)}")
        return
    if src is not p and _fixed_size(p, dim - len(shape)) is not None:
        counter = _count_attribute(w, p, shape[dim]) if len(segs) == 1 else None
        if counter is None:
            w.block(node, f"{kind} {node.name}: parameter {src.target} reshaped to a fixed {list(shape)} "
                          f"(it would not fit once channels are cut)")
            return
        # the size comes from an attribute (timm's metaformer Scale: view(self.shape)): proved after
        # the walk, set by the cut
        w.width_checks.append(([segs[0][0]], p.name, [counter], shape[dim]))
    if src is not p:  # a reshape: the parameter's own dim holding the channels, all others of size 1
        own = list(src.meta["tensor_meta"].shape)
        if sorted(own) != [1] * (len(own) - 1) + [shape[dim]] or shape[dim] == 1:
            w.block(node, f"{kind} {node.name}: parameter {src.target} of shape {own} reshaped")
            return
        dim = own.index(shape[dim])
    for i, (gid, _) in enumerate(segs):
        grp = w.g.get(gid)
        grp.parameters.append((src.target, dim))
        if i:
            grp.before[src.target] = list(segs[:i])
    # a product with a zeroed entry is zero whatever x carried; a sum keeps what x carried
    w.shifted[node] = w.shifted.get(x) if kind != "mul" else None
