"""Cutting nn.RNN / nn.LSTM / nn.GRU: hidden units (any number of layers, either direction; no
projection), and input features.

A hidden unit u of direction d is channel d·hidden + u (the layer's output is [forward | backward]).
It is row g·hidden + u of that direction's weight_ih_lk, weight_hh_lk and both biases for each gate
g, and column u of its weight_hh_lk (the unit's state read back at the next step). With those rows
zeroed the unit's pre-activations are 0 at every step, so from a zero initial state its output stays
exactly 0 (LSTM: c ← σ(0)·c + σ(0)·tanh(0); GRU: h ← σ(0)·h + (1 − σ(0))·tanh(0); RNN: tanh(0) or
relu(0)): removing it is exact.

One nn.LSTM has one hidden size for all its layers, so a stacked layer's channel is unit u in every
layer at once: its rows in each layer, and the columns of the next layer's weight_ih that read it
(layer k + 1 reads layer k's output, [forward | backward] like the channels).
"""
from __future__ import annotations

import torch
from torch import nn

from .weights import gates


def _suffixes(m: nn.RNNBase) -> list[str]:
    return ["", "_reverse"] if m.bidirectional else [""]


def unit_rows(m: nn.RNNBase, biases: bool = True) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every tensor holding a recurrent layer's hidden units as rows (every layer), with the channel
    (unit of its direction) of each row: its weights, then (with `biases`) its biases."""
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
def cut_recurrent_hidden(m: nn.RNNBase, keep: torch.Tensor) -> None:
    """Keep channels `keep` (sorted; as many units of each direction) of a recurrent layer without
    projection, in every layer, in place."""
    if getattr(m, "proj_size", 0):
        raise ValueError(f"{type(m).__name__}: the hidden units of a projected layer are not cut")
    h, keep = m.hidden_size, torch.as_tensor(keep, dtype=torch.long)
    units = [keep[(keep // h) == d] - d * h for d in range(len(_suffixes(m)))]
    if len({len(u) for u in units}) != 1:
        raise ValueError(f"{type(m).__name__}: both directions must keep as many units ({[len(u) for u in units]})")
    for k in range(m.num_layers):
        for sfx, u in zip(_suffixes(m), units):
            rows = torch.cat([g * h + u for g in range(gates(m))])
            w_ih = getattr(m, f"weight_ih_l{k}{sfx}")[rows]
            _set(m, f"weight_ih_l{k}{sfx}", w_ih if k == 0 else w_ih[:, keep])  # k > 0 reads layer k − 1
            _set(m, f"weight_hh_l{k}{sfx}", getattr(m, f"weight_hh_l{k}{sfx}")[rows][:, u])
            if m.bias:
                _set(m, f"bias_ih_l{k}{sfx}", getattr(m, f"bias_ih_l{k}{sfx}")[rows])
                _set(m, f"bias_hh_l{k}{sfx}", getattr(m, f"bias_hh_l{k}{sfx}")[rows])
    m.hidden_size = len(units[0])


@torch.no_grad()
def cut_recurrent_inputs(m: nn.RNNBase, cols: torch.Tensor) -> None:
    """Keep input features `cols` of a recurrent layer (its first layer's input weights, both directions)."""
    for sfx in _suffixes(m):
        _set(m, "weight_ih_l0" + sfx, getattr(m, "weight_ih_l0" + sfx)[:, cols])
    m.input_size = len(cols)
