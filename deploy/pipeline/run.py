"""A run folder with its resolved config; data, layers and frozen models are loaded once, on demand."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from compress import atomic, distributed
from compress.data import Data, load_config_data
from compress.errors import UserError
from compress.imports import user_code_error
from compress.limits import load_json, load_toml
from compress.frozen import load_frozen
from compress.models import build_model
from compress.pruners import Pruner, build_pruner
from compress.selection import select_layers
from compress.weights import apply_weights, load_weights, weights_limit

from .folder import HEADER
from ..config import CONFIG_VERSION, RunConfig, load_config, resolved_table, to_toml
from ..latency import Timer, compare_latency


# what the train stage leaves per model for the freeze stage: the squashed weights and the pruner's summary
SQUASHED, SUMMARY = "frozen.safetensors", "pruner.json"


@dataclass
class Run:
    """A run folder and its resolved config."""
    dir: Path
    cfg: RunConfig
    progress: bool = True
    log: Callable[[str], None] = print
    _data: Data | None = field(default=None, repr=False)
    _frozen: dict[str, nn.Module] = field(default_factory=dict, repr=False)
    _layers: list[str] | None = field(default=None, repr=False)
    stage_dir: Path | None = None  # where the running stage writes; swapped into place when it succeeds
    timer: Timer = field(default=compare_latency, repr=False)  # every timing decision of the stages measures with it

    @property
    def table(self) -> dict:
        return resolved_table(self.cfg)

    @property
    def variants(self) -> list[str]:
        """Trained models: the dense baseline and, unless the method is dense, the pruned one."""
        return ["dense"] if self.cfg.prune.method == "dense" else ["dense", "sparse"]

    def model_behind(self, variant: str) -> str:
        """The trained model that stands for `variant`: itself, or the dense baseline when the method is
        dense (no pruned model is trained then, and "sparse" is the dense model as it ships)."""
        return variant if variant in self.variants else "dense"

    @property
    def data(self) -> Data:
        if self._data is None:
            self._data = load_config_data(self.cfg.data, seed=self.cfg.seed)
        return self._data

    def new_model(self) -> nn.Module:
        torch.manual_seed(self.cfg.seed)
        return build_model(self.cfg.model, self.data.input_shape, self.data.num_classes)

    def new_pruner(self, variant: str) -> Pruner:
        return build_pruner(self.cfg.prune) if variant == "sparse" else Pruner()

    @property
    def layers(self) -> list[str]:
        if self._layers is None:
            path = self.dir / "train" / "layers.json"
            self._layers = (_layer_list(path, self.new_model(), self.cfg.model.name) if path.exists()
                            else select_layers(self.new_model(), self.cfg.prune.layers))
        return self._layers

    def set_layers(self, layers: list[str]) -> None:
        self._layers = list(layers)

    def frozen_model(self, variant: str) -> nn.Module:
        """The frozen model `variant` (dense or sparse) from frozen/, built once until `forget_frozen`."""
        if variant not in self._frozen:
            self._frozen[variant] = load_frozen(self.dir / "frozen", variant)
        return self._frozen[variant]

    def forget_frozen(self) -> None:
        self._frozen.clear()


def keep_given(run: Run, variant: str) -> bool:
    """Is `variant` the given model, unchanged?"""
    return variant == "dense" and bool(run.cfg.model.weights) and run.cfg.model.baseline == "given"


def _check_outputs(model: nn.Module, data: Data, name: str) -> None:
    """The model maps two test samples to [2, num_classes] logits (a factory built for another class
    count would fail deep in the loss, mid-training)."""
    from compress.loader import first

    x = first(data.test, 2)[0]
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except Exception as e:
        user = user_code_error(e)
        if user is not None:
            raise user from None
        raise UserError(f"model.name: {name!r} does not run on the data's samples {list(x.shape)} "
                        f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]})") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(x), data.num_classes):
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"model.name: {name!r} gives outputs of shape {got} for {len(x)} samples; the data has "
                        f"{data.num_classes} classes, so [{len(x)}, {data.num_classes}] is expected")


def _layer_list(path: Path, model: nn.Module, name: str) -> list[str]:
    """train/layers.json, checked: names of modules of `model` that carry a weight matrix or kernel."""
    layers = load_json(path, "layer list")
    if not isinstance(layers, list) or not all(isinstance(n, str) for n in layers):
        raise UserError(f"{path}: expected a list of layer names")
    modules = dict(model.named_modules())
    odd = next((n for n in layers if getattr(modules.get(n), "weight", None) is None), None)
    if odd is not None:
        raise UserError(f"{path}: checkpoint does not fit model {name!r} (trained layer {odd!r} is not a layer with "
                        f"weights in it)")
    return layers


def open_run(run_dir: str | Path, cfg: RunConfig | None = None, *, write: bool = True, **kwargs) -> Run:
    """A Run for `run_dir`: with `cfg`, checks data, model and weights, then (with `write`) writes
    config.toml; without `cfg`, reads the folder's config.toml."""
    run_dir = Path(run_dir)
    path = run_dir / "config.toml"
    if cfg is None:
        if not path.exists():
            raise UserError(f"{run_dir}: not a run folder (no config.toml)")
        try:
            version = load_toml(path, "config").get("config_version")
        except UserError:
            version = None
        if version != CONFIG_VERSION:
            raise UserError(f"{path}: config_version {version!r}, this sparsepipe reads version {CONFIG_VERSION}")
        return Run(run_dir, load_config(path), **kwargs)
    run = Run(run_dir, cfg, **kwargs)
    run.data  # bad or missing data, a model that cannot be built or weights that do not fit fail here,
    model = run.new_model()  # before anything is written
    if "sparse" in run.variants:
        run.new_pruner("sparse")  # e.g. prune.method naming something that is not a Pruner: before training
    if cfg.model.weights:
        apply_weights(model, load_weights(cfg.model.weights, weights_limit(model)), cfg.model.weights,
                      cfg.model.name)
    _check_outputs(model, run.data, cfg.model.name)
    if write:
        save_config(run)
    return run


def save_config(run: Run) -> None:
    """Write the run's resolved config.toml (rank 0; every rank waits for it)."""
    if distributed.current().main:
        atomic.write_text(run.dir / "config.toml", HEADER + to_toml(resolved_table(run.cfg)))
    distributed.barrier()
