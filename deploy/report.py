"""Reports people and CI read: report.json, report.md, junit.xml and a PNG of training and sparsity."""
from __future__ import annotations

import json
from pathlib import Path
import xml.etree.ElementTree as ET

from compress import atomic
from compress.limits import load_json

from .report_rows import ms, pct
from .report_schema import Report
from .variants import registered_variants


def junit_xml(checks: list[dict], suite: str = "sparsepipe.gate") -> str:
    """One JUnit test case per gate check, failed checks as <failure>."""
    root = ET.Element("testsuite", name=suite, tests=str(len(checks)),
                      failures=str(sum(not c["passed"] for c in checks)), errors="0")
    for c in checks:
        case = ET.SubElement(root, "testcase", classname=suite, name=c["name"])
        if c["passed"]:
            ET.SubElement(case, "system-out").text = c["message"]
        else:
            ET.SubElement(case, "failure", message=c["message"]).text = c["message"]
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def summary_rows(report: Report) -> list[tuple[str, str, str]]:
    """(metric, dense, sparse) rows shared by the Markdown report and the CLI's closing table; each
    export variant in the report adds its own rows (deploy/variants)."""
    d, s, lat, size = report.dense, report.sparse, report.latency, report.size
    extra: dict[str, list[tuple[str, str, str]]] = {"accuracy": [], "latency": [], "size": []}
    for variant in registered_variants().values():
        if variant.name in report.variants and variant.rows is not None:
            for section, rows in variant.rows(report).items():
                extra[section] += rows
    rows = [("accuracy (onnxruntime)", pct(d.accuracy), pct(s.accuracy)), *extra["accuracy"]]
    rows += [("accuracy (PyTorch)", pct(d.torch_accuracy), pct(s.torch_accuracy)),
             ("global sparsity", pct(0.0), pct(report.sparsity.global_)),
             (f"latency p50, batch {lat['batch_size']}, {lat['threads']} thread(s)",
              f"{lat['dense']['p50_ms']:.3f} ms", ms(lat["sparse"])), *extra["latency"]]
    rows += [("ONNX file size", f"{size['dense_onnx_bytes']:,} B", f"{size['sparse_onnx_bytes']:,} B"), *extra["size"],
             ("weights stored (dense vs CSR/BSR)", f"{size['dense_bytes']:,} B",
              f"{size['sparse_bytes']:,} B (x{size['dense_bytes'] / max(size['sparse_bytes'], 1):.1f} smaller)")]
    st = report.structure or {}
    if st.get("channels_removed"):
        rows += [("MACs per sample (channels removed)", f"{st['macs_before']:,}",
                  f"{st['macs_after']:,} (x{st['macs_after'] / st['macs_before']:.2f}, "
                  f"{st['channels_removed']} channels cut)"),
                 ("parameters", f"{st['params_before']:,}",
                  f"{st['params_after']:,} (x{st['params_after'] / st['params_before']:.2f})")]
    return rows


