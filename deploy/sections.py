"""The deploy half's config sections: [convert] [export] [validate] [gate] (no onnxruntime import)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from compress.errors import UserError
from compress.schema import opt

BLOCKS = ((1, 4), (4, 4), (8, 8), (16, 16))  # BSR block sizes tried by default, [rows, cols]


@dataclass
class ConvertConfig:
    format: Literal["best", "csr", "bsr"] = opt("best", "Per-layer storage: csr, bsr (best block size per layer) "
                                                "or best (the smaller of the two per layer).")
    block_sizes: list[list[int]] = opt([list(b) for b in BLOCKS], "BSR block sizes to try, [rows, cols].", lo=1)

    def check(self, where: str) -> None:
        bad = next((b for b in self.block_sizes if len(b) != 2 or any(v < 1 for v in b)), None)
        if not self.block_sizes or bad is not None:
            raise UserError(f"{where}.block_sizes: expected a non-empty list of [rows, cols] pairs of integers >= 1"
                            + (f", got {bad}" if bad is not None else ""))



@dataclass
class FreezeConfig:
    round_to: int = opt(8, "Harvest widths a multiple of this (dead channels kept to round up, still exact); with "
                        "latency_check, any width is also tried and the faster kept. 1: any width.", lo=1)
    latency_check: bool = opt(True, "Keep the channel cut only if the exported model runs faster than the model "
                              "before the cut (onnxruntime, timed side by side); otherwise keep the uncut model.")
    latency_batch_size: int = opt(1, "Batch size of that timing.", lo=1, hi=4096)
    latency_threads: int = opt(1, "onnxruntime threads of that timing.", lo=1, hi=256)
    latency_precision: Literal["fp32", "int8"] = opt("fp32", "The exported model that timing (and the search of "
                                                     "prune.*.latency_target) measures: fp32, or static int8 "
                                                     "(export.int8's recipe) to choose widths that run fast in int8.")
    min_speedup: float = opt(1.0, "The cut model's latency must be below before / min_speedup to be kept.",
                             lo=0.0, lo_open=True)


@dataclass
class ExportConfig:
    opset: int = opt(18, "ONNX opset (>= 17).", lo=17, hi=23)
    compact: bool = opt(True, "Also write sparse-compact.onnx (weights as ONNX sparse initializers).")
    compute: bool = opt(True, "Also write the sparse-compute/ folder (SparseToDenseMatMul where measured faster).")
    compute_batch: int = opt(1, "Batch size at which sparse-compute times each layer to choose sparse or "
                             "dense, and static int8 its float-or-int8 choice.",
                             lo=1, hi=4096)
    compute_threads: int = opt(1, "onnxruntime threads for that timing.", lo=1, hi=256)
    compute_min_sparsity: float = opt(0.5, "Linear layers with fewer zeros are never considered for sparse compute.",
                                      lo=0.0, hi=1.0)
    int8: Literal["none", "dynamic", "static"] = opt("none", "Also write dense-int8.onnx and sparse-int8.onnx: "
                                                     "dynamic, or static (calibrated on training data; Convs without a fast "
                                                     "int8 kernel stay float where that measures faster).")
    calibration_samples: int = opt(256, "int8 static: training samples used for calibration.", lo=1)



@dataclass
class ValidateConfig:
    batch_size: int = opt(256, "Batch size for the accuracy pass.", lo=1, hi=65536)
    latency_batch_size: int = opt(1, "Batch size of the latency measurement.", lo=1, hi=4096)
    threads: int = opt(1, "onnxruntime intra-op threads for the latency measurement.", lo=1, hi=256)
    warmup_runs: int = opt(20, "Untimed runs per model before timing.", lo=0, hi=100_000)
    runs: int = opt(200, "Timed runs per model (interleaved dense/sparse).", lo=1, hi=1_000_000)



@dataclass
class GateConfig:
    max_accuracy_drop: float = opt(0.02, "Largest allowed dense − sparse accuracy (onnxruntime, fraction).",
                                   lo=0.0, hi=1.0)
    min_sparsity: float = opt(0.0, "Smallest allowed global sparsity of the pruned layers.", lo=0.0, hi=1.0)
    min_accuracy: float = opt(0.0, "Smallest allowed accuracy of the sparse model (onnxruntime, fraction): an "
                              "absolute floor, so a run whose baseline learned nothing cannot pass.", lo=0.0, hi=1.0)
    min_above_chance: float = opt(0.05, "The sparse model must beat chance (1 / classes) by this much accuracy "
                                  "(fraction; 0 = not checked): a model that learned nothing fails.", lo=0.0, hi=1.0)
    max_latency_ratio: float = opt(0.0, "Largest allowed sparse/dense p50 latency ratio (0 = not checked).",
                                   lo=0.0)
    max_macs_ratio: float = opt(0.0, "Largest allowed MACs of the (channel-cut) sparse model over the dense "
                                "model's (0 = not checked).", lo=0.0)



