"""Multiply-accumulate counts of Conv/Linear layers, dense and with zero weights skipped."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> dict:
    """MACs for one sample: {'dense', 'sparse', 'per_layer': {name: (dense, sparse)}}.

    A conv's MACs are out_h·out_w·(weights), a Linear's its weights; 'sparse' counts only
    nonzero weights (what an ideal sparse kernel would do).
    """
    per_layer: dict[str, tuple[int, int]] = {}
    hooks = []

    def hook(name):
        def fn(module, inputs, output):
            # H·W are the last two dims, also for multi-step spiking layers ([T, B, C, H, W]);
            # a spiking model's MACs are per time step.
            positions = output.shape[-2:].numel() if isinstance(module, nn.Conv2d) else 1
            w = module.weight
            per_layer[name] = (positions * w.numel(), positions * int((w != 0).sum()))
        return fn

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {"dense": sum(d for d, _ in per_layer.values()), "sparse": sum(s for _, s in per_layer.values()),
            "per_layer": per_layer}
