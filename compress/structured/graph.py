"""Which channels must be removed together: a channel dependency graph traced with torch.fx.

Every tensor that carries channels is labelled with the groups that own them and with its channel
axis (1 for a conv's output, the last dim for a Linear's). The walk visits the traced graph once and
asks each node's channel rule (rules.py: one small function per op kind, built-ins in ops.py, users
may register their own) what the op does with its inputs' channels. Anything without a rule that
touches a channel-carrying tensor makes the groups involved unprunable, naming the op and the module
path, so an unknown model is never cut wrongly.

Sharing is checked after the walk: a parameter reached from more than one place (a module called
twice, two modules holding one tensor, a weight also read through a functional call) blocks every
group it takes part in, since cutting it for one use would change what the others compute.
"""
from __future__ import annotations

import inspect
import math
import operator
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from ..modes import evaluating
from . import lite_attention, ops, split  # noqa: F401  (registers the built-in rules)
from . import shuffle as shuffled
from .stream_graph import Region, find_regions
from . import width_attributes
from .width_attributes import get_count
from .attention import prepare_attention
from .norm import NormWithRemoved
from .undo import python_state_kept
from .ops import CONV, FACTORIES, SHAPE_READS, shape_only
from .rules import FUNCTION_RULES, has_own_rule, rule_for_module

