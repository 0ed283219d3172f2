"""The files people and CI read (report.md, junit.xml, report.json, training.png), from one report whose
every figure is known, so each rendered number can be checked against its hand-computed value."""
import copy
import json
import xml.etree.ElementTree as ET

import pytest

from deploy.report import load_report, markdown, plot_training, summary_rows, training_figure, write_report
from deploy.report_schema import Report


def stats(p50: float) -> dict:
    return {"mean_ms": p50 + 0.01, "p50_ms": p50, "p90_ms": p50 + 0.02, "p99_ms": p50 + 0.03, "std_ms": 0.004,
            "min_ms": p50 - 0.01, "throughput_per_s": 1000 / p50}


def scores(accuracy: float, torch_accuracy: float) -> dict:
    return {"accuracy": accuracy, "torch_accuracy": torch_accuracy, "agreement_with_torch": 0.99,
            "max_abs_diff_vs_torch": 1e-5, "mean_abs_diff_vs_torch": 1e-6, "samples": 360}


CHECKS = [{"name": "accuracy_drop", "passed": True, "message": "accuracy drop 1.00 points <= 2.00"},
          {"name": "min_sparsity", "passed": False, "message": "sparsity 80.00% < 85.00%"}]
REPORT = {
    "run": "demo", "method": "lats", "model": "mlp", "data": "digits",
    "dense": scores(0.975, 0.9725), "sparse": scores(0.965, 0.96), "variants": {},
    "sparsity": {"global": 0.8, "per_layer": {"net.1": 0.75, "net.3": 0.5}, "layers_pruned": 2,
                 "counted_from": "zero weights in the test's files"},
    "pruner": {"threshold": 0.25, "schedule": {"kind": "lats"}},
    "structure": {"channels_removed": 24, "constant_channels_folded": 2, "macs_before": 40000, "macs_after": 10000,
                  "params_before": 50000, "params_after": 20000, "widths": {"net.1": [128, 104]}},
    "latency": {"batch_size": 1, "threads": 1, "dense": stats(0.2),
                "sparse": {**stats(0.1), "ratio_vs_dense": 0.5}, "ratio": 0.5},
    "size": {"dense_bytes": 40000, "sparse_bytes": 8000, "dense_onnx_bytes": 41000, "sparse_onnx_bytes": 30000},
    "export": {}, "training": {}, "versions": {}, "machine": {},
    "gate": {"passed": False, "failures": ["sparsity 80.00% < 85.00%"], "checks": CHECKS, "thresholds": {}},
    "spiking": {"time_steps": 4, "firing_rates": {"dense": {"sn1": 0.125, "sn2": 0.0}, "sparse": {"sn1": 0.0625}},
                "silent_layers": {"dense": ["sn2"], "sparse": []}},
}


def report(**changes) -> Report:
    d = copy.deepcopy(REPORT)
    d.update(changes)
    return Report.from_dict(d)


def test_summary_rows_carry_each_figure_and_its_ratio():
    rows = {name: (dense, sparse) for name, dense, sparse in summary_rows(report())}
    assert rows["accuracy (onnxruntime)"] == ("97.50%", "96.50%")
    assert rows["accuracy (PyTorch)"] == ("97.25%", "96.00%")
    assert rows["global sparsity"] == ("0.00%", "80.00%")
    assert rows["latency p50, batch 1, 1 thread(s)"] == ("0.200 ms", "0.100 ms (x0.50)")
    assert rows["ONNX file size"] == ("41,000 B", "30,000 B")
    assert rows["weights stored (dense vs CSR/BSR)"] == ("40,000 B", "8,000 B (x5.0 smaller)")
    assert rows["MACs per sample (channels removed)"] == ("40,000", "10,000 (x0.25, 24 channels cut)")
    assert rows["parameters"] == ("50,000", "20,000 (x0.40)")
    compact = summary_rows(report(variants={"sparse-compact": {}}, size={**REPORT["size"],
                                                                          "sparse_compact_onnx_bytes": 12345}))
    assert ("  sparse-compact ONNX file", "", "12,345 B") in compact  # a variant's own row
    uncut = {name for name, _, _ in summary_rows(report(structure=None))}
    assert "parameters" not in uncut and "MACs per sample (channels removed)" not in uncut