def markdown(report: Report) -> str:
    gate = report.gate
    lines = [f"# sparsepipe report: {report.run}", "",
             f"Method **{report.method}**, model **{report.model}**, data **{report.data}**. "
             f"Gate: **{'PASSED' if gate.passed else 'FAILED'}**.", "",
             "| metric | dense | sparse |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in summary_rows(report)]
    if report.preprocessing:
        pre = report.preprocessing
        lines += ["", "## Input preprocessing (also in every ONNX file's metadata, key sparsepipe.preprocessing)", "",
                  f"{pre.get('formula', '')}; raw input: {pre.get('raw', '')}; "
                  f"scale {pre.get('scale', '-')}, mean {pre.get('mean', '-')}, std {pre.get('std', '-')}."]
    lines += [f"\n**Warning**: {w}" for w in report.warnings]
    lines += ["", "## Gate", ""]
    lines += [f"- {'pass' if c['passed'] else '**FAIL**'}: {c['message']}" for c in gate.checks]
    if report.pruner:
        lines += ["", "## Pruner", ""]
        lines += [f"- {k}: `{json.dumps(v) if isinstance(v, (dict, list)) else v}`" for k, v in report.pruner.items()]
    lines += ["", "## Per-layer sparsity", ""]
    if report.sparsity.counted_from:
        lines += [f"Counted from {report.sparsity.counted_from}.", ""]
    lines += ["| layer | sparsity |", "|---|---|"]
    lines += [f"| `{k}` | {pct(v)} |" for k, v in report.sparsity.per_layer.items()]
    st = report.structure or {}
    if st.get("channels_removed"):
        lines += ["", "## Channels removed (physically smaller model)", "",
                  f"{st['channels_removed']} channels cut ({st.get('constant_channels_folded', 0)} of them carried "
                  f"a constant, folded into the next layer's bias); MACs {st['macs_before']:,} → {st['macs_after']:,}, "
                  f"parameters {st['params_before']:,} → {st['params_after']:,}.", "",
                  "| group (first producer) | width before | width after |", "|---|---|---|"]
        lines += [f"| `{k}` | {a} | {b} |" for k, (a, b) in st["widths"].items()]
    lat = report.latency
    lines += ["", "## Latency (ms)", "", "| model | mean | p50 | p90 | p99 | std |", "|---|---|---|---|---|---|"]
    for name in ["dense", "sparse"] + list(report.variants):
        x = lat[name]
        lines.append(f"| {name} | {x['mean_ms']:.3f} | {x['p50_ms']:.3f} | {x['p90_ms']:.3f} | "
                     f"{x['p99_ms']:.3f} | {x['std_ms']:.3f} |")
    if report.spiking:
        sp = report.spiking
        lines += ["", f"## Spiking network (T = {sp['time_steps']})", "", "| neuron layer | dense rate | sparse rate |",
                  "|---|---|---|"]
        lines += [f"| `{n}` | {r:.4f} | {sp['firing_rates']['sparse'].get(n, float('nan')):.4f} |"
                  for n, r in sp["firing_rates"]["dense"].items()]
        for v, silent in sp["silent_layers"].items():
            if silent:
                lines.append(f"\n**Warning**: {v} model has layers that never fired: {', '.join(silent)}")
    if "training_plot" in report.artifacts:
        lines += ["", "![training](training.png)"]
    return "\n".join(lines) + "\n"


def save_png(fig, path: Path, dpi: int = 90) -> None:
    """Write a matplotlib figure atomically as PNG and release it."""
    import matplotlib.pyplot as plt

    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)


def plot_training(histories: dict[str, list[dict]], per_layer: dict[str, float], path: Path) -> None:
    """training_figure as a PNG at `path`."""
    save_png(training_figure(histories, per_layer), path)


def training_figure(histories: dict[str, list[dict]], per_layer: dict[str, float]):
    """Test accuracy and sparsity per epoch for each trained model, and the final per-layer sparsity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for name, rows in histories.items():
        epochs = [r["epoch"] for r in rows]
        axes[0].plot(epochs, [r["test_accuracy"] for r in rows], label=name)
        axes[1].plot(epochs, [r["sparsity"] for r in rows], label=name)
    axes[0].set(title="test accuracy", xlabel="epoch")
    axes[1].set(title="global sparsity", xlabel="epoch", ylim=(0, 1))
    axes[0].legend()
    names = list(per_layer)
    axes[2].barh(range(len(names)), [per_layer[n] for n in names])
    axes[2].set_yticks(range(len(names)), names, fontsize=7)
    axes[2].set(title="final sparsity per layer", xlim=(0, 1))
    axes[2].invert_yaxis()
    fig.tight_layout()
    return fig


def write_report(folder: Path, report: Report) -> None:
    """report.json, report.md and junit.xml into `folder`, each written atomically."""
    atomic.write_text(folder / "junit.xml", junit_xml(report.gate.checks))
    atomic.write_text(folder / "report.md", markdown(report))
    atomic.write_json(folder / "report.json", report.to_dict())


def load_report(path: str | Path) -> Report:
    """A report.json, checked field by field (one-line UserError naming the file and field)."""
    data = load_json(path, "report")
    return Report.from_dict(data, str(path))
