"""Channel shuffle (ShuffleNet): a stream of channels that concatenations, chunks and shuffles reorder.

A shuffle (`x.view(B, g, C // g, ...).transpose(1, 2).reshape(B, C, ...)`, or nn.ChannelShuffle;
stream_graph.py finds them) interleaves the g blocks of its input; the next block's `chunk(2)` then hands half of the stream to a branch and passes the
other half on. Through a stage, the channels of every producer (the branches' last convs) are spread
over the stream, and each reaches one reader (an "exit": the chunk a branch reads, or the stage's
output) in its own place. Tying them channel by channel, as a chunk alone is tied (split.py), would
tie the whole stage together: every shuffle interleaves two more producers.

So a stream is one group of its own kind (`Shuffle`, on `ChannelGroup.shuffle`): its channels are
every producer's output channels side by side, and the model's code is replayed on channel ids. A cut
keeps the same number m of channels in every producer; replayed at that width, the stream delivers a
fixed number of each producer's channels to each exit, which fixes how many the cut keeps of each
producer's channels that reach that exit in the model as it is (which ones: by importance). Every exit
then reads exactly the channels it read before, removed ones aside, in the order the smaller model's
shuffles give, so each reader's columns (and a depthwise conv's or BatchNorm's per-channel entries)
are taken in that order. The width m is one of those the replay allows (a shuffle needs a multiple
of g, a chunk equal halves where the stream is read apart).

The walk calls `visit` at the stream's nodes and `assemble` after; a stream that cannot be one group
is walked again with the ordinary rules (graph._walk_streams), and `explain` says why first.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import fx

from .stream_graph import Region, shape_of

def run(steps, streams: dict[fx.Node, torch.Tensor]) -> dict[fx.Node, object] | None:
    """Replay `steps` on 1-D tensors of channel ids (one per input), as the model's code would run them
    at those widths; None where it would fail (a shuffle of a width g does not divide, a missing chunk)."""
    val = dict(streams)
    for node, kind, tensors, arg in steps:
        if kind == "cat":
            val[node] = torch.cat([val[t] for t in tensors])
        elif kind == "chunk":
            val[node] = torch.chunk(val[tensors[0]], arg)
        elif kind == "item":
            parts = val[tensors[0]]
            if arg >= len(parts) or len(parts[arg]) == 0:
                return None
            val[node] = parts[arg]
        else:
            x = val[tensors[0]]
            if len(x) % arg:
                return None
            val[node] = x.view(arg, -1).t().flatten()
    return val


@dataclass(eq=False)
class Shuffle:
    """A shuffled stream as one group: its channels are the producers' output channels side by side
    (producer i owns ids [i·width, (i+1)·width)). `rows[producer]` holds the id of each of its output rows,
    `index[member]` the id at each channel position of a reader (its input columns) or per-channel module
    (its entries): a conv may write the stream's channels and read them too."""
    steps: list                    # (step, kind, inputs, argument), steps and inputs numbered
    inputs: list[int]              # in producer order
    exits: list[int]
    producers: list[str]
    width: int
    rows: dict[str, torch.Tensor]
    index: dict[str, torch.Tensor]
    exit_of: dict[str, int]        # reader -> which exit it reads (producer-side members: absent)
    fate: torch.Tensor             # per id: the exit it reaches
    axis: dict[str, int]           # reader or per-channel module -> the channel axis of its input
    spent: bool = False            # cut already: its places are the uncut model's
    _plans: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.producers) * self.width

    def plan(self, m: int) -> torch.Tensor | None:
        """[producers, exits] counts: of m channels kept per producer, how many reach each exit when the
        smaller model runs; None when it cannot run at width m, or when a producer's kept channels, in
        their order, could not be the ones that reach those exits."""
        if m not in self._plans:
            self._plans[m] = self._plan(m)
        return self._plans[m]

    def _plan(self, m: int) -> torch.Tensor | None:
        if not 1 <= m <= self.width:
            return None
        val = run(self.steps, {x: torch.arange(i * m, (i + 1) * m) for i, x in enumerate(self.inputs)})
        if val is None:
            return None
        slot_exit = torch.full((len(self.producers) * m,), -1)
        for e, node in enumerate(self.exits):
            slot_exit[val[node]] = e
        if (slot_exit < 0).any():
            return None
        counts = torch.zeros(len(self.producers), len(self.exits), dtype=torch.long)
        for p in range(len(self.producers)):
            mine, orig = slot_exit[p * m:(p + 1) * m], self.fate[p * self.width:(p + 1) * self.width]
            # the kept channels, sorted, run in the same exit order as the model's own: block by block
            rank = {int(e): r for r, e in enumerate(torch.unique_consecutive(orig))}
            ranks = torch.tensor([rank.get(int(e), -1) for e in mine])
            if (ranks < 0).any() or (ranks[1:] < ranks[:-1]).any():
                return None
            counts[p] = torch.bincount(mine, minlength=len(self.exits))
        have = torch.stack([torch.bincount(self.fate[p * self.width:(p + 1) * self.width], minlength=len(self.exits))
                            for p in range(len(self.producers))])
        return counts if (counts <= have).all() else None

    def widths(self) -> list[int]:
        """Every width m (channels per producer) a cut may keep."""
        return [m for m in range(1, self.width + 1) if self.plan(m) is not None]

    def at_least(self, m: int, round_to: int = 1) -> int:
        """The smallest width a cut may keep of at least m (a multiple of round_to when one is)."""
        ok = [w for w in self.widths() if w >= m]
        return next((w for w in ok if w % round_to == 0), ok[0])

    def width_for(self, count: int) -> int:
        """The width (channels per producer) a cut keeping about `count` of the stream's channels keeps:
        the smallest allowed one with at least as many."""
        return self.at_least(-(-int(count) // len(self.producers)))

    def keep(self, m: int, scores: torch.Tensor | None = None) -> torch.Tensor:
        """Ids kept at width m: per producer and exit, the channels the plan says, highest `scores` first
        (the first ones without scores). Ascending."""
        counts, out = self.plan(m), []
        for p in range(len(self.producers)):
            for e in range(len(self.exits)):
                ids = p * self.width + torch.nonzero(self.fate[p * self.width:(p + 1) * self.width] == e).flatten()
                k = int(counts[p, e])
                if scores is not None:
                    ids = ids[torch.argsort(-scores[ids].double(), stable=True)[:k]]
                out.append(ids[:k])
        return torch.cat(out).sort().values

    def fill(self, keep_mask: torch.Tensor, round_to: int = 1) -> torch.Tensor:
        """The smallest keep set over `keep_mask` a cut may keep (channels taken back stay as they are)."""
        need = torch.zeros(len(self.producers), len(self.exits), dtype=torch.long)
        for p in range(len(self.producers)):
            span = slice(p * self.width, (p + 1) * self.width)
            need[p] = torch.bincount(self.fate[span][keep_mask[span]], minlength=len(self.exits))
        ok = [m for m in self.widths() if (self.plan(m) >= need).all()]
        m = next((w for w in ok if w % round_to == 0), ok[0])
        out, counts = keep_mask.clone(), self.plan(m)
        for p in range(len(self.producers)):
            for e in range(len(self.exits)):
                ids = p * self.width + torch.nonzero(self.fate[p * self.width:(p + 1) * self.width] == e).flatten()
                spare = ids[~out[ids]]
                out[spare[: int(counts[p, e]) - int(out[ids].sum())]] = True
        return out

    def check(self, keep: torch.Tensor) -> str | None:
        """Why `keep` (ascending ids) is no cut of this stream, or None."""
        per = torch.bincount(keep // self.width, minlength=len(self.producers))
        m = int(per[0])
        if (per != m).any():
            return f"a shuffled stream keeps as many channels of each producer, got {per.tolist()}"
        counts = self.plan(m)
        if counts is None:
            widths = self.widths()
            return f"a shuffled stream cannot run at {m} channels per producer (widths it can: " \
                   f"{', '.join(map(str, widths[:8]))}{', ...' if len(widths) > 8 else ''})"
        for p in range(len(self.producers)):
            got = torch.bincount(self.fate[keep[keep // self.width == p]], minlength=len(self.exits))
            if (got != counts[p]).any():
                return f"{self.producers[p]} keeps {got.tolist()} channels per reader, the stream at width {m} " \
                       f"delivers {counts[p].tolist()}"
        return None

    def _where(self, member: str, rows: bool = False) -> torch.Tensor:
        index = (self.rows if rows else self.index)[member]
        where = torch.full((self.size,), -1, dtype=torch.long)
        where[index] = torch.arange(len(index))
        return where

    def places(self, member: str, ids: torch.Tensor, rows: bool = False) -> torch.Tensor:
        """Where `member` holds those of channels `ids` it has (among its output rows, with `rows`), in the
        model as it is."""
        at = self._where(member, rows)[torch.as_tensor(ids, dtype=torch.long)]
        return at[at >= 0]

    def positions(self, member: str, keep: torch.Tensor) -> torch.Tensor:
        """The positions of `member`'s channels to keep (`keep`: ascending ids a cut may keep), in the
        order the cut model has them there."""
        if member not in self.exit_of:  # a producer's rows (and its own per-channel modules): in order
            return self.places(member, keep)
        where = self._where(member)
        streams = {x: keep[(keep // self.width) == i] for i, x in enumerate(self.inputs)}
        return where[run(self.steps, streams)[self.exits[self.exit_of[member]]]]


def visit(w, region: Region, node: fx.Node) -> None:
    """The walk meets a node of `region`: note the groups entering it; an exit starts a group of its own
    (its readers join it as usual), assembled with the producers' after the walk (`assemble`)."""
    entering = region.entering
    for a in node.all_input_nodes:
        if a not in region.inputs or a in entering:
            continue
        label = w.label.get(a)
        if label is None or w.axis.get(a) != 1:
            region.foreign = True
            region.why = region.why or f"{a.name} enters it at {node.name} with no channels on axis 1"
            continue
        if len(label) != 1 or label[0][1] != 1:
            region.why = region.why or f"{a.name} enters it at {node.name} as no single group of channels"
            continue
        entering[a] = label[0][0]
        if w.shifted.get(a):
            region.shifted = w.shifted[a]
    if node in region.exits:
        w.start(node, shape_of(node)[1])
        region.exit_gid[node] = w.label[node][0][0]


def _plain_reader(m) -> bool:
    from .ops import CONV
    from .std_conv import is_std_conv
    return (isinstance(m, torch.nn.Linear) or (isinstance(m, CONV) and m.groups == 1)) and not is_std_conv(m)


def _per_channel(m) -> bool:
    from .ops import BATCHNORM, CONV
    from .std_conv import is_std_conv
    depthwise = isinstance(m, CONV) and m.groups == m.in_channels == m.out_channels
    return (isinstance(m, BATCHNORM) or depthwise) and not is_std_conv(m)


def _members_problem(w, grp) -> str | None:
    """Why a group's members cannot be cut as part of a stream (only plain readers and per-channel
    modules, each reading these channels alone), or None."""
    if grp.parameters or grp.counters or grp.layout or grp.along or grp.cells or grp.blocks > 1 or grp.before \
            or grp.passthrough_per or grp.repeats:
        return "its channels meet more than plain convs, BatchNorms and depthwise convs"
    for name, per in grp.consumers:
        if per != 1 or not _plain_reader(w.modules[name]) or len(w.members.get(name, ())) != 1:
            return f"{name} reads them in a way a stream cut does not follow"
    for name in grp.passthrough:
        if not _per_channel(w.modules[name]) or len(w.members.get(name, ())) != 1:
            return f"{name} reads them in a way a stream cut does not follow"
    return None


def assemble(w, regions: list[Region], traced: fx.GraphModule) -> dict[Region, str]:
    """After the walk: each stream whose producers and readers allow it becomes one group (`Shuffle`).
    Returns the streams that cannot, with why, and then changes nothing: the caller walks again without
    them, leaving their ops to the ordinary rules (which block what they do not follow)."""
    built, failed, owner = [], {}, {}
    called = {n.target: n for n in traced.graph.nodes if n.op == "call_module"}
    for region in regions:
        got = region.defect or region.why or _stream_or_why(w, region, region.entering, region.exit_gid, called)
        for gid in [*region.entering.values(), *region.exit_gid.values()]:  # two streams meeting (an add)
            other = owner.setdefault(w.g.find(gid), region)
            if other is not region:
                failed[other] = got = "its channels meet another stream's"
        if isinstance(got, str):
            failed[region] = got
        else:
            built.append((region, got))
    if failed:
        return failed
    for region, shuffle in built:
        entering, exit_gid = region.entering, region.exit_gid
        ins = [w.g.get(entering[x]) for x in region.inputs]
        outs = [w.g.get(exit_gid[e]) for e in region.exits]
        gid = w.g.new(shuffle.size)
        grp = w.g.groups[gid]
        for g in ins + outs:
            grp.passthrough += g.passthrough
            grp.consumers += g.consumers
            grp.blockers += g.blockers
            grp.shifts += g.shifts
        grp.producers = list(shuffle.producers)
        if region.shifted:
            grp.shifts.append(f"the stream carries {region.shifted}")
        grp.shuffle = shuffle
        for g in ins + outs:
            del w.g.groups[g.id]
            w.g.parent[g.id] = gid
    return {}


def explain(w, failed: dict[Region, str]) -> None:
    """Say why each stream that is a channel stream could not be cut, first, on the groups entering it
    that the ordinary rules left whole."""
    for region, why in failed.items():
        if region.foreign:
            continue
        message = f"a shuffled stream ({region.exits[0].name if region.exits else region.steps[-1][0].name}): {why}"
        for x in region.inputs:
            for gid, _ in w.label.get(x, ()):
                grp = w.g.get(gid)
                if grp.blockers and message not in grp.blockers:
                    grp.blockers.insert(0, message)


def _stream_or_why(w, region: Region, entering: dict, exit_gid: dict, called: dict) -> "Shuffle | str":
    """The stream as a `Shuffle`, or why it cannot be cut. `called`: module path -> its call node."""
    if not region.exits or len(entering) != len(region.inputs) or len(exit_gid) != len(region.exits):
        return "its channels are not all followed"
    roots = [w.g.find(g) for g in [*entering.values(), *exit_gid.values()]]
    if any(r not in w.g.groups for r in roots):
        return "a reader cuts it apart (a split or slice outside the stream's own chunks)"
    if len(set(roots)) != len(roots):
        return "its inputs or readers share channels with each other (a residual add, or the same tensor twice)"
    sized = {w.g.find(gid) for gids, *_ in w.width_checks for gid, _ in w.resolve([(g, 1) for g in gids])}
    if sized & set(roots):  # the attribute a cut would set counts one producer's or reader's share
        return "a reshape or split sizes part of it by an attribute"
    ins = [w.g.groups[w.g.find(entering[x])] for x in region.inputs]
    outs = [w.g.groups[w.g.find(exit_gid[e])] for e in region.exits]
    for x, g in zip(region.inputs, ins):
        if len(g.producers) != 1 or not _plain_reader(w.modules[g.producers[0]]) or \
                len(w.produced.get(g.producers[0], ())) != 1:
            return f"{x.name} enters it from no single plain conv or Linear ({', '.join(g.producers) or 'none'})"
    if any(g.producers for g in outs):
        return "a reader's channels are produced elsewhere too"
    for g in ins + outs:
        problem = _members_problem(w, g)
        if problem:
            return problem
    width = ins[0].size
    if any(g.size != width for g in ins):
        return f"its producers differ in width ({sorted({g.size for g in ins})})"
    val = run(region.steps, {x: torch.arange(i * width, (i + 1) * width) for i, x in enumerate(region.inputs)})
    if val is None:
        return "replaying it on channel ids failed"
    reached = torch.cat([val[e] for e in region.exits])
    size = width * len(ins)
    if len(reached) != size or not torch.equal(reached.sort().values, torch.arange(size)):
        return "a channel of it reaches no reader, or two"
    fate = torch.empty(size, dtype=torch.long)
    for e, node in enumerate(region.exits):
        fate[val[node]] = e
    for i in range(len(ins)):
        blocks = torch.unique_consecutive(fate[i * width:(i + 1) * width])
        if len(blocks) != len(set(blocks.tolist())):
            return f"{ins[i].producers[0]}'s channels reach its readers interleaved"
    rows = {g.producers[0]: torch.arange(i * width, (i + 1) * width) for i, g in enumerate(ins)}
    index, exit_of, axis = {}, {}, {}
    for g in ins + outs:
        for name in [*g.passthrough, *(n for n, _ in g.consumers)]:
            if name not in called:
                return f"{name} reads it through a functional call"
            axis[name] = w.axis.get(called[name].args[0], 1)
    for i, g in enumerate(ins):
        for name in [*g.passthrough, *(n for n, _ in g.consumers)]:
            index[name] = torch.arange(i * width, (i + 1) * width)
    for e, g in enumerate(outs):
        for name in [*g.passthrough, *(n for n, _ in g.consumers)]:
            index[name], exit_of[name] = val[region.exits[e]], e
    if len(index) != sum(len(g.passthrough) + len(g.consumers) for g in ins + outs):
        return "a module reads it in two places"
    # the program on numbers, not traced nodes (a group is copied with the model; a node drags its graph along)
    number = {n: i for i, n in enumerate(n for n, *_ in region.steps)}
    number.update({x: -1 - i for i, x in enumerate(region.inputs)})
    steps = [(number[n], kind, tuple(number[t] for t in tensors), arg) for n, kind, tensors, arg in region.steps]
    shuffle = Shuffle(steps, [number[x] for x in region.inputs], [number[e] for e in region.exits],
                      [g.producers[0] for g in ins], width, rows, index, exit_of, fate, axis)
    if shuffle.widths() == [width]:
        return f"it runs at no smaller width than its own {width} channels per producer"
    return shuffle
