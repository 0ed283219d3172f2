"""The training loop: SGD with a per-step LR schedule, pruner hooks, metrics and checkpoints."""
from __future__ import annotations

import functools
import json
import math
import warnings
from typing import Callable
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from . import atomic, distributed
from torch.utils.data import Dataset

from .data import Data
from .distributed import World
from .loader import batches
from .errors import UserError
from .pruners import Pruner, TrainPlan
from .distill import distillation_loss
from .schedules import lr_at
from .config.train import TrainConfig
from .sparsity import global_sparsity, layer_sparsity


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device: {name!r} requested but no CUDA device is available")
    world = distributed.current()
    if name == "cuda" and world.size > 1:
        return torch.device("cuda", world.local_rank)  # one GPU per rank
    return torch.device(name)


def make_plan(cfg: TrainConfig, n_train: int, input_shape: tuple[int, ...] | None = None,
              latency_ratio: Callable[[nn.Module, nn.Module], float] | None = None) -> TrainPlan:
    """What the pruner plans over: the pruning phase (epochs − finetune_epochs) and the real LR per step."""
    steps = math.ceil(n_train / cfg.batch_size)
    lr = functools.partial(lr_at, total_steps=cfg.epochs * steps, base_lr=cfg.lr, kind=cfg.lr_schedule,
                           warmup_steps=cfg.warmup_epochs * steps,
                           milestones=tuple(m * steps for m in cfg.lr_milestones), gamma=cfg.lr_gamma)
    return TrainPlan(cfg.epochs - cfg.finetune_epochs, steps, lr, input_shape, latency_ratio)


