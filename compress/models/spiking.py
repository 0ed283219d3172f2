"""Spiking networks (spikingjelly, multi-step): a small spiking CNN and SEW ResNet-18/34.

`Spiking` wraps a multi-step network so that it looks like any classifier: it takes [B, C, H, W],
repeats the image over T time steps (direct encoding), resets every neuron's state first (no
state survives from one batch to the next), and returns the time-averaged output. Its Conv/Linear
layers are ordinary nn.Conv2d / nn.Linear subclasses, so every pruner prunes them; neurons are
untouched. `export_copy()` gives an equivalent model with stateless neurons for ONNX export.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import UserError


def _sj():
    try:
        from spikingjelly.activation_based import functional, layer, neuron, surrogate
    except ImportError as e:  # a clear message instead of a traceback deep in model building
        raise UserError(f"model.name: spiking models need spikingjelly; install sparsepipe[snn] ({e})") from None
    return functional, layer, neuron, surrogate


def make_neuron(kind: str):
    _, _, neuron, surrogate = _sj()
    common = dict(surrogate_function=surrogate.ATan(), detach_reset=True, step_mode="m")
    if kind == "if":
        return neuron.IFNode(**common)
    if kind == "lif":
        return neuron.LIFNode(tau=2.0, **common)
    raise UserError(f"model.neuron: expected 'if' or 'lif', got {kind!r}")


class Spiking(nn.Module):
    """[B, C, H, W] → time-averaged output of a multi-step spiking network over `time_steps`."""

    def __init__(self, net: nn.Module, time_steps: int):
        super().__init__()
        self.net, self.time_steps = net, time_steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        functional, *_ = _sj()
        functional.reset_net(self.net)
        seq = x.unsqueeze(0).repeat(self.time_steps, *([1] * x.dim()))
        return self.net(seq).mean(0)

    def export_copy(self) -> nn.Module:
        """A copy whose neurons keep no state between calls (their potential starts inside forward)."""
        _, _, neuron, _ = _sj()
        clone = copy.deepcopy(self)
        for name, module in list(clone.named_modules()):
            if isinstance(module, neuron.BaseNode):
                parent = clone.get_submodule(name.rpartition(".")[0]) if "." in name else clone
                setattr(parent, name.rpartition(".")[2], StatelessNeuron.like(module))
        return clone

    @staticmethod
    def report_summary(dense: nn.Module, sparse: nn.Module, x: torch.Tensor) -> dict:
        """Firing rate of every neuron layer (PyTorch, dense and sparse) and the layers that never fire."""
        rates = {"dense": firing_rates(dense, x), "sparse": firing_rates(sparse, x)}
        return {"time_steps": getattr(sparse, "time_steps", None), "firing_rates": rates,
                "silent_layers": {v: [n for n, r in rates[v].items() if r == 0.0] for v in rates},
                "agreement_measure": "argmax agreement and mean |difference| (spikes are discontinuous)"}


class StatelessNeuron(nn.Module):
    """IF / LIF dynamics over the time axis with the same parameters as a spikingjelly node."""

    def __init__(self, v_threshold: float, v_reset: float | None, tau: float | None, decay_input: bool):
        super().__init__()
        self.v_threshold, self.v_reset, self.tau, self.decay_input = v_threshold, v_reset, tau, decay_input

    @classmethod
    def like(cls, node) -> "StatelessNeuron":
        tau = float(node.tau) if hasattr(node, "tau") else None
        return cls(float(node.v_threshold), None if node.v_reset is None else float(node.v_reset), tau,
                   bool(getattr(node, "decay_input", True)))

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        rest = 0.0 if self.v_reset is None else self.v_reset
        v = torch.full_like(x_seq[0], rest)
        spikes = []
        for t in range(x_seq.shape[0]):
            x = x_seq[t]
            if self.tau is None:                       # IF: integrate
                v = v + x
            elif self.decay_input:                     # LIF, spikingjelly's default form
                v = v + (x - (v - rest)) / self.tau
            else:
                v = v - (v - rest) / self.tau + x
            spike = (v >= self.v_threshold).to(x.dtype)
            v = v - spike * self.v_threshold if self.v_reset is None else spike * self.v_reset + (1 - spike) * v
            spikes.append(spike)
        return torch.stack(spikes)


def spiking_cnn(input_shape: tuple[int, ...], num_classes: int, time_steps: int, neuron: str,
                width: float = 1.0) -> Spiking:
    """conv-BN-neuron ×2 with pooling, then a Linear read-out (its output is averaged over time)."""
    _, layer, _, _ = _sj()
    c1, c2 = max(int(16 * width), 1), max(int(32 * width), 1)
    h, w = input_shape[1] // 4, input_shape[2] // 4
    net = nn.Sequential(
        layer.Conv2d(input_shape[0], c1, 3, padding=1, bias=False, step_mode="m"),
        layer.BatchNorm2d(c1, step_mode="m"), make_neuron(neuron), layer.MaxPool2d(2, step_mode="m"),
        layer.Conv2d(c1, c2, 3, padding=1, bias=False, step_mode="m"),
        layer.BatchNorm2d(c2, step_mode="m"), make_neuron(neuron), layer.MaxPool2d(2, step_mode="m"),
        layer.Flatten(step_mode="m"),
        layer.Linear(c2 * h * w, 128, step_mode="m"), make_neuron(neuron),
        layer.Linear(128, num_classes, step_mode="m"),
    )
    return Spiking(net, time_steps)


def sew_resnet(depth: int, input_shape: tuple[int, ...], num_classes: int, time_steps: int, neuron: str,
               cnf: str) -> Spiking:
    """SEW ResNet-18/34 (Fang et al. 2021) from spikingjelly, multi-step, any input channel count."""
    functional, layer, _, _ = _sj()
    from spikingjelly.activation_based import neuron as sj_neuron, surrogate
    from spikingjelly.activation_based.model import sew_resnet as zoo

    node = sj_neuron.IFNode if neuron == "if" else sj_neuron.LIFNode
    kwargs = dict(spiking_neuron=node, surrogate_function=surrogate.ATan(), detach_reset=True)
    if neuron == "lif":
        kwargs["tau"] = 2.0
    net = getattr(zoo, f"sew_resnet{depth}")(pretrained=False, cnf=cnf, num_classes=num_classes, **kwargs)
    if input_shape[0] != 3:
        net.conv1 = layer.Conv2d(input_shape[0], net.conv1.out_channels, 7, 2, 3, bias=False)
    functional.set_step_mode(net, "m")
    return Spiking(net, time_steps)


def firing_rates(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Mean spike rate of every neuron layer on input `x` (0 = silent layer)."""
    _, _, neuron, _ = _sj()
    rates, hooks = {}, []
    for name, module in model.named_modules():
        if isinstance(module, (neuron.BaseNode, StatelessNeuron)):
            hooks.append(module.register_forward_hook(
                lambda m, i, out, name=name: rates.__setitem__(name, float(out.float().mean()))))
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return rates
