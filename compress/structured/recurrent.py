"""Cutting nn.RNN / nn.LSTM / nn.GRU: hidden units (any number of layers, either direction), a projected
LSTM's cells and projections, and input features.

A hidden unit u of direction d is channel d·hidden + u (the layer's output is [forward | backward]).
It is row g·hidden + u of that direction's weight_ih_lk, weight_hh_lk and both biases for each gate
g, and column u of its weight_hh_lk (the unit's state read back at the next step). With those rows
zeroed the unit's pre-activations are 0 at every step, so from a zero initial state its output stays
exactly 0 (LSTM: c ← σ(0)·c + σ(0)·tanh(0); GRU: h ← σ(0)·h + (1 − σ(0))·tanh(0); RNN: tanh(0) or
relu(0)): removing it is exact.

One nn.LSTM has one hidden size for all its layers, so a stacked layer's channel is unit u in every
layer at once: its rows in each layer, and the columns of the next layer's weight_ih that read it
(layer k + 1 reads layer k's output, [forward | backward] like the channels).

A projected LSTM (`proj_size` P) outputs h = W_hr·(o ⊙ tanh(c)): two kinds of channels. Its cells are
the hidden units above, except that what reads them back is column u of weight_hr (the projection),
not of weight_hh. Its projections are what it outputs: row p of weight_hr, read back by column p of
weight_hh and of the next layer's weight_ih; with row p zeroed, h_p is 0 at every step.
"""
from __future__ import annotations

import torch
from torch import nn

from .weights import gates


def _suffixes(m: nn.RNNBase) -> list[str]:
    return ["", "_reverse"] if m.bidirectional else [""]


def projected(m: nn.Module) -> bool:
    """Whether `m` is an LSTM with a projection (its output narrower than its cells)."""
    return bool(getattr(m, "proj_size", 0))


def unit_rows(m: nn.RNNBase, biases: bool = True, cells: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every tensor holding a recurrent layer's hidden units as rows (every layer), with the channel
    (unit of its direction) of each row: its weights, then (with `biases`) its biases. For a projected
    LSTM: its projections (rows of weight_hr), or with `cells` its cells (the gate rows)."""
    if projected(m) and not cells:
        p = m.proj_size
        return [(getattr(m, f"weight_hr_l{k}{sfx}"), d * p + torch.arange(p))
                for k in range(m.num_layers) for d, sfx in enumerate(_suffixes(m))]
    h, out = m.hidden_size, []
    kinds = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if biases and m.bias else [])
    for kind in kinds:
        for k in range(m.num_layers):
            for d, sfx in enumerate(_suffixes(m)):
                out.append((getattr(m, f"{kind}_l{k}{sfx}"), (d * h + torch.arange(h)).repeat(gates(m))))
    return out


def _set(m: nn.RNNBase, name: str, value: torch.Tensor) -> None:
    old = getattr(m, name)
    # nn.RNNBase updates its list of flat weights in place on assignment: give it a list of its own
    # first, so that an undo (undo.snapshot, which keeps the old list) gets the old weights back
    m._flat_weights = list(m._flat_weights)
    setattr(m, name, nn.Parameter(value.clone(), requires_grad=old.requires_grad))


@torch.no_grad()
def cut_recurrent_hidden(m: nn.RNNBase, keep: torch.Tensor, cells: bool = False) -> None:
    """Keep channels `keep` (sorted; as many units of each direction) of a recurrent layer, in every
    layer, in place: its hidden units, or a projected LSTM's projections (with `cells`, its cells)."""
    proj = projected(m)
    width = m.proj_size if proj and not cells else m.hidden_size
    h, keep = m.hidden_size, torch.as_tensor(keep, dtype=torch.long)
    units = [keep[(keep // width) == d] - d * width for d in range(len(_suffixes(m)))]
    if len({len(u) for u in units}) != 1:
        raise ValueError(f"{type(m).__name__}: both directions must keep as many units ({[len(u) for u in units]})")
    hidden = len(units[0]) if cells or not proj else h
    proj_size = len(units[0]) if proj and not cells else m.proj_size
    if proj and proj_size == hidden:  # torch's kernel would take the layer for one without projection
        raise ValueError(f"{type(m).__name__}: a projected layer cannot keep as many projections as cells ({hidden})")
    for k in range(m.num_layers):
        for sfx, u in zip(_suffixes(m), units):
            if cells or not proj:  # the units' rows in every gate
                rows = torch.cat([g * h + u for g in range(gates(m))])
                for kind in ("weight_ih", "weight_hh", *(("bias_ih", "bias_hh") if m.bias else ())):
                    _set(m, f"{kind}_l{k}{sfx}", getattr(m, f"{kind}_l{k}{sfx}")[rows])
                if proj:  # read back by the projection
                    _set(m, f"weight_hr_l{k}{sfx}", getattr(m, f"weight_hr_l{k}{sfx}")[:, u])
            if not cells:  # what the layer outputs: read back at the next step and by the next layer
                if proj:
                    _set(m, f"weight_hr_l{k}{sfx}", getattr(m, f"weight_hr_l{k}{sfx}")[u])
                _set(m, f"weight_hh_l{k}{sfx}", getattr(m, f"weight_hh_l{k}{sfx}")[:, u])
                if k:
                    _set(m, f"weight_ih_l{k}{sfx}", getattr(m, f"weight_ih_l{k}{sfx}")[:, keep])
    m.hidden_size, m.proj_size = hidden, proj_size


@torch.no_grad()
def cut_recurrent_inputs(m: nn.RNNBase, cols: torch.Tensor) -> None:
    """Keep input features `cols` of a recurrent layer (its first layer's input weights, both directions)."""
    for sfx in _suffixes(m):
        _set(m, "weight_ih_l0" + sfx, getattr(m, "weight_ih_l0" + sfx)[:, cols])
    m.input_size = len(cols)