__all__ = ["ChannelGroup", "channel_groups", "CONV"]


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
    # passthrough member -> entries per channel when it is not 1 (a BatchNorm1d after a flatten)
    passthrough_per: dict[str, int] = field(default_factory=dict)
    # consumer -> what comes before each of its reads, when it reads these channels more than once
    # (DLA's root conv reads a residual stream and a block's output: the same channels twice)
    repeats: dict[str, list] = field(default_factory=dict)
    # producer -> (rows per channel, repeats) when a channel is not one output row: an attention head
    # is head_dim rows in each of q, k and v of a fused qkv Linear (rows(...) says which)
    layout: dict[str, tuple[int, int]] = field(default_factory=dict)
    # (module, attribute, per channel): integer attributes that count these channels (num_heads)
    counters: list[tuple[str, str, int]] = field(default_factory=list)
    # producer -> what comes before each place it writes these channels, when not only at row 0 (a
    # group split by torch.split / chunk, or written twice after the split halves merged again)
    out_before: dict[str, list] = field(default_factory=dict)
    # the group's name in keep counts and structure records: its first producer, with the rows it
    # writes there when that producer writes several groups (the parts of a split)
    key: str = ""
    # the producers (a projected LSTM) write these channels inside themselves, not to their output: its cells
    cells: bool = False
    # convs sliding along these channels (ECA's gate): the channels kept must be one contiguous run
    along: list[str] = field(default_factory=list)
    # a shuffled stream (ShuffleNet): its channels are its producers' rows side by side, each member
    # reading them in its own order (shuffle.py)
    shuffle: shuffled.Shuffle | None = None

    @property
    def contiguous(self) -> bool:
        """Whether the channels kept must be one run (a conv slides along them)."""
        return bool(self.along)

    @property
    def prunable(self) -> bool:
        return not self.blockers and bool(self.producers)

    def offset(self, member: str) -> int:
        """Where this group's channels start in `member`'s input: 0 unless a concatenation put others first."""
        return sum(g.size * per for g, per in self.before.get(member, []))

    def out_offsets(self, producer: str) -> list[int]:
        """Where `producer` writes these channels among its output rows (one place unless split and merged)."""
        return [sum(g.size * per for g, per in before) for before in self.out_before.get(producer, [[]])]

    def rows(self, producer: str, channels: torch.Tensor) -> torch.Tensor:
        """The output rows of `producer` that carry `channels` (sorted channels give sorted rows)."""
        per, repeat = self.layout.get(producer, (1, 1))
        channels = torch.as_tensor(channels, dtype=torch.long)
        if self.shuffle is not None:
            return self.shuffle.places(producer, channels.sort().values, rows=True)
        if per == 1 and repeat == 1:
            return torch.cat([offset + channels for offset in self.out_offsets(producer)])
        one = (channels[:, None] * per + torch.arange(per)[None, :]).flatten()
        return torch.cat([one + r * self.size * per for r in range(repeat)])

    def per_channel_rows(self, producer: str, weight: torch.Tensor) -> torch.Tensor:
        """`weight` (out rows first) as [channels, everything that produces one channel]."""
        flat = weight.flatten(1)
        per, repeat = self.layout.get(producer, (1, 1))
        if self.shuffle is not None:  # the producer's channels in their places, zeros elsewhere
            out = flat.new_zeros(self.size, flat.shape[1])
            out[self.shuffle.rows[producer].to(flat.device)] = flat
            return out
        if per == 1 and repeat == 1:
            return torch.cat([flat[o:o + self.size] for o in self.out_offsets(producer)], 1)
        return flat.view(repeat, self.size, per, -1).transpose(0, 1).reshape(self.size, -1)

    def channel_of_rows(self, producer: str, total: int) -> torch.Tensor:
        """For each of `producer`'s `total` output rows, the channel it carries; `size` for rows of
        other groups (a split group's other parts)."""
        per, repeat = self.layout.get(producer, (1, 1))
        if self.shuffle is not None:
            return self.shuffle.rows[producer].clone()
        if per != 1 or repeat != 1:
            return (torch.arange(self.size * per) // per).repeat(repeat)
        out = torch.full((total,), self.size, dtype=torch.long)
        out[self.rows(producer, torch.arange(self.size))] = torch.arange(self.size).repeat(
            len(self.out_offsets(producer)))
        return out

    @property
    def unit(self) -> int:
        """Rows (or inputs) one channel stands for, at most: a head's head_dim, else 1."""
        return max([per for per, _ in self.layout.values()] or [1])

    def offsets(self, member: str) -> list[int]:
        """Where each of `member`'s reads of these channels starts in its input (one unless repeated)."""
        if member in self.repeats:
            return [sum(g.size * per for g, per in before) for before in self.repeats[member]]
        return [self.offset(member)]


class _Groups:
    def __init__(self):
        self.groups: dict[int, ChannelGroup] = {}
        self.parent: dict[int, int] = {}
        self.split_into: dict[int, list[int]] = {}  # a group split in parts -> the parts

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
        gb.passthrough_per.update(ga.passthrough_per)
        gb.repeats.update(ga.repeats)
        gb.layout.update(ga.layout)
        gb.counters.extend(ga.counters)
        if ga.cells != gb.cells:
            gb.blockers.append("a projected LSTM's cells meet other channels")
        if ga.size != gb.size:
            gb.blockers.append(f"residual add of {ga.size} and {gb.size} channels")
        gb.blocks = math.lcm(ga.blocks, gb.blocks)
        gb.along.extend(ga.along)
        if gb.size % gb.blocks:
            gb.blockers.append(f"{gb.size} channels do not split into {gb.blocks} equal blocks")
        self.parent[rb] = ra
        return ra



class _Proxy(fx.Proxy):
    """A traced tensor whose `.device` is the example's (a concrete torch.device, not a traced
    attribute): code that asks where it runs (`torch.autocast(device_type=x.device.type)`, EfficientViT's
    attention) traces, taking the way it takes on that device, as the deployed model runs there."""

    def __getattr__(self, k):
        if k == "device" and getattr(self.tracer, "device", None) is not None:
            return self.tracer.device
        return super().__getattr__(k)


class _Tracer(fx.Tracer):
    """torch.fx's tracer, keeping whole every module whose exact type has a channel rule and
    LayerNorm-like modules (their axis is known as a module), and the modules whose Python fx cannot
    follow (`opaque`: their types, or their paths for torch's own containers). It remembers which
    modules it is inside, so a failure can be pinned on the innermost one."""

    def __init__(self, opaque_types: set[type], opaque_paths: set[str], example: torch.Tensor | None = None,
                 max_nodes: int | None = None):
        super().__init__()
        self.max_nodes = max_nodes  # a trace growing past it fails (a loop over a probed attribute)
        self.device = example.device if example is not None else None
        self.opaque_types, self.opaque_paths = opaque_types, opaque_paths
        self.inside: list[nn.Module] = []
        self.example, self.evaluating = example, False
        self.value_shaped: dict = {}  # node -> whether its shape depends on tensor values (memo)
        # (tensor node, the dims a branch read, None for all): the walk blocks a channel axis read there
        self.branch_reads: list[tuple[fx.Node, tuple[int | slice, ...] | None]] = []

    def to_bool(self, obj: fx.Proxy) -> bool:
        """A branch on tensor shapes only (`if x.shape[-1] < self.input_size`) takes the way the example
        input takes, as torch.export specialises; a branch on tensor values still fails the trace."""
        if self.example is None or not shape_only(obj.node, self.value_shaped):
            return super().to_bool(obj)
        needed, todo = set(), [obj.node]
        while todo:
            n = todo.pop()
            if n not in needed:
                needed.add(n)
                todo.extend(n.all_input_nodes)
        self.branch_reads += [r for r in _dims_read(_condition(obj.node)) if r not in self.branch_reads]
        g, env = fx.Graph(), {}
        for n in self.graph.nodes:
            if n in needed:
                env[n] = g.node_copy(n, lambda a: env[a])
        g.output(env[obj.node])
        if sum(n.op == "placeholder" for n in g.nodes) != 1:
            return super().to_bool(obj)
        self.evaluating = True  # the tracer's patches on nn.Module stay on: let real calls through
        try:
            with torch.no_grad():
                return bool(fx.GraphModule(self.root, g)(self.example))
        finally:
            self.evaluating = False

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _Proxy(node, self)

    def create_node(self, *args, **kwargs):
        if self.max_nodes is not None and len(self.graph.nodes) >= self.max_nodes:
            raise RuntimeError(f"the trace grew past {self.max_nodes} nodes")
        return super().create_node(*args, **kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        return attr_val if self.evaluating else super().getattr(attr, attr_val, parameter_proxy_cache)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return has_own_rule(m) or isinstance(m, (nn.LayerNorm, NormWithRemoved)) or \
            type(m) in self.opaque_types or qualname in self.opaque_paths or super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        if self.evaluating:
            return forward(*args, **kwargs)
        self.inside.append(m)
        out = super().call_module(m, forward, args, kwargs)
        self.inside.pop()  # not reached when tracing fails inside m: `inside` then says where
        return out


def _condition(node: fx.Node) -> set[fx.Node]:
    """The nodes a shape-only condition is computed from, down to its shape reads (not the tensors
    behind them, whose own computation may read other shapes)."""
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if (n.op, n.target) not in SHAPE_READS:
            todo.extend(n.all_input_nodes)
        elif isinstance(n.args[0], fx.Node) and n.args[0].target in FACTORIES:
            # torch.arange(x.shape[1]).shape[0]: the shape read reads the sizes that made the tensor
            todo.extend(a for a in n.args[0].all_input_nodes if shape_only(a))
    return seen


def _dims_read(nodes: set[fx.Node]) -> list[tuple[fx.Node, tuple[int | slice, ...] | None]]:
    """The tensors among `nodes`' shape reads and which dims of each are read (None: maybe any).
    A rank read (`.dim()`, `.ndim`) reads no dim."""
    out = []
    for n in nodes:
        whole = n.op == "call_function" and n.target is getattr and n.args[1] == "shape"
        if n.op == "call_method" and n.target == "size" and isinstance(n.args[0], fx.Node):
            d = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
            if isinstance(d, int):
                out.append((n.args[0], (d,)))
            elif d is not None:  # a dim computed while tracing (x.size(x.dim() - 3)): maybe any
                out.append((n.args[0], None))
            whole = d is None
        if whole:  # x.shape or x.size(): the items its users take (x.shape[-1], x.size()[-2:])
            users = [u for u in n.users if u in nodes]
            items = [u.args[1] for u in users if u.target is operator.getitem and isinstance(u.args[1], (int, slice))]
            out.append((n.args[0], tuple(items) if len(items) == len(users) else None))
    return out


_MAX_OPAQUE = 32  # modules made opaque before a model counts as untraceable


def _fx_trace(model: nn.Module, concrete: dict, example: torch.Tensor,
              max_nodes: int | None = None) -> tuple[fx.GraphModule, dict]:
    """fx-trace `model`; each module whose forward fx cannot follow (control flow on a traced value,
    untraceable Python) is kept whole instead and retried, so the rest of the model stays open to the
    walk. Returns the traced module and {path or type: why} for the modules kept whole that way (the walk
    blocks their channels, never guessing what their forward does). Raises the last error when the
    failure is in the model's own forward or too many modules fail. The model's Python state is left as
    it was (undo.python_state_kept)."""
    with python_state_kept(model):
        return _fx_trace_kept(model, concrete, example, max_nodes)


def _fx_trace_kept(model: nn.Module, concrete: dict, example: torch.Tensor,
                   max_nodes: int | None) -> tuple[fx.GraphModule, dict]:
    opaque_types: set[type] = set()
    opaque_paths: set[str] = set()
    why: dict = {}
    paths = {id(m): n for n, m in model.named_modules()}
    while True:
        tracer = _Tracer(opaque_types, opaque_paths, example, max_nodes)
        try:
            traced = fx.GraphModule(model, tracer.trace(model, concrete_args=concrete or None))
            traced.meta["branch_reads"] = tracer.branch_reads
            return traced, why
        except Exception as e:
            culprit = next((m for m in reversed(tracer.inside) if id(m) in paths and paths[id(m)]), None)
            if culprit is None or len(why) >= _MAX_OPAQUE or type(culprit) in opaque_types:
                raise
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
            if type(culprit).__module__.startswith("torch."):  # nn.Sequential and friends: this one only
                opaque_paths.add(paths[id(culprit)])
                why[paths[id(culprit)]] = reason
            else:
                opaque_types.add(type(culprit))
                why[type(culprit)] = reason


class Walk:
    """The state of one pass over a traced graph, and the verbs channel rules use (see rules.py)."""

    def __init__(self, traced: fx.GraphModule, model: nn.Module):
        # the model's own modules: the traced copy keeps only what the graph calls, so a module whose
        # tensors a functional call reads (timm's BatchNormAct2d) is an empty shell there
        self.modules = {**dict(traced.named_modules()), **dict(model.named_modules())}
        self.g = _Groups()
        # node -> its channel axis as segments (group id, inputs per channel); several after a concatenation
        self.label: dict[fx.Node, tuple[tuple[int, int], ...]] = {}
        self.axis: dict[fx.Node, int] = {}  # node -> which dim of its tensor carries the channels
        # node -> why a removed (zeroed) channel is not zero in this tensor (an f(0) != 0 on the way), or None
        self.shifted: dict[fx.Node, str | None] = {}
        self.members: dict[str, tuple[tuple[int, int], ...]] = {}  # module -> the segments of its input
        self.produced: dict[str, tuple[tuple[int, int], ...]] = {}  # producer -> the segments of its output
        self.parts: dict[fx.Node, list] = {}  # torch.split / chunk -> (segments, axis) of each part
        # (groups, node name, candidate (path, attribute, per channel) counters, channel count): attributes
        # that may fix what a reshape or split reads (ops.py, split.py), to prove after the walk
        self.width_checks: list[tuple[list[int], str, list[tuple[str, str, int]], int]] = []
        self.nodes = len(traced.graph.nodes)

    @staticmethod
    def first(node: fx.Node) -> fx.Node | None:
        """The node's first argument when it is a node (the tensor most ops work on)."""
        return node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None

    @staticmethod
    def ndim(node) -> int | None:
        meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        return len(meta.shape) if isinstance(meta, TensorMetadata) else None

    def block(self, node: fx.Node, why: str, also: tuple[fx.Node, ...] = ()) -> None:
        """Every group carried by the node's inputs (and by the nodes `also`) must stay whole, for reason
        `why` (to which the path of the module the op sits in is added, when the op is not a module call
        naming itself)."""
        stack = node.meta.get("nn_module_stack") or {}
        where = next(reversed(stack), None) if node.op != "call_module" else None
        if where and where not in why:
            why = f"{why} (in {where}: {stack[where][1].__name__})" if isinstance(stack[where], tuple) and \
                isinstance(stack[where][1], type) else f"{why} (in {where})"
        for a in (*node.all_input_nodes, *also):
            for gid, _ in self.label.get(a, ()):
                self.g.get(gid).blockers.append(why)

    def join(self, name: str, segs, role: str, src: fx.Node | None = None) -> None:
        """Module `name` reads `segs`: it joins each group as consumer or passthrough, after the others."""
        self.members[name] = segs
        if role == "consumer" and self.shifted.get(src):  # it would read a constant where a channel was removed
            for gid, _ in segs:
                self.g.get(gid).shifts.append(f"{name} reads {self.shifted[src]}")
        for i, (gid, per) in enumerate(segs):
            grp = self.g.get(gid)
            if role == "consumer":
                grp.consumers.append((name, per))
            else:
                grp.passthrough.append(name)
                if per != 1:
                    grp.passthrough_per[name] = per
            if i:
                grp.before[name] = list(segs[:i])

    def start(self, node: fx.Node, size: int, producer: str | None = None, blocker: str | None = None,
              axis: int = 1) -> None:
        """`node` outputs a new group of `size` channels on `axis`."""
        gid = self.g.new(size)
        if producer:
            self.g.get(gid).producers.append(producer)
            self.produced[producer] = ((gid, 1),)
        if blocker:
            self.g.get(gid).blockers.append(blocker)
        self.label[node], self.shifted[node], self.axis[node] = ((gid, 1),), None, axis

    def split(self, gid: int, sizes: list[int]) -> list[int]:
        """Split a group into consecutive parts of `sizes` channels (a torch.split of its channels): each
        part is a group of its own, with every member of the whole, reading or writing it after the
        parts before it. Every label, input and output that carried the whole carries the parts."""
        root = self.g.find(gid)
        whole = self.g.groups[root]
        if whole.blocks > 1 or whole.layout or whole.contiguous or sum(sizes) != whole.size:
            raise ValueError(f"cannot split a group of {whole.size} channels into {sizes}")
        parts = [self.g.new(n) for n in sizes]
        for i, pid in enumerate(parts):
            part = self.g.groups[pid]
            # an attribute counting the whole counts the sum of the parts (remove.py subtracts what each loses)
            for attr in ("producers", "passthrough", "consumers", "parameters", "blockers", "shifts", "counters"):
                setattr(part, attr, list(getattr(whole, attr)))
            part.passthrough_per, part.cells = dict(whole.passthrough_per), whole.cells
            readers = [*(n for n, _ in whole.consumers), *whole.passthrough, *(t for t, _ in whole.parameters)]
            for member in dict.fromkeys(readers):
                per = dict(whole.consumers).get(member) or whole.passthrough_per.get(member, 1)
                part.before[member] = list(whole.before.get(member, [])) + [(q, per) for q in parts[:i]]
        del self.g.groups[root]
        self.g.split_into[root] = parts
        for table in (self.label, self.members, self.produced):
            for key, segs in table.items():
                table[key] = self.resolve(segs)
        for node, pieces in self.parts.items():
            self.parts[node] = [self._resolve_part(p) for p in pieces]
        for grp in self.g.groups.values():
            grp.before = {m: list(self.resolve(b)) for m, b in grp.before.items()}
        return parts

    def _resolve_part(self, part):
        """A tuple element's entry (see ops.indexing) with split groups replaced by their parts."""
        if part is None:
            return None
        if isinstance(part, list):
            return [self._resolve_part(p) for p in part]
        if isinstance(part, dict):
            return {**part, "segments": self.resolve(part["segments"])}
        return self.resolve(part[0]), part[1]

    def resolve(self, segs) -> tuple:
        """`segs` with every group that was split since replaced by its parts."""
        out = []
        for gid, per in segs:
            root = self.g.find(gid)
            out += self.resolve([(q, per) for q in self.g.split_into[root]]) if root in self.g.split_into \
                else [(gid, per)]
        return tuple(out)

    def follow(self, node: fx.Node, src: fx.Node | None, shift: str | None = None, reset: bool = False) -> None:
        """`node` carries `src`'s channels on the same axis (element-wise ops). `shift`: this op maps 0
        to a non-zero value; `reset`: it maps a removed channel back to exact zero (BatchNorm and
        depthwise conv with their per-channel parameters zeroed)."""
        if src in self.label:
            self.label[node], self.axis[node] = self.label[src], self.axis[src]
            self.shifted[node] = None if reset else self.shifted.get(src) or shift


def _trace(model: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    """`model` traced with torch.fx in eval mode (the graph that is deployed; running it leaves BatchNorm
    statistics alone) for one tensor input, its other forward arguments fixed at their defaults (as a
    caller passing only the input gives them), shapes propagated from `example`."""
    with evaluating(model):
        return _trace_eval(model, example)


def _concrete_args(model: nn.Module) -> dict:
    """The forward's arguments besides the input, at their defaults."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        params = []
    concrete = {}
    for p in params[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is p.empty:
            raise ValueError(f"cannot trace {type(model).__name__}: its forward needs argument {p.name!r} "
                             "besides the input")
        concrete[p.name] = p.default
    return concrete


def _trace_eval(model: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    name = type(model).__name__
    concrete = _concrete_args(model)
    try:
        traced, opaque = _fx_trace(model, concrete, example)
    except Exception as e:  # data-dependent control flow in the model's own forward and the like
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(f"cannot trace {name} with torch.fx: {why}") from None
    traced.meta["opaque"] = opaque
    try:
        ShapeProp(traced).propagate(example)
    except Exception as e:  # the model does not run on this input (too small, wrong channels, ...)
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(f"{name} does not run on an input of shape {list(example.shape)}: {why}") from None
    return traced


def channel_groups(model: nn.Module, example: torch.Tensor) -> list[ChannelGroup]:
    """The channel groups of `model` for inputs shaped like `example` ([B, C, ...] or [B, F]).

    Raises ValueError, with one line saying why, for a model it cannot trace or run; any op it does
    not understand leaves the groups involved unprunable (their `blockers` say why). Swaps each
    nn.MultiheadAttention for the same attention with cuttable heads first (attention.py: same
    Parameters, same state_dict keys)."""
    prepare_attention(model, example)
    traced = _trace(model, example)
    w = _walk_streams(traced, model)
    _block_shared(w, traced, model)
    _block_branch_reads(w, traced)
    _prove_width_attributes(w, model, example)
    for name, segs in w.members.items():  # the same channels twice in one input
        roots = [w.g.find(gid) for gid, _ in segs]
        for r in {r for r in roots if roots.count(r) > 1}:
            grp, at = w.g.groups[r], [i for i, root in enumerate(roots) if root == r]
            m = w.modules.get(name)
            plain = isinstance(m, (nn.Linear, *CONV)) and getattr(m, "groups", 1) == 1 and name not in grp.passthrough
            # a per-channel member (a norm after Swin's patch merging, a depthwise conv) is cut at every
            # read too; a grouped conv reading its input in blocks is not
            depthwise = isinstance(m, CONV) and m.groups == m.in_channels == m.out_channels
            per_channel = name in grp.passthrough and (depthwise or not isinstance(m, CONV)) and \
                name not in grp.passthrough_per
            if (plain or per_channel) and len({segs[i][1] for i in at}) == 1:
                grp.repeats[name] = [list(segs[:i]) for i in at]  # cut at every read
                grp.consumers = list(dict.fromkeys(grp.consumers))
                grp.passthrough = list(dict.fromkeys(grp.passthrough))
            else:
                grp.blockers.append(f"{name} reads the same channels twice (concatenation)")
    for name, segs in w.produced.items():  # where each producer writes its groups' channels
        roots = [w.g.find(gid) for gid, _ in segs]
        for r in set(roots):
            grp, at = w.g.groups[r], [i for i, root in enumerate(roots) if root == r]
            if at == [0] or name not in grp.producers:
                continue
            m = w.modules.get(name)
            if len(at) > 1 and not (isinstance(m, (nn.Linear, *CONV)) and getattr(m, "groups", 1) == 1):
                grp.blockers.append(f"{name} writes the same channels twice")
            grp.out_before[name] = [list(segs[:i]) for i in at]
            grp.producers = list(dict.fromkeys(grp.producers))
    firsts = [g.producers[0] for g in w.g.groups.values() if g.producers and not g.cells]
    for grp in w.g.groups.values():
        if grp.cells and grp.producers:
            grp.key = f"{grp.producers[0]}:cells"
        elif grp.producers:
            first = grp.producers[0]
            start = sum(w.g.get(gid).size * per for gid, per in (grp.out_before.get(first) or [[]])[0])
            grp.key = first if firsts.count(first) == 1 else f"{first}[{start}:{start + grp.size}]"
        if grp.along and grp.blocks > 1:
            grp.blockers.append(f"channels cut in equal blocks (a grouped conv) and as one run ({grp.along[0]} "
                                "slides along them)")
        targets = [t for t, _ in grp.parameters]
        if len(set(targets)) < len(targets):  # a parameter over the same channels twice: one offset each
            grp.blockers.append(f"parameter {targets[0]} reads these channels more than once (not cut yet)")
    for grp in w.g.groups.values():
        grp.before = {name: [(w.g.get(gid), per) for gid, per in segs] for name, segs in grp.before.items()}
        grp.out_before = {name: [[(w.g.get(gid), per) for gid, per in segs] for segs in at]
                          for name, at in grp.out_before.items()}
        grp.repeats = {name: [[(w.g.get(gid), per) for gid, per in segs] for segs in reads]
                       for name, reads in grp.repeats.items()}
    return sorted(w.g.groups.values(), key=lambda grp: grp.id)


def _walk_streams(traced: fx.GraphModule, model: nn.Module) -> Walk:
    """The walk, with each shuffled stream (shuffle.py) one group where it can be, else walked again with
    the ordinary rules (which block what they do not follow) and why it could not be said first.
    Raises ValueError where a rule meets a case it does not know (the model is refused, never crashed)."""
    failed: dict = {}
    try:
        regions = find_regions(traced)
        for node, dims in _branch_reads(traced):  # a branch on a stream's width: left to the ordinary rules
            for region in regions:
                if node in region.nodes and _reads_dim(node, dims, 1):
                    region.defect = region.defect or f"the model's code branches on the channel count of {node.name}"
        while True:
            w = Walk(traced, model)
            for region in regions:
                region.reset()
            _walk(w, traced, regions)
            now = shuffled.assemble(w, regions, traced)
            if not now:
                shuffled.explain(w, failed)
                return w
            failed.update(now)
            regions = [r for r in regions if r not in now]
    except Exception as e:  # a rule met a case it does not know: refuse the model, never crash
        raise ValueError(f"channel graph of {type(model).__name__}: {type(e).__name__}: "
                         f"{(str(e).strip().splitlines() or [''])[0][:200]}") from None


def _reads_dim(node: fx.Node, dims: tuple | None, axis: int) -> bool:
    """Whether shape reads of `node` at `dims` (None: maybe any) read its dim `axis`."""
    ndim = Walk.ndim(node)
    if dims is None or ndim is None:
        return True
    return axis % ndim in {j for d in dims for j in ([d % ndim] if isinstance(d, int) else range(ndim)[d])}


def _prove_width_attributes(w: Walk, model: nn.Module, example: torch.Tensor) -> None:
    """Of the attributes that may fix a reshape's, split's or slice's channel count (ops._width_attribute,
    split._size_attribute, ops._slice_channels), the first that width_attributes proves counts the groups;
    none: they block. An attribute read by several nodes (DPN's `x[:, :self.num_1x1_c]` of two tensors)
    must fix all of them, and count the same groups in each. The counters module rules set (num_heads)
    must show nowhere in the trace: the module is one node of it, and a read elsewhere blocks."""
    concrete = _concrete_args(model)
    readers: dict[tuple, list[str]] = {}  # (counter, size) -> the nodes it may fix
    for _, node_name, candidates, size in w.width_checks:
        for counter in candidates:
            readers.setdefault((counter, size), []).append(node_name)
    # counters a rule set (an attention's num_heads): their module is one node of the trace, so the
    # attribute must show nowhere in it; code outside reading `attn.num_heads` would keep the old count
    inside: dict[tuple, list[int]] = {}  # (counter, size) -> the groups (roots) it counts
    for root, grp in w.g.groups.items():
        for path, attr, per in grp.counters if not grp.blockers else ():
            size = get_count(model.get_submodule(path), attr) // per
            if ((path, attr, per), size) not in readers:
                inside.setdefault(((path, attr, per), size), []).append(root)
    keys = list(readers) + list(inside)
    checks = [(tuple(dict.fromkeys(readers.get(k, ()))), *k[0][:2], k[1], k[0][2]) for k in keys]
    limit = 10 * w.nodes + 1000  # a loop over a probed attribute would trace a million times
    trace = lambda: _fx_trace(model, concrete, example, limit)[0]  # noqa: E731
    verdict = dict(zip(keys, width_attributes.problems(model, trace, checks))) if checks else {}
    for (counter, size), roots in inside.items():
        why = verdict[(counter, size)]
        for root in roots if why is not None else ():
            w.g.groups[root].blockers.append(f"{counter[0]}.{counter[1]}, which a cut sets, is read outside "
                                             f"{counter[0]} too ({why})")
    counted: dict[tuple, list[int]] = {}  # a proved counter -> the groups (roots) it counts
    for gids, node_name, candidates, size in w.width_checks:
        whys = [verdict[(c, size)] for c in candidates]
        proved = next((c for c, why in zip(candidates, whys) if why is None), None)
        # a group split since counts in all its parts, one merged since as the group it joined
        roots = [w.g.find(gid) for gid, _ in w.resolve([(gid, 1) for gid in gids])]
        why = f"{node_name} sized by a fixed {size} on the channel axis ({whys[0] if whys else 'no attribute'})"
        if proved is not None and counted.setdefault(proved, roots) != roots:
            why = f"{node_name} sized on the channel axis by {proved[0] or 'the model'}.{proved[1]}, which " \
                  "sizes other channels too"
            roots, proved = roots + counted[proved], None
        if proved is None:
            for root in roots:
                w.g.groups[root].blockers.append(why)
    for counter, roots in counted.items():
        for root in roots:
            if not w.g.groups[root].blockers:
                w.g.groups[root].counters.append(counter)


def _walk(w: Walk, traced: fx.GraphModule, regions: list[Region] = ()) -> None:
    protected: list[int] = []
    region_of = {n: r for r in regions for n in r.nodes}
    for node in traced.graph.nodes:
        if node in region_of:  # a shuffled stream: its ops are replayed on channel ids (shuffle.py)
            shuffled.visit(w, region_of[node], node)
        elif node.op == "placeholder":
            meta = node.meta.get("tensor_meta")
            if isinstance(meta, TensorMetadata) and len(meta.shape) >= 2:
                w.start(node, meta.shape[1], blocker="model input")
        elif node.op == "call_module":
            m = w.modules[node.target]
            rule = rule_for_module(m)
            if _opaque(traced, node.target, m) and not has_own_rule(m):  # never guess what it does
                if any(a in w.label for a in node.all_input_nodes):
                    w.block(node, f"{node.target} ({type(m).__name__}): fx cannot trace its forward "
                                  f"({_opaque(traced, node.target, m)})")
            elif rule is not None:
                rule(w, node, m)
            elif any(a in w.label for a in node.all_input_nodes):
                w.block(node, f"unsupported module {node.target} ({type(m).__name__})")
        elif node.op in ("call_function", "call_method"):
            rule = FUNCTION_RULES.get(node.target)
            if rule is not None:
                rule(w, node, None)
            elif any(a in w.label for a in node.all_input_nodes):
                w.block(node, f"unsupported operation {node.name} ({getattr(node.target, '__name__', node.target)})")
        elif node.op == "output":
            for a in node.all_input_nodes:
                protected += [gid for gid, _ in w.label.get(a, ())]
        if node in w.label and node not in w.shifted:  # reshapes, concatenations, means: as their inputs
            w.shifted[node] = next((w.shifted[a] for a in node.all_input_nodes if w.shifted.get(a)), None)
    for gid in protected:
        w.g.get(gid).blockers.append("model output")


def _opaque(traced: fx.GraphModule, path: str, m: nn.Module) -> str | None:
    """Why the module at `path` was kept whole for fx (its forward is untraceable), or None."""
    opaque = traced.meta.get("opaque") or {}
    return opaque.get(path) or opaque.get(type(m))


def _branch_reads(traced: fx.GraphModule) -> list[tuple[fx.Node, tuple | None]]:
    """The tensors a branch (or assert) in the model's code read the shape of, with the dims read."""
    reads = list(traced.meta.get("branch_reads", ()))
    for n in traced.graph.nodes:  # torch._assert stays in the graph (fx wraps it) instead of branching
        if n.op == "call_function" and n.target is torch._assert and isinstance(n.args[0], fx.Node):
            reads += _dims_read(_condition(n.args[0]))
    return reads


def _block_branch_reads(w: Walk, traced: fx.GraphModule) -> None:
    """A branch (or assert) in the model's code that read a channel count took the example's way; after a
    cut it could take another, so the channels it read stay."""
    for node, dims in _branch_reads(traced):
        if node in w.label and _reads_dim(node, dims, w.axis[node]):
            why = f"the model's code branches on the channel count of {node.name}"
            for gid, _ in w.label[node]:
                if why not in w.g.get(gid).blockers:
                    w.g.get(gid).blockers.append(why)


def _block_shared(w: Walk, traced: fx.GraphModule, model: nn.Module) -> None:
    """Block every group that touches a parameter reached from more than one place in the graph."""
    sites: dict[int, list[str]] = {}   # id(parameter) -> where it is reached
    owner_of: dict[int, set[str]] = {}  # id(parameter) -> the modules holding it
    for name, m in model.named_modules(remove_duplicate=False):
        for p in m.parameters(recurse=False):
            owner_of.setdefault(id(p), set()).add(name)
    for node in traced.graph.nodes:
        if node.op == "call_module":
            for p in w.modules[node.target].parameters():
                sites.setdefault(id(p), []).append(f"call of {node.target}")
        elif node.op == "get_attr":
            try:
                t = traced.get_parameter(node.target)
            except AttributeError:
                continue
            sites.setdefault(id(t), []).append(f"{node.target} read by {', '.join(u.name for u in node.users)}")
    shared = {pid: where for pid, where in sites.items() if len(where) > 1 or len(owner_of.get(pid, ())) > 1}
    if not shared:
        return
    names_of = {}
    for pid in shared:
        for owner in owner_of.get(pid, ()):
            names_of.setdefault(owner, pid)
    for grp in w.g.groups.values():
        members = [*grp.producers, *grp.passthrough, *(n for n, _ in grp.consumers),
                   *(t.rpartition(".")[0] for t, _ in grp.parameters)]
        for name in members:
            hit = next((o for o in names_of if o == name or o.startswith(name + ".")), None)
            if hit is not None:
                where = shared[names_of[hit]]
                grp.blockers.append(f"{name}: a parameter of {hit} is shared ({len(where)} uses: "
                                    f"{'; '.join(where[:3])})")
                break