def test_markdown_shows_the_verdict_the_checks_and_every_table():
    md = markdown(report())
    assert "Method **lats**, model **mlp**, data **digits**. Gate: **FAILED**." in md
    assert "- pass: accuracy drop 1.00 points <= 2.00" in md and "- **FAIL**: sparsity 80.00% < 85.00%" in md
    assert "| weights stored (dense vs CSR/BSR) | 40,000 B | 8,000 B (x5.0 smaller) |" in md
    assert "- threshold: `0.25`" in md and '- schedule: `{"kind": "lats"}`' in md
    assert "Counted from zero weights in the test's files." in md
    assert "| `net.1` | 75.00% |\n| `net.3` | 50.00% |" in md
    assert ("24 channels cut (2 of them carried a constant, folded into the next layer's bias); MACs 40,000 → "
            "10,000, parameters 50,000 → 20,000.") in md
    assert "| `net.1` | 128 | 104 |" in md
    assert "| dense | 0.210 | 0.200 | 0.220 | 0.230 | 0.004 |" in md and "| sparse | 0.110 | 0.100 |" in md
    assert "## Spiking network (T = 4)" in md and "| `sn1` | 0.1250 | 0.0625 |" in md and "| `sn2` | 0.0000 | nan |" in md
    assert "**Warning**: dense model has layers that never fired: sn2" in md
    assert "sparse model has layers" not in md
    assert md.endswith("never fired: sn2\n") and "![training]" not in md
    passed = markdown(report(gate={**REPORT["gate"], "passed": True}, artifacts={"training_plot": "training.png"}))
    assert "Gate: **PASSED**." in passed and passed.endswith("![training](training.png)\n")
    plain = markdown(report(sparsity={**REPORT["sparsity"], "counted_from": ""}, pruner={}, structure=None))
    assert "Counted from" not in plain and "## Pruner" not in plain and "## Channels removed" not in plain


def test_write_report_writes_the_three_files_and_the_json_reads_back(tmp_path):
    r = report()
    write_report(tmp_path, r)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junit.xml", "report.json", "report.md"]
    assert (tmp_path / "report.md").read_text() == markdown(r)
    suite = ET.parse(tmp_path / "junit.xml").getroot()
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    assert [c.find("failure") is not None for c in suite] == [False, True]
    assert json.loads((tmp_path / "report.json").read_text()) == r.to_dict()
    assert load_report(tmp_path / "report.json").to_dict() == r.to_dict()


def test_training_plot_is_a_png_of_three_panels(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    rows = [{"epoch": e, "test_accuracy": 0.5 + e / 10, "sparsity": e / 5} for e in range(1, 5)]
    plot_training({"dense": rows, "sparse": rows}, {"net.1": 0.75, "net.3": 0.5}, tmp_path / "training.png")
    image = imread(tmp_path / "training.png")
    assert image.shape[:2] == (342, 1260)  # 14 x 3.8 inches at 90 dpi: one row of three panels


def test_training_figure_plots_each_models_history_and_the_final_layer_sparsity():
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    dense = [{"epoch": e, "test_accuracy": 0.5 + e / 10, "sparsity": 0.0} for e in range(1, 4)]
    sparse = [{"epoch": e, "test_accuracy": 0.4 + e / 10, "sparsity": e / 4} for e in range(1, 4)]
    fig = training_figure({"dense": dense, "sparse": sparse}, {"net.1": 0.75, "net.3": 0.5})
    accuracy, sparsity, layers = fig.axes
    assert [list(line.get_ydata()) for line in accuracy.lines] == [[r["test_accuracy"] for r in rows]
                                                                   for rows in (dense, sparse)]
    assert [list(line.get_ydata()) for line in sparsity.lines] == [[0.0] * 3, [0.25, 0.5, 0.75]]
    assert sparsity.get_ylim() == (0, 1) and sorted(layers.get_xlim()) == [0, 1]
    assert [round(bar.get_width(), 6) for bar in layers.patches] == [0.75, 0.5]
    assert [t.get_text() for t in layers.get_yticklabels()] == ["net.1", "net.3"]
    plt.close(fig)
