"""Stage freeze: plain weights with exact zeros, dead channels cut out, and a self-describing folder
(model.json) from which any later stage rebuilds each variant once. It starts from the weights the
train stage squashed (pruner.freeze() at the end of training), not from a replay of training."""
from __future__ import annotations

import copy
import json

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from compress import atomic
from compress.errors import UserError
from compress.limits import load_json
from compress.frozen import write_spec
from compress.selection import clean_name, get_module, layer_weight
from compress.sparsity import global_sparsity, layer_sparsity
from compress.loader import first
from compress.structured import harvest

from ..cut_check import time_cuts
from .run import SQUASHED, SUMMARY, Run


def _save_weights(model: nn.Module, path) -> None:
    with atomic.atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))


def _frozen(run: Run, variant: str) -> tuple[nn.Module, dict]:
    """The trained `variant` as the train stage squashed it (plain weights, exact zeros), and its
    pruner's summary: no training, pruner or plan is rebuilt."""
    folder = run.dir / "train" / variant
    path = folder / SQUASHED
    model = run.new_model()
    names = {clean_name(n) for n, _ in model.named_modules()}
    missing = [n for n in run.layers if n not in names]
    if missing:
        raise UserError(f"{path}: checkpoint does not fit model {run.cfg.model.name!r} "
                        f"(trained layer {missing[0]!r} does not exist in it)")
    if not path.is_file():
        raise UserError(f"{path}: missing; finish the train stage (`sparsepipe train {run.dir}`; a folder trained "
                        f"by an older sparsepipe: add --force)")
    try:
        model.load_state_dict(load_file(str(path)))
    except Exception as e:  # a damaged file, or weights of another architecture
        raise UserError(f"{path}: checkpoint does not fit model {run.cfg.model.name!r} "
                        f"({str(e).strip().splitlines()[0][:200]})") from None
    bad = next((k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()),
               None)
    if bad is not None:
        raise UserError(f"{path}: tensor {bad!r} holds NaN or inf; re-run the train stage with --force")
    summary = load_json(folder / SUMMARY, "pruner summary")
    if not isinstance(summary, dict):
        raise UserError(f"{folder / SUMMARY}: expected a JSON object (the pruner's summary)")
    return model.eval(), summary


def _keep_fastest(run: Run, uncut: nn.Module, cuts: dict[str, tuple[nn.Module, dict]]) -> tuple[nn.Module, dict]:
    """Of the cut models (name -> model, structure record), the one that measures fastest in
    onnxruntime if it is faster than the uncut model, else the uncut one; the structure record says
    which, with the timing of every candidate."""
    c = run.cfg.freeze
    timed = time_cuts(uncut, {name: model for name, (model, _) in cuts.items()},
                      first(run.data.test, max(c.latency_batch_size, 2))[0], c.latency_batch_size, c.latency_threads,
                      precision=c.latency_precision, timer=run.timer, decide_at=1 / c.min_speedup,
                      progress=run.progress)
    name = min(timed["cuts"], key=lambda n: timed["cuts"][n]["ratio"])
    cut, structure = cuts[name]
    timing = {k: timed[k] for k in ("before_ms", "batch", "threads", "precision", "rounds")}
    timing.update(after_ms=timed["cuts"][name]["ms"], ratio=timed["cuts"][name]["ratio"], candidate=name,
                  candidates={n: t["ratio"] for n, t in timed["cuts"].items()})
    kept = timing["ratio"] < 1 / c.min_speedup
    timing["kept"] = kept
    if kept:
        return cut, {**structure, "latency_check": timing}
    run.log(f"freeze: the channel cut measured x{timing['ratio']:.2f} the latency of the uncut model; not kept")
    return uncut, {"keep": {}, "not_kept": {k: structure[k] for k in ("keep", "biased", "widths", "channels_removed")},
                   "whole": structure.get("whole", {}),
                   "latency_check": timing, **{k: v for k, v in structure.items() if k.startswith(("params", "macs"))
                                               and k.endswith("before")},
                   "params_after": structure["params_before"], "macs_after": structure["macs_before"]}


def _harvested(run: Run, model: nn.Module) -> tuple[nn.Module, dict]:
    """`model` with its dead channels cut out. With the latency check, both any width and widths a
    multiple of freeze.round_to are harvested and the fastest measured (or the uncut model) is kept;
    without it, the rounded widths."""
    c, shape = run.cfg.freeze, run.data.input_shape
    if not c.latency_check:
        return model, harvest(model, shape, c.round_to)
    uncut, cuts = copy.deepcopy(model), {}
    for round_to in dict.fromkeys((1, c.round_to)):
        cut = copy.deepcopy(uncut)
        structure = harvest(cut, shape, round_to)
        if structure["keep"] and all(s["keep"] != structure["keep"] for _, s in cuts.values()):
            cuts["any width" if round_to == 1 else f"x{round_to}"] = (cut, structure)
    if not cuts:
        return model, structure
    return _keep_fastest(run, uncut, cuts)


def freeze_stage(run: Run) -> list[str]:
    models, summary = {}, {}
    for variant in run.variants:
        models[variant], s = _frozen(run, variant)
        summary = s if variant == "sparse" else summary
    return write_frozen(run, models, summary)


def write_frozen(run: Run, models: dict[str, nn.Module], summary: dict) -> list[str]:
    """The frozen folder from plain models with exact zeros (dense and, unless the method is dense,
    sparse) and the pruner's summary: the sparse model with its dead channels cut out, weights,
    model.json, masks and sparsity.json. Returns the files written (relative to run.stage_dir)."""
    folder, shape = run.stage_dir, run.data.input_shape
    out, variants = [], {}
    models = dict(models)
    sparse = models[run.model_behind("sparse")]
    # what the pruner achieved: exact zeros in the pruned layers, counted before the channel cut
    overall, per_layer = global_sparsity(sparse, run.layers), layer_sparsity(sparse, run.layers)
    structure = None
    if "sparse" in run.variants:  # channels that carry only zeros are cut out: a smaller dense model
        sparse, structure = _harvested(run, sparse)
        models[run.model_behind("sparse")] = sparse
        atomic.write_json(folder / "structure.json", structure)
        out.append("structure.json")
    for variant, model in models.items():
        _save_weights(model, folder / f"{variant}.safetensors")
        out.append(f"{variant}.safetensors")
        variants[variant] = {"weights": f"{variant}.safetensors",
                             "structure": "structure.json" if variant == "sparse" and structure else None}
    variants.setdefault("sparse", variants["dense"])  # method 'dense': the baseline is also the "pruned" model
    write_spec(folder, run.cfg.model, shape, run.data.num_classes, variants)
    # masks describe the weights as stored (after the cut): same shapes, 1 where a weight is nonzero
    masks = {n: (layer_weight(sparse, n) != 0).to(torch.uint8) for n in run.layers}
    with atomic.atomic_path(folder / "masks.safetensors") as tmp:
        save_file(masks, str(tmp))
    atomic.write_json(folder / "sparsity.json", {
        "method": run.cfg.prune.method, "pruner": summary, "layers": run.layers, "global": overall,
        "per_layer": per_layer, "dense_global": global_sparsity(models["dense"], run.layers),
        "counted": "exact zeros in the pruned layers before the channel cut (masks.safetensors: after it)"})
    run.forget_frozen()
    return out + ["model.json", "masks.safetensors", "sparsity.json"]

