"""Regression gate: thresholds on one report, or a comparison with a reference report."""
from __future__ import annotations

from compress.errors import UserError

from .report_schema import Report
from .sections import GateConfig

__all__ = ["GateConfig", "check", "compare"]


def _latency_ratio(report: Report, source: str) -> float:
    if "ratio" not in report.latency:
        raise UserError(f"{source}: missing field 'latency.ratio'")
    return report.latency_ratio


def check(report: Report, gate: GateConfig, source: str = "report") -> list[dict]:
    """One entry per check: {name, passed, message}. A failed check means a regression."""
    drop = report.dense.accuracy - report.sparse.accuracy
    sparsity = report.sparsity.global_
    results = [
        {"name": "accuracy_drop", "passed": drop <= gate.max_accuracy_drop + 1e-12,
         "message": f"accuracy drop {drop:.4f} (dense − sparse) vs allowed {gate.max_accuracy_drop:.4f}"},
        {"name": "min_sparsity", "passed": sparsity >= gate.min_sparsity - 1e-12,
         "message": f"global sparsity {sparsity:.4f} vs required {gate.min_sparsity:.4f}"},
    ]
    if gate.min_above_chance > 0:
        results.append(_above_chance(report, gate.min_above_chance))
    if gate.min_accuracy > 0:
        acc = report.sparse.accuracy
        results.append({"name": "min_accuracy", "passed": acc >= gate.min_accuracy - 1e-12,
                        "message": f"sparse accuracy {acc:.4f} vs required {gate.min_accuracy:.4f}"})
    if gate.max_latency_ratio > 0:
        ratio = _latency_ratio(report, source)
        results.append({"name": "latency_ratio", "passed": ratio <= gate.max_latency_ratio,
                        "message": f"latency ratio {ratio:.3f} (sparse/dense p50) vs allowed "
                                   f"{gate.max_latency_ratio:.3f}"})
    if gate.max_macs_ratio > 0:
        ratio = report.macs_ratio
        results.append({"name": "macs_ratio", "passed": ratio <= gate.max_macs_ratio + 1e-12,
                        "message": f"MACs ratio {ratio:.3f} (after the channel cut / dense) vs allowed "
                                   f"{gate.max_macs_ratio:.3f}"})
    return results


def _above_chance(report: Report, margin: float) -> dict:
    acc = report.sparse.accuracy
    if report.classes is None:  # a report written before the class count was recorded, or edited
        return {"name": "above_chance", "passed": False,
                "message": "cannot check the accuracy against chance: the report does not record its number "
                           "of classes (set gate.min_above_chance = 0 to skip this check)"}
    floor = 1 / report.classes + margin
    return {"name": "above_chance", "passed": acc >= floor - 1e-12,
            "message": f"sparse accuracy {acc:.4f} vs chance {1 / report.classes:.4f} + {margin:.4f} "
                       f"({report.classes} classes)"}


def differences(report: Report, reference: Report) -> list[str]:
    """Why two reports do not measure the same thing (model, data, test set, pruned layers)."""
    pairs = {"model": (report.model, reference.model), "data": (report.data, reference.data),
             "test samples": (report.sparse.samples, reference.sparse.samples),
             "pruned layers": (sorted(report.sparsity.per_layer), sorted(reference.sparsity.per_layer))}
    return [f"{what} {a!r} vs {b!r}" for what, (a, b) in pairs.items() if a != b]


def compare(report: Report, reference: Report, *, max_accuracy_drop: float = 0.01, max_sparsity_drop: float = 0.01,
            max_latency_ratio_increase: float = 0.0, source: str = "report", ref_source: str = "reference",
            allow_different: bool = False) -> list[dict]:
    """Checks of `report` against an earlier `reference` report (e.g. main's): did the sparse model get worse?
    Reports of different models, data, test sets or pruned layers are refused unless `allow_different`."""
    diff = differences(report, reference)
    if diff and not allow_different:
        raise UserError(f"{source}: not comparable with {ref_source} ({'; '.join(diff[:2])}); pass "
                        "--allow-different to compare anyway")
    acc, ref_acc = report.sparse.accuracy, reference.sparse.accuracy
    sp, ref_sp = report.sparsity.global_, reference.sparsity.global_
    results = [
        {"name": "accuracy_vs_reference", "passed": ref_acc - acc <= max_accuracy_drop + 1e-12,
         "message": f"sparse accuracy {acc:.4f} vs reference {ref_acc:.4f} (allowed drop {max_accuracy_drop:.4f})"},
        {"name": "sparsity_vs_reference", "passed": ref_sp - sp <= max_sparsity_drop + 1e-12,
         "message": f"global sparsity {sp:.4f} vs reference {ref_sp:.4f} (allowed drop {max_sparsity_drop:.4f})"},
    ]
    if max_latency_ratio_increase > 0:
        r, ref_r = _latency_ratio(report, source), _latency_ratio(reference, ref_source)
        results.append({"name": "latency_ratio_vs_reference", "passed": r - ref_r <= max_latency_ratio_increase,
                        "message": f"latency ratio {r:.3f} vs reference {ref_r:.3f} "
                                   f"(allowed increase {max_latency_ratio_increase:.3f})"})
    return results
