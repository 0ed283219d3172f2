"""Multiply-accumulate counts of one forward pass: torch's FlopCounterMode for the dense count
(every matmul and conv, per token on transformers), a forward hook for the nonzero-weight count."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .modes import evaluating


def _cpu_attention_flops(query, key, value, *args, out_val=None, **kwargs) -> int:
    """QKᵀ and AV of the CPU attention kernel, which FlopCounterMode has no formula for."""
    return sdpa_flop_count(query, key, value)  # FlopCounterMode passes shapes


_EXTRA = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> dict:
    """MACs for one sample: {'dense', 'sparse', 'per_layer': {name: (dense, sparse)}}.

    'dense' is FlopCounterMode's total over 2 (a MAC is two FLOPs), plus time steps × weights for a
    recurrent layer it does not see (the CPU LSTM kernel). 'sparse' and 'per_layer' cover Conv/Linear
    and recurrent layers: positions × weights, and positions × nonzero weights (what an ideal sparse
    kernel would do). A spiking model's counts are per time step.
    """
    per_layer: dict[str, tuple[int, int]] = {}
    hooks = []

    def hook(name):
        def fn(module, inputs, output):
            w = module.weight
            # where the weight is applied: per output pixel (conv), per token or time step (Linear)
            positions = output.numel() // w.shape[0]
            per_layer[name] = (positions * w.numel(), positions * int((w != 0).sum()))
        return fn

    def recurrent_hook(name):
        def fn(module, inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            out = out.data if isinstance(out, PackedSequence) else out
            steps = out.numel() // out.shape[-1]  # time steps (× batch, which is 1 here)
            weights = [p for n, p in module.named_parameters() if n.startswith("weight_")]
            dense, sparse = per_layer.get(name, (0, 0))  # a layer called twice counts twice
            per_layer[name] = (dense + steps * sum(w.numel() for w in weights),
                               sparse + steps * sum(int((w != 0).sum()) for w in weights))
        return fn

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            hooks.append(module.register_forward_hook(hook(name)))
        elif isinstance(module, (nn.RNN, nn.LSTM, nn.GRU)):
            hooks.append(module.register_forward_hook(recurrent_hook(name)))
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        # eval-mode transformer layers would take a fused kernel that FlopCounterMode does not see
        torch.backends.mha.set_fastpath_enabled(False)
        with counter, evaluating(model):
            model(torch.zeros(1, *input_shape))
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for h in hooks:
            h.remove()
    dense = counter.get_total_flops() // 2
    counted = counter.get_flop_counts()
    for name, module in model.named_modules():  # a fused kernel (CPU LSTM) FlopCounterMode does not see
        if isinstance(module, (nn.RNN, nn.LSTM, nn.GRU)) and name in per_layer and \
                not sum(counted.get(f"{type(model).__name__}.{name}", {}).values()):
            dense += per_layer[name][0]
    steps = int(getattr(model, "time_steps", 1) or 1)
    per_layer = {n: (d // steps, s // steps) for n, (d, s) in per_layer.items()}
    return {"dense": dense // steps, "sparse": sum(s for _, s in per_layer.values()),
            "per_layer": per_layer}