@torch.no_grad()
def evaluate(model: nn.Module, split: Dataset, batch_size: int = 512, device: torch.device | str = "cpu",
             workers: int = 0, num_classes: int | None = None) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of `model` on `split`."""
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    for x, y in batches(split, batch_size, shuffle=False, workers=workers, world=World(), num_classes=num_classes,
                        where="test split"):
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    model.train(was_training)
    return correct / len(split), loss_sum / len(split)


def optimizer_groups(model: nn.Module, pruner: Pruner, weight_decay: float) -> list[dict]:
    """Optimizer parameter groups for a model with `pruner` attached: weight decay on weights, and on
    1-D parameters (biases, BatchNorm) only when the method's `decay_1d` option says so (its paper's
    setting); the pruner's own parameters (e.g. STR's thresholds) with the decay it asks for."""
    own = pruner.param_groups()
    taken = {id(p) for g in own for p in g["params"]}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]
    decay_1d = bool(getattr(pruner.options, "decay_1d", False))
    groups = [{"params": [p for p in rest if p.ndim > 1 or decay_1d], "weight_decay": weight_decay},
              {"params": [p for p in rest if p.ndim <= 1 and not decay_1d], "weight_decay": 0.0}]
    for g in own:
        wd = weight_decay if g.get("weight_decay") is None else g["weight_decay"]
        groups.append({**g, "weight_decay": wd})
    return groups


def _optimizer(model: nn.Module, pruner: Pruner, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD or AdamW over `optimizer_groups`."""
    groups = optimizer_groups(model, pruner, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def collapse_warnings(row: dict, num_classes: int, history: list[dict], requested: float = 0.0,
                      per_layer: dict[str, float] | None = None) -> list[str]:
    """What a person should hear about while pruning, once each: sparsity past 99% (or half a point past
    the `requested` sparsity, when that is higher), a layer pruned to nothing, accuracy at chance."""
    said = {w.split(":")[0] for r in history for w in r.get("warnings", [])}
    out = []
    limit = max(0.99, requested + 0.005)
    label = f"sparsity above {100 * limit:g}%"
    if row["sparsity"] > limit and label not in said:
        out.append(f"{label}: {row['sparsity']:.2%} at epoch {row['epoch']}; the model may collapse")
    empty = [name for name, value in (per_layer or {}).items() if value >= 1.0]
    if empty and "layer pruned to nothing" not in said:
        out.append(f"layer pruned to nothing: {', '.join(empty)} at epoch {row['epoch']} (100% zeros cut the "
                   "network; train longer, or keep it dense with prune.layers.exclude)")
    if row["test_accuracy"] <= 1.5 / num_classes and "accuracy at chance" not in said:
        out.append(f"accuracy at chance: {row['test_accuracy']:.2%} at epoch {row['epoch']} "
                   f"({1 / num_classes:.2%} for {num_classes} classes)")
    return out


def _tensorboard(out_dir: Path | None):
    """A SummaryWriter into out_dir/tensorboard when tensorboard is installed (else None)."""
    if out_dir is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


def train(model: nn.Module, pruner: Pruner, data: Data, cfg: TrainConfig, layers: list[str], *,
          seed: int = 0, out_dir: Path | None = None, desc: str = "train", progress: bool = True,
          log_start: bool = False, latency_ratio: Callable[[nn.Module, nn.Module], float] | None = None,
          teacher: nn.Module | None = None) -> list[dict]:
    """Train `model` with `pruner` attached; returns one metrics dict per epoch.

    With `out_dir`, writes metrics.jsonl, checkpoint.pt (and TensorBoard events when tensorboard is
    installed) after every epoch and resumes from an existing checkpoint (weights, optimizer,
    pruner state, epoch). With `log_start`, the first row (epoch 0) is the model as it starts
    (e.g. given weights), evaluated with the pruner attached, before any step. `latency_ratio`
    (see TrainPlan) lets a pruner aim at measured latency. With `teacher` (the dense model) and
    `cfg.distill` > 0, the loss also distills its outputs (compress/distill.py).
    """
    device = resolve_device(cfg.device)
    world = distributed.current()
    if cfg.batch_size % world.size:
        raise UserError(f"train.batch_size: {cfg.batch_size} does not split over {world.size} processes")
    plan = make_plan(cfg, len(data.train), data.input_shape, latency_ratio)
    pruner.attach(model, layers, plan)
    model.to(device)
    optimizer = _optimizer(model, pruner, cfg)
    pruner.bind_optimizer(optimizer)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    if teacher is not None and cfg.distill > 0:
        teacher = teacher.to(device).eval()
    else:
        teacher = None
    net = model
    if world.size > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if use_amp else None)

    history: list[dict] = []
    start_epoch = 0
    ckpt = out_dir / "checkpoint.pt" if out_dir else None
    if ckpt and ckpt.exists():
        state = load_checkpoint(ckpt, checkpoint_limit(model))
        if state["epoch"] > cfg.epochs:
            raise UserError(f"{ckpt}: checkpoint is at epoch {state['epoch']}, past train.epochs = {cfg.epochs}")
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            pruner.load_state_dict(state["pruner"])
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"{ckpt}: checkpoint does not fit this run's model, optimizer or pruner "
                            f"({first[:160]}); rerun with --force to train afresh") from None
        start_epoch, history = state["epoch"], state["history"]
    elif log_start:
        test_acc, test_loss = evaluate(model, data.test, device=device, workers=data.workers,
                                       num_classes=data.num_classes)
        history.append({"epoch": 0, "test_loss": test_loss, "test_accuracy": test_acc,
                        "sparsity": global_sparsity(model, layers)})
    writer = _tensorboard(out_dir) if world.main else None

    bar = tqdm(range(start_epoch, cfg.epochs), desc=desc, total=cfg.epochs, initial=start_epoch,
               disable=not progress or not world.main, leave=True, dynamic_ncols=True, mininterval=1.0)
    for epoch in bar:
        model.train()
        pruner.begin_epoch(epoch)
        step = epoch * plan.steps_per_epoch
        loss_sum, seen = 0.0, 0
        labels = torch.zeros(data.num_classes, dtype=torch.long, device=device)  # classes the epoch visited
        for x, y in batches(data.train, cfg.batch_size, shuffle=True, seed=seed, epoch=epoch, augment=data.augment,
                            workers=data.workers, world=world, num_classes=data.num_classes,
                            pin_memory=device.type == "cuda", where="train split"):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            lr = plan.lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, enabled=use_amp):
                out = net(x)
                loss = loss_fn(out, y)
                if teacher is not None:
                    with torch.no_grad():
                        target = teacher(x)
                    loss = distillation_loss(out, target, loss, cfg.distill, cfg.distill_temperature)
            if not torch.isfinite(loss):
                where = f"; last good checkpoint kept at {ckpt}" if ckpt and ckpt.exists() else ""
                raise UserError(f"training diverged at epoch {epoch} step {step} (loss={loss.item()}); "
                                f"lower train.lr{where}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)  # pruners see true gradients (GReg adds its penalty to them)
            pruner.after_backward(step)
            scaler.step(optimizer)
            scaler.update()
            pruner.after_step(step, lr)
            loss_sum += loss.item() * len(y)
            seen += len(y)
            labels.index_add_(0, y, torch.ones_like(y))  # on the device: no host sync per step
            step += 1
        pruner.end_epoch(epoch)
        loss_sum, seen, *counts = distributed.sum_across([loss_sum, seen, *labels.tolist()])
        empty = [c for c, n in enumerate(counts) if n == 0]
        if empty:  # a user's dataset whose labels could not be checked up front (they are not stored)
            raise UserError(f"data: the train split has no samples of class {empty[0]} ({len(empty)} of "
                            f"{data.num_classes} classes are empty); every class needs at least one")
        test_acc, test_loss = evaluate(model, data.test, device=device, workers=data.workers,
                                       num_classes=data.num_classes)
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum / seen, "test_loss": test_loss,
               "test_accuracy": test_acc, "sparsity": global_sparsity(model, layers), **pruner.log_state()}
        warnings = collapse_warnings(row, data.num_classes, history, pruner.requested_sparsity(),
                                     layer_sparsity(model, layers))
        if warnings:
            row["warnings"] = warnings
            if world.main:
                for w in warnings:
                    tqdm.write(f"{desc}: warning: {w}")
        history.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", acc=f"{test_acc:.3f}", sparsity=f"{row['sparsity']:.3f}",
                        refresh=False)
        if writer is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    writer.add_scalar(key, value, epoch + 1)
            writer.flush()
        if out_dir and world.main:
            atomic.write_text(out_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
            with atomic.atomic_path(ckpt) as tmp:
                torch.save({"epoch": epoch + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "pruner": pruner.state_dict(), "history": history}, tmp)
        distributed.barrier()  # no rank runs ahead of the checkpoint it would resume from
    bar.close()
    if out_dir and world.main and not (out_dir / "metrics.jsonl").exists():  # resumed at the last epoch
        atomic.write_text(out_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    if writer is not None:
        writer.close()
    return history


def checkpoint_limit(model: nn.Module) -> int:
    """The most bytes a training checkpoint of `model` may hold: 8x its state_dict (the weights, an
    optimizer's state of up to two more copies, a pruner's masks and scores) plus 16 MiB of history."""
    return 8 * sum(t.numel() * t.element_size() for t in model.state_dict().values()) + (16 << 20)


_CHECKPOINT_KEYS = {"epoch", "model", "optimizer", "pruner", "history"}


def load_checkpoint(path: Path, max_bytes: int | None = None) -> dict:
    """Load a training checkpoint without executing code (weights_only=True), checked: a regular file
    (of at most `max_bytes`, see `checkpoint_limit`, refused from its size before it is read) holding
    an epoch count, a state_dict of finite tensors, optimizer and pruner states and a metrics history."""
    path = Path(path)
    if not path.is_file():  # a FIFO or a device would hang or grow memory
        raise UserError(f"{path}: not a loadable sparsepipe checkpoint (not a regular file)")
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise UserError(f"{path}: checkpoint is {size} bytes, more than the {max_bytes} one of this model can "
                        f"hold; rerun with --force to train afresh")
    try:
        with warnings.catch_warnings():  # torch's two-line warning would come before our one line
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or hostile file: one clear line, never a traceback
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: not a loadable sparsepipe checkpoint ({first[:200]})") from None
    problem = _checkpoint_problem(state)
    if problem:
        raise UserError(f"{path}: not a loadable sparsepipe checkpoint ({problem})")
    return state


def _checkpoint_problem(state) -> str | None:
    """What is wrong with a loaded checkpoint's layout, or None."""
    if not isinstance(state, dict) or set(state) != _CHECKPOINT_KEYS:
        keys = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
        return f"expected the keys {sorted(_CHECKPOINT_KEYS)}, found {keys}"
    epoch = state["epoch"]
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        return f"epoch is {epoch!r}, expected a count >= 0"
    weights = state["model"]
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in weights.items()):
        return "model is not a state_dict of named tensors"
    bad = next((k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        return f"model.{bad} holds NaN or inf"
    if not isinstance(state["optimizer"], dict) or not isinstance(state["pruner"], dict):
        return "optimizer and pruner states must be dicts"
    history = state["history"]
    if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
        return "history is not a list of metrics rows"
    return None
