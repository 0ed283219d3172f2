"""The stages as declared objects: one table that the runner, the cache and the CLI all read.

Light on purpose (no torch import): `sparsepipe --help` lists the stages from here. Each stage's
function lives in its own module and is imported only when the stage runs.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .run import Run


# how latency targets time candidate widths during training: part of the train stage's fingerprint
LATENCY_TIMING = ("freeze.latency_batch_size", "freeze.latency_threads", "freeze.latency_precision")


@dataclass(frozen=True)
class Stage:
    name: str                    # CLI command and key in logs
    folder: str                  # its folder inside the run
    config: tuple[str, ...]      # config sections (or 'section.field') it reads (part of its fingerprint)
    upstream: tuple[str, ...]    # stages whose outputs it reads (their hashes are part of its fingerprint)
    function: str                # 'module:function' doing the work in run.stage_dir; returns the files it
                                 # wrote there (relative to it)
    help: str                    # one line for the CLI
    collective: bool = False     # under torchrun every rank runs it (training); otherwise rank 0 alone

    def run(self, run: "Run") -> list[str]:
        module, _, attr = self.function.partition(":")
        fn: Callable[["Run"], list[str]] = getattr(importlib.import_module(module), attr)
        return fn(run)


STAGES: tuple[Stage, ...] = (
    Stage("train", folder="train", config=("seed", "data", "model", "prune", "train", *LATENCY_TIMING),
          upstream=(),
          function="deploy.pipeline.train:train_stage", collective=True,
          help="train the dense baseline and the pruned model (resumes from the last epoch checkpoint)"),
    Stage("freeze", folder="frozen", config=("model", "freeze"), upstream=("train",),
          function="deploy.pipeline.freeze:freeze_stage",
          help="write plain weights with exact zeros (dead channels cut out), masks, per-layer sparsity "
               "and model.json"),
    Stage("convert", folder="sparse", config=("convert",), upstream=("freeze",),
          function="deploy.pipeline.convert:convert_stage",
          help="store every pruned weight as CSR/BSR (bit-exact round trip, storage report)"),
    Stage("export", folder="onnx", config=("export",), upstream=("freeze", "convert"),
          function="deploy.pipeline.export:export_stage",
          help="export dense and sparse models to ONNX (and variants), checked against PyTorch"),
    Stage("validate", folder="report", config=("data", "export", "validate", "gate"),
          upstream=("train", "freeze", "convert", "export"), function="deploy.pipeline.validate:validate_stage",
          help="accuracy and latency of every ONNX variant in onnxruntime, gate, report"),
)
BY_NAME = {s.name: s for s in STAGES}
