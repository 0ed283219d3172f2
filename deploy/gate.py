"""Regression gate: thresholds on one report, or a comparison with a reference report."""
from __future__ import annotations

from dataclasses import dataclass

from compress.errors import UserError
from compress.schema import opt


@dataclass
class GateConfig:
    max_accuracy_drop: float = opt(0.02, "Largest allowed dense − sparse accuracy (onnxruntime, fraction).",
                                   lo=0.0, hi=1.0)
    min_sparsity: float = opt(0.0, "Smallest allowed global sparsity of the pruned layers.", lo=0.0, hi=1.0)
    max_latency_ratio: float = opt(0.0, "Largest allowed sparse/dense p50 latency ratio (0 = not checked).",
                                   lo=0.0)
    max_macs_ratio: float = opt(0.0, "Largest allowed MACs of the (channel-cut) sparse model over the dense "
                                "model's (0 = not checked).", lo=0.0)


def _get(report: dict, dotted: str, source: str):
    node = report
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            raise UserError(f"{source}: missing field {dotted!r}")
        node = node[key]
    return node


def check(report: dict, gate: GateConfig, source: str = "report") -> list[dict]:
    """One entry per check: {name, passed, message}. A failed check means a regression."""
    drop = _get(report, "dense.accuracy", source) - _get(report, "sparse.accuracy", source)
    sparsity = _get(report, "sparsity.global", source)
    results = [
        {"name": "accuracy_drop", "passed": drop <= gate.max_accuracy_drop + 1e-12,
         "message": f"accuracy drop {drop:.4f} (dense − sparse) vs allowed {gate.max_accuracy_drop:.4f}"},
        {"name": "min_sparsity", "passed": sparsity >= gate.min_sparsity - 1e-12,
         "message": f"global sparsity {sparsity:.4f} vs required {gate.min_sparsity:.4f}"},
    ]
    if gate.max_latency_ratio > 0:
        ratio = _get(report, "latency.ratio", source)
        results.append({"name": "latency_ratio", "passed": ratio <= gate.max_latency_ratio,
                        "message": f"latency ratio {ratio:.3f} (sparse/dense p50) vs allowed "
                                   f"{gate.max_latency_ratio:.3f}"})
    if gate.max_macs_ratio > 0:
        st = report.get("structure") or {}
        ratio = st["macs_after"] / st["macs_before"] if st.get("macs_before") else 1.0
        results.append({"name": "macs_ratio", "passed": ratio <= gate.max_macs_ratio + 1e-12,
                        "message": f"MACs ratio {ratio:.3f} (after the channel cut / dense) vs allowed "
                                   f"{gate.max_macs_ratio:.3f}"})
    return results


def compare(report: dict, reference: dict, *, max_accuracy_drop: float = 0.01, max_sparsity_drop: float = 0.01,
            max_latency_ratio_increase: float = 0.0, source: str = "report", ref_source: str = "reference"
            ) -> list[dict]:
    """Checks of `report` against an earlier `reference` report (e.g. main's): did the sparse model get worse?"""
    acc, ref_acc = _get(report, "sparse.accuracy", source), _get(reference, "sparse.accuracy", ref_source)
    sp, ref_sp = _get(report, "sparsity.global", source), _get(reference, "sparsity.global", ref_source)
    results = [
        {"name": "accuracy_vs_reference", "passed": ref_acc - acc <= max_accuracy_drop + 1e-12,
         "message": f"sparse accuracy {acc:.4f} vs reference {ref_acc:.4f} (allowed drop {max_accuracy_drop:.4f})"},
        {"name": "sparsity_vs_reference", "passed": ref_sp - sp <= max_sparsity_drop + 1e-12,
         "message": f"global sparsity {sp:.4f} vs reference {ref_sp:.4f} (allowed drop {max_sparsity_drop:.4f})"},
    ]
    if max_latency_ratio_increase > 0:
        r, ref_r = _get(report, "latency.ratio", source), _get(reference, "latency.ratio", ref_source)
        results.append({"name": "latency_ratio_vs_reference", "passed": r - ref_r <= max_latency_ratio_increase,
                        "message": f"latency ratio {r:.3f} vs reference {ref_r:.3f} "
                                   f"(allowed increase {max_latency_ratio_increase:.3f})"})
    return results
