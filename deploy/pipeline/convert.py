"""Stage convert: every pruned weight as CSR or BSR (per layer, whichever is smaller), bit-exact.
Its output is what the sparse-compute ONNX variant runs on (export reads it)."""
from __future__ import annotations

import torch

from compress import atomic
from compress.selection import layer_weight

from .. import formats
from .run import Run


def convert_stage(run: Run) -> list[str]:
    model = run.frozen_model("sparse")
    weights = {n: layer_weight(model, n).detach() for n in run.layers}  # what each layer computes with
    folder = run.stage_dir
    c = run.cfg.convert
    manifest = formats.save_sparse(folder, weights, model_id=run.cfg.model.name, choice=c.format,
                                   blocks=[tuple(b) for b in c.block_sizes])
    back = formats.load_sparse(folder)
    if not all(torch.equal(back[n].view(torch.int32), w.view(torch.int32)) for n, w in weights.items()):
        raise RuntimeError("sparse-format round trip is not bit-exact")  # a bug of ours, not bad input
    manifest["roundtrip_bit_exact"] = True
    atomic.write_json(folder / "manifest.json", manifest)
    return ["weights.safetensors", "manifest.json"]

