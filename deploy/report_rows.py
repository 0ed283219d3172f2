"""How the report's summary table writes a number: shared by report.py and the export variants' rows."""
from __future__ import annotations


def pct(x: float) -> str:
    """0.9123 → '91.23%'."""
    return f"{100 * x:.2f}%"


def ms(entry: dict) -> str:
    """A latency entry as 'p50 ms (x ratio to dense)'."""
    return f"{entry['p50_ms']:.3f} ms (x{entry['ratio_vs_dense']:.2f})"
