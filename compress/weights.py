"""A user's trained weights: safetensors, or a .pt/.pth state_dict loaded with weights_only=True
(also inside {"state_dict": ...} or {"model": ...}, and with DDP's `module.` prefixes)."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from .errors import UserError

WRAPPERS = ("state_dict", "model", "model_state_dict", "module")
PREFIXES = ("module.", "_orig_mod.")


def weights_limit(model: nn.Module) -> int:
    """The most bytes a weights file for `model` may hold: 4x its state_dict (the file may carry an
    optimizer's state too: Adam keeps two more tensors per weight) plus 1 MiB for the container."""
    return 4 * sum(t.numel() * t.element_size() for t in model.state_dict().values()) + (1 << 20)


def load_weights(path: str | Path, max_bytes: int | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, checked: a dict of finite tensors, wrapper and prefixes removed.
    With `max_bytes` (see `weights_limit`), a larger file is refused before it is read."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"model.weights: {path}: file not found")
    if not path.is_file():  # a FIFO or a device (/dev/zero) would hang or grow memory
        raise UserError(f"model.weights: {path}: not a regular file")
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise UserError(f"model.weights: {path}: {size} bytes, more than the {max_bytes} a weights file of this "
                        f"model can hold (4x its parameters and buffers)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            with warnings.catch_warnings():  # torch's two-line warning would come before our one line
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle with code in it, a truncated or foreign file: one line, never a traceback
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        hint = " (it is not a weights-only state_dict: sparsepipe never unpickles code)" if "weights_only" in str(e) \
            or "Unsupported global" in str(e) else ""
        raise UserError(f"model.weights: {path}: cannot load{hint} ({first[:160]})") from None
    for key in WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise UserError(f"model.weights: {path}: not a state_dict (expected a mapping of names to tensors)")
    out = {}
    for key, value in state.items():
        for prefix in PREFIXES:
            key = key.removeprefix(prefix)
        check_finite(value, key, f"model.weights: {path}")
        out[key] = value
    return out


def check_finite(value: torch.Tensor, key: str, where: str) -> None:
    if value.is_floating_point() and not torch.isfinite(value).all():
        raise UserError(f"{where}: tensor {key!r} holds NaN or inf")


def apply_weights(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path, name: str) -> None:
    """Load `state` into `model` exactly, or say in one line which keys do not fit."""
    want = model.state_dict()
    heads = {k.split(".", 1)[0] for k in want}
    if not set(state) & set(want) and len(heads) == 1:  # a wrapper, e.g. RepeatChannels for grey input
        (head,) = heads
        state = {f"{head}.{k}": v for k, v in state.items()}
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    shapes = [f"{k}: file {list(state[k].shape)} vs model {list(want[k].shape)}" for k in want
              if k in state and state[k].shape != want[k].shape]
    problems = ([f"missing keys {missing[:3]}"] if missing else []) + \
        ([f"unexpected keys {unexpected[:3]}"] if unexpected else []) + \
        ([f"wrong shape {shapes[0]}"] if shapes else [])
    if problems:
        raise UserError(f"model.weights: {path}: does not fit model {name!r}: " + "; ".join(problems))
    with torch.no_grad():
        model.load_state_dict({k: v.to(want[k].dtype) for k, v in state.items()})
