"""Every results table from its committed JSON: docs/tables.md is written from results/*/results.json,
each table with the command that measures it and its source; --check fails when docs/tables.md or a
table in README.md / docs/*.md with the same header row holds numbers its JSON does not give.

    .venv/bin/python tools/tables.py            # rewrite docs/tables.md
    .venv/bin/python tools/tables.py --readme   # and the tables in README.md / docs/*.md with a JSON source
    .venv/bin/python tools/tables.py --check    # exit 1 and list the tables that differ
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "tables.md"
NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


@dataclass
class Table:
    """One results table: where its numbers come from, how they were measured, how they are laid out."""
    name: str
    sources: list[str]                      # results JSON files, relative to the repository root
    command: str                            # what measures them
    render: Callable[[list[dict]], list[str]]  # the loaded sources → markdown rows, header first
    note: str = ""                          # what is stale or differs from the README, if anything


def pct(x: float, digits: int = 2) -> str:
    return f"{100 * x:.{digits}f}%"


def header(*cells: str) -> list[str]:
    return ["| " + " | ".join(cells) + " |", "|" + "---|" * len(cells)]


def row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def bold_best(values: list[float | None], cells: list[str]) -> list[str]:
    """`cells` with the one of the highest value in bold."""
    known = [v for v in values if v is not None]
    best = max(known) if known else None
    return [f"**{c}**" if v is not None and v == best and len(known) > 1 else c for v, c in zip(values, cells)]


# ---- the renderers, one per table ----

def fair_sparse(src: list[dict]) -> list[str]:
    cells = {(c["model"], c["target"], c["method"]): c for c in src[0]["summary"]}
    cols = [("lenet5", 0.95), ("lenet5", 0.98), ("lenet5", 0.99), ("lenet5", 0.995),
            ("lenet300", 0.98), ("lenet300", 0.99), ("lenet300", 0.995)]
    names = {"lenet5": "LeNet-5", "lenet300": "LeNet-300-100"}
    methods = ["lats", "str", "gmp", "magnitude"]

    def reached(c: dict) -> str:  # the sparsity reached, where it is off the target by more than 0.05 points
        return f" ({pct(c['sparsity_mean'])})" if abs(c["sparsity_mean"] - c["target"]) > 0.0005 else ""

    grid = {m: [] for m in methods}
    for col in cols:
        present = [cells.get((*col, m)) for m in methods]
        accs = bold_best([c and c["accuracy_mean"] for c in present],
                         [f"{100 * c['accuracy_mean']:.2f} ± {100 * c['accuracy_std']:.2f}" if c else "" for c in present])
        for m, c, text in zip(methods, present, accs):
            grid[m].append(text + reached(c) if c else "")
    return header("method", *(f"{names[m]} {100 * t:g}%" for m, t in cols)) + [row(m, *grid[m]) for m in methods]


def caffe_lenet5_99(src: list[dict]) -> list[str]:
    """The papers' 431K-weight LeNet-5 at 99%: each method's mean ± std over seeds, error, sparsity."""
    out = header("method (Caffe LeNet-5, 99%)", "seeds", "accuracy (mean ± std)", "error", "sparsity",
                 "epochs")
    for c in src[0]["summary"]:
        out.append(row(c["method"].upper(), str(c["seeds"]),
                       f"{100 * c['accuracy_mean']:.2f} ± {100 * c['accuracy_std']:.2f}%",
                       pct(1 - c["accuracy_mean"]), pct(c["sparsity_mean"]), str(src[0]["epochs"])))
    return out


def fair_greg(src: list[dict]) -> list[str]:
    cells = {(c["target"], c["method"]): c for c in src[0]["summary"]}
    targets = sorted({c["target"] for c in src[0]["summary"] if c["method"] != "dense"})
    out = header("LeNet-5, per-layer", *(f"{100 * t:g}%" for t in targets))
    for m in ("l1", "greg1", "greg2"):
        out.append(row(m, *(f"{100 * cells[t, m]['accuracy_mean']:.2f} ± {100 * cells[t, m]['accuracy_std']:.2f}"
                            for t in targets)))
    return out


def fair_greg_filters(src: list[dict]) -> list[str]:
    data = src[0]
    cells = {(c["target"], c["method"]): c for c in data["summary"]}
    macs = {r["target"]: r["macs_ratio"] for r in data["rows"] if r["method"] != "dense"}
    out = header("MAC target (MACs / dense)", "L1 one-shot", "GReg-1", "GReg-2")
    for t in sorted(macs):
        out.append(row(f"{t:g}x ({macs[t]:.3f})", *(f"{100 * cells[t, m]['accuracy_mean']:.2f} ± "
                                                     f"{100 * cells[t, m]['accuracy_std']:.2f}"
                                                     for m in ("l1", "greg1", "greg2"))))
    return out


METHOD_LABELS = {"dense": "dense", "magnitude": "magnitude (one-shot, global)",
                 "magnitude-layer": "magnitude-layer (one-shot)", "gmp": "gmp (cubic, global)",
                 "l1": "l1 (GReg-1's exact groups)", "greg1": "greg1 (weights)", "greg2": "greg2 (weights)",
                 "lats": "lats (target mode)", "str": "str (target mode)"}


def methods_lenet5(src: list[dict]) -> list[str]:
    rows = src[0]["rows"]
    targets = sorted({r["target"] for r in rows if r["method"] != "dense"})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by = {(r["method"], r["target"]): r for r in rows}

    def cell(r: dict | None, accuracy: str | None = None) -> str:
        if r is None:
            return ""
        sparsity = pct(r["sparsity"], 1) if r["sparsity"] else "0%"
        return f"{accuracy or pct(r['onnx_accuracy'])} / {sparsity} / {r['macs_dense'] / r['macs_sparse']:.1f}"

    columns = []
    for t in targets:
        present = [by.get((m, t)) for m in methods if m != "dense"]
        accs = bold_best([r and r["onnx_accuracy"] for r in present], [pct(r["onnx_accuracy"]) if r else "" for r in present])
        columns.append([cell(r, a) for r, a in zip(present, accs)])
    first = f"{100 * targets[0]:g}%: accuracy / sparsity / MACs ÷"
    out = header("method", first, *(f"{100 * t:g}%" for t in targets[1:]))
    dense = by.get(("dense", 0.0))
    if dense:
        out.append(row("dense", cell(dense), *([""] * (len(targets) - 1))))
    for k, m in enumerate(m for m in methods if m != "dense"):
        out.append(row(METHOD_LABELS.get(m, m), *(col[k] for col in columns)))
    return out


def methods_resnet20(src: list[dict]) -> list[str]:
    rows = src[0]["rows"]
    accs = bold_best([r["onnx_accuracy"] if r["method"] != "dense" else None for r in rows],
                     [pct(r["onnx_accuracy"]) for r in rows])
    out = header("method", "accuracy (onnxruntime)", "sparsity", "MACs ÷")
    for r, acc in zip(rows, accs):
        t = f"{100 * r['target']:g}%"
        label = {"dense": "dense", "greg1": f"greg1 (weights, {t} per layer)"}.get(r["method"], f"{r['method']} (target {t})")
        missed = " (target missed)" if r["method"] != "dense" and abs(r["sparsity"] - r["target"]) > 0.01 else ""
        out.append(row(label, acc, (pct(r["sparsity"], 1) if r["sparsity"] else "0%") + missed,
                       f"{r['macs_dense'] / r['macs_sparse']:.1f}"))
    return out


def pretrained(src: list[dict]) -> list[str]:
    names = {"lats": "LATS", "gmp": "GMP", "magnitude": "magnitude"}

    def cell(run: dict) -> str:
        return f"{pct(run['accuracy'])}, {pct(run['sparsity'])}, {run['seconds']:.0f} s"

    out = header("method @ target", "from the trained model: accuracy, sparsity, time",
                 "from scratch: accuracy, sparsity, time")
    for r in src[0]["rows"]:
        out.append(row(f"{names.get(r['method'], r['method'])} @ {100 * r['target']:g}%", cell(r["pretrained"]),
                       cell(r["scratch"])))
    return out


def movement(src: list[dict]) -> list[str]:
    """Movement pruning beside GMP and LATS, fine-tuning one trained model: accuracy mean ± std over the
    seeds (sparsity reached where it is not the target)."""
    out = []
    for model, block in src[0]["models"].items():
        targets = list(next(iter(block["methods"].values())))
        out += header(f"{model} (dense {pct(block['dense']['accuracy'])}), fine-tuned", *[f"{100 * float(t):g}%"
                                                                                         for t in targets])
        for method, rows in block["methods"].items():
            cells = []
            for t in targets:
                r = rows[t]
                reached = "" if abs(r["sparsity_mean"] - float(t)) < 5e-4 else f" ({pct(r['sparsity_mean'])})"
                cells.append(f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f}{reached}")
            out.append(row(method, *cells))
    return out


def greg_filters(src: list[dict]) -> list[str]:
    rows = [r for data in src for r in data["rows"]]
    out = header("MAC target", "channels cut per group", "MACs / dense", "L1 one-shot", "GReg-1")
    for factor in sorted({r["factor"] for r in rows}):
        pair = {r["method"]: r for r in rows if r["factor"] == factor}
        l1, greg = pair["L1 one-shot"], pair["GReg-1"]
        accs = bold_best([l1["accuracy"], greg["accuracy"]], [pct(l1["accuracy"]), pct(greg["accuracy"])])
        out.append(row(f"{factor:g}x", pct(l1["ratio"], 1), f"{l1['macs_ratio']:.3f}", *accs))
    return out


def widths(src: list[dict]) -> list[str]:
    rows = src[0]["rows"]
    names = list(dict.fromkeys(r["widths"] for r in rows))
    b32 = {r["widths"]: r for r in rows if r["batch"] == 32}
    return header("stage widths", *names) + [
        row("MACs / dense", *(f"{b32[n]['macs_ratio']:.2f}" for n in names)),
        row("latency / dense, batch 32", *(f"{b32[n]['latency_ratio']:.2f}" for n in names))]


def latency_vs_macs(src: list[dict]) -> list[str]:
    """bench_structured's three runs: ResNets at round_to 8 (their widths were not recorded then), the
    ResNets with pow2, VGG-16 at lr 0.02. Latency within 15% of the MAC ratio, per batch size."""
    out = header("model", "run", "widths", "accuracy", "MACs / dense", "latency / dense, batch 1", "batch 32",
                 "within 15%? (b1, b32)")
    runs = [(src[0], "round_to 8", lambda r: r["model"] != "vgg16"), (src[1], "pow2", lambda r: True),
            (src[2], "round_to 8, lr 0.02", lambda r: True)]
    for data, run, keep in runs:
        rows = [r for r in data["rows"] if keep(r)]
        for variant in dict.fromkeys(r["variant"] for r in rows):
            b1, b32 = (next(r for r in rows if r["variant"] == variant and r["batch"] == b) for b in (1, 32))
            dense = b1["target"] == 0
            widths = "/".join(map(str, b1["widths"])) if "widths" in b1 else "—"

            def latency(r: dict) -> str:
                return f"1.00 ({r['p50_ms']:.2f} ms)" if dense else f"{r['latency_ratio']:.2f}"

            excess = ", ".join(f"{100 * (r['latency_ratio'] / r['macs_ratio'] - 1):+.0f}%" for r in (b1, b32))
            within = "" if dense else f"{'yes' if b1['within_15pct'] and b32['within_15pct'] else 'no'} ({excess})"
            out.append(row(b1["model"], "dense" if dense else f"{b1['target']:g}x, {run}", widths,
                           pct(b1["accuracy"]), f"{b1['macs_ratio']:.2f}", latency(b1), latency(b32), within))
    return out


def streaming(src: list[dict]) -> list[str]:
    rows = src[0]["rows"]
    mib = 1024 * 1024

    def cell(r: dict | None) -> str:
        return f"{r['peak_rss_bytes'] / mib:,.0f} MiB, {r['images_per_s']:,.0f} img/s" if r else ""

    out = header("model @ image size", "images", "streamed, 0 workers", "streamed, 2 workers", "decoded into memory")
    for model, size, images in dict.fromkeys((r["model"], r["image_size"], r["images"]) for r in rows):
        same = [r for r in rows if (r["model"], r["image_size"], r["images"]) == (model, size, images)]
        pick = {(r["mode"], r["workers"]): r for r in same}
        name = {"linear": "one Linear layer"}.get(model, model.replace("torchvision:", "torchvision "))
        out.append(row(f"{name} @ {size}", f"{images:,}", cell(pick.get(("stream", 0))), cell(pick.get(("stream", 2))),
                       cell(next((r for r in same if r["mode"] != "stream"), None))))
    return out


INT8_CASES = {"lenet5-magnitude-95": "LeNet-5, magnitude 95% (8 epochs)",
              "resnet20-filter-2x-pow2": "ResNet-20, filter 2x MACs, pow2 widths (4 epochs, 12k images)",
              "resnet20-filter-3x-latency": "ResNet-20, filter `latency_target = 3` (4 epochs, 12k images)",
              "resnet20-filter-2x-int8-latency": "ResNet-20, filter `latency_target = 2` timed in int8 (4 epochs, "
                                                 "12k images)",
              "resnet20-filter-2x-int8-latency-full": "the same, full length (8 epochs, all 60k images)"}


def int8(src: list[dict]) -> list[str]:
    rows = src[0]["rows"]
    out = header("model", "MACs / dense", "accuracy dense / pruned / pruned int8", "pruned fp32 b1 / b32",
                 "pruned int8 b1 / b32 (float)", "dense int8 b1 / b32")
    for case in dict.fromkeys(r["case"] for r in rows):
        b1, b32 = (next(r for r in rows if r["case"] == case and r["batch"] == b) for b in (1, 32))
        out.append(row(INT8_CASES.get(case, case), f"{b1['macs_ratio']:.2g}",
                       f"{pct(b1['dense_accuracy'])} / {pct(b1['sparse_accuracy'])} / {pct(b1['sparse_int8_accuracy'])}",
                       f"x{b1['sparse_ratio']:.2f} / x{b32['sparse_ratio']:.2f}",
                       f"x{b1['sparse_int8_ratio']:.2f} / x{b32['sparse_int8_ratio']:.2f} ({b1['int8_float_nodes']})",
                       f"x{b1['dense_int8_ratio']:.2f} / x{b32['dense_int8_ratio']:.2f}"))
    return out


def latency_target(src: list[dict]) -> list[str]:
    rows = src[0]["rows"]
    out = header("model", "target", "searched at", "widths (ratio, rounding, groups widened after)", "MACs / dense",
                 "latency / dense, b1", "b32", "within 10%?")
    for model in dict.fromkeys(r["model"] for r in rows):
        name = model.replace("torchvision:", "tv ")
        for factor in dict.fromkeys(r["factor"] for r in rows if r["model"] == model):
            same = [r for r in rows if r["model"] == model and r["factor"] == factor]
            for r in sorted(same, key=lambda r: (r["target"] != "latency_target", r.get("searched_at_batch") or 0)):
                latency = r["target"] == "latency_target"
                rounding = "pow2" if r["pow2"] else ("any" if r["round_to"] == 1 else f"×{r['round_to']}")
                refined = f" +{r['groups_refined']} refined" if r.get("groups_refined") else ""
                b1, b32 = f"{r['latency_ratio_b1']:.2f}", f"{r['latency_ratio_b32']:.2f}"
                if latency and r["searched_at_batch"] == 1:
                    b1 = f"**{b1}**"
                elif latency:
                    b32 = f"**{b32}**"
                within = ("yes" if r["within_10pct"] else "no") if latency else ""
                out.append(row(name, f"{'latency' if latency else 'flops'} {factor:g}x",
                               f"b{r['searched_at_batch']}" if latency else "MACs",
                               f"{r['ratio']:.2f}, {rounding}{refined}", f"{r['macs_ratio']:.2f}", b1, b32, within))
    return out


def _layers(r: dict) -> str:
    """The layers run sparse, as their shapes: 2048×2048, or in→out where they differ."""
    shapes = [r["considered"][n]["shape"] for n in r["sparse_compute_layers"]]
    return ", ".join(f"{a}×{b}" if a == b else f"{b}→{a}" for a, b in shapes) or "none"


def deploy_latency(src: list[dict]) -> list[str]:
    rows = src[0]["rows"]
    out = header("model", "sparsity", "batch", "sparse.onnx", "sparse-compact", "sparse-compute", "layers run sparse",
                 "accuracy dense → sparse")
    mlp = [r for r in rows if r["model"] == "mlp-2048"]
    for k, r in enumerate(mlp):
        ratios = [f"{r[v]['ratio']:.2f}" for v in ("sparse", "sparse-compact", "sparse-compute")]
        if r["sparse-compute"]["ratio"] < 0.9:
            ratios[2] = f"**{ratios[2]}**"
        accuracy = f"{100 * r['dense_accuracy']:.2f} → {pct(r['sparse_accuracy'])}" if r["batch"] == 1 else ""
        out.append(row("MLP 784-2048-2048-10" if k == 0 else "", f"{100 * r['target']:g}%", str(r["batch"]), *ratios,
                       _layers(r), accuracy))
    lenet = [r for r in rows if r["model"] == "lenet5"]
    if lenet:
        def span(values: list[float]) -> str:
            return f"{min(values):.2f}–{max(values):.2f}"
        targets = sorted({r["target"] for r in lenet})
        accs = " / ".join(f"{100 * next(r for r in lenet if r['target'] == t)['sparse_accuracy']:.2f}" for t in targets)
        out.append(row("LeNet-5", f"{100 * targets[0]:g}–{100 * targets[-1]:g}%",
                       ", ".join(str(b) for b in sorted({r["batch"] for r in lenet})),
                       *(span([r[v]["ratio"] for r in lenet]) for v in ("sparse", "sparse-compact", "sparse-compute")),
                       "none (layers too small)" if not any(r["sparse_compute_layers"] for r in lenet) else "",
                       f"{100 * lenet[0]['dense_accuracy']:.2f} → {accs}%"))
    return out


def deploy_size(src: list[dict]) -> list[str]:
    out = header("MLP-2048 at", "dense.onnx", "sparse-compact file", "sparse-compute folder",
                 "load RSS dense / compact / compute")
    for r in (r for r in src[0]["rows"] if r["model"] == "mlp-2048" and r["batch"] == 1):
        mb = {v: r[v]["bytes"] / 1e6 for v in ("dense", "sparse-compact", "sparse-compute")}
        rss = " / ".join(f"{r[v]['load_rss_bytes'] / 1e6:.1f}" for v in ("dense", "sparse-compact", "sparse-compute"))
        out.append(row(f"{100 * r['target']:g}%", f"{mb['dense']:.1f} MB", f"{mb['sparse-compact']:.1f} MB",
                       f"{mb['sparse-compute']:.1f} MB", f"{rss} MB"))
    return out


def _tp(r: dict) -> dict:
    return r.get("torch_pruning") or {}


def timm_sweep(src: list[dict]) -> list[str]:
    d = src[0]
    rows, tp = d["rows"], d.get("torch_pruning", {})
    both = tp.get("median_mac_reduction_where_both_work", {})
    count = {s: sum(_tp(r).get("status") == s for r in rows) for s in ("works", "crash", "timeout")}
    ours = d["counts"]
    everything = [_tp(r).get("mac_reduction", 0.0) if _tp(r).get("status") == "works" else 0.0 for r in rows]
    everything.sort()
    mid = len(everything) // 2
    tp_all = (everything[mid] + everything[~mid]) / 2 if everything else 0.0
    return [*header(f"{len(rows)} timm models, 30% of every group", "sparsepipe", f"Torch-Pruning {tp.get('version', '')}"),
            row("exact (compared with the masked model) / runs", str(ours["exact"]), str(count["works"])),
            row("refused whole, with a one-line reason", str(ours["refused"]), "–"),
            row("crash / timeout", f"{ours['crash']} / {ours['timeout']}", f"{count['crash']} / {count['timeout']}"),
            row("wrong (output differs from the masked model)", str(ours["wrong"]), "not checked"),
            row(f"median MACs removed where both work ({tp.get('both_work', 0)} models)",
                pct(both.get("sparsepipe") or 0, 1), pct(both.get("torch_pruning") or 0, 1)),
            row("median share of conv / Linear output channels cut, same models",
                pct(_median_where_both(rows, lambda r: r.get("channels_removed", 0.0)), 1),
                pct(_median_where_both(rows, lambda r: _tp(r).get("channels_removed", 0.0)), 1)),
            row("median MACs removed over all models (0 where refused or crashed)",
                pct(d["median_mac_reduction"], 1), pct(tp_all, 1))]


def _median_where_both(rows: list[dict], value: Callable[[dict], float]) -> float:
    both = sorted(value(r) for r in rows if r["status"] == "exact" and _tp(r).get("status") == "works")
    return (both[len(both) // 2] + both[~(len(both) // 2)]) / 2 if both else 0.0


def timm_sweep_models(src: list[dict]) -> list[str]:
    out = header("timm model", "sparsepipe", "MACs removed", "channels cut", "Torch-Pruning", "MACs removed",
                 "channels cut")
    for r in sorted(src[0]["rows"], key=lambda r: r["model"]):
        t = _tp(r)
        works = t.get("status") == "works"
        out.append(row(r["model"].removeprefix("timm:"), r["status"], pct(r.get("mac_reduction", 0), 1),
                       pct(r.get("channels_removed", 0), 1), t.get("status", "–"),
                       pct(t["mac_reduction"], 1) if works else "–", pct(t["channels_removed"], 1) if works else "–"))
    return out


def timm_story(src: list[dict]) -> list[str]:
    out = header("timm model (64×64 MNIST folder)", "start", "dense", "pruned", "exported latency", "MACs",
                 "gate (≤ 1 point)")
    for r in src[0]["rows"]:
        ckpt = r.get("checkpoint_epochs", 0)
        start = f"checkpoint ({ckpt} epochs), {r.get('epochs', '?')} fine-tuning" if ckpt else \
            f"random weights, {r.get('epochs', '?')} epochs"
        start += "".join(f", `{s}`" for s in r.get("settings") or [])
        if r["status"] != "ran":
            out.append(row(r["model"], start, "–", "–", "–", "–", f"run failed: {r.get('error', '')[:60]}"))
            continue
        out.append(row(r["model"], start, pct(r["dense_accuracy"], 1), pct(r["sparse_accuracy"], 1),
                       f"x{r['latency_ratio']:.2f}", f"x{r['macs_ratio']:.2f}", "passed" if r["gate_passed"] else "failed"))
    return out


def pipeline_lenet5(src: list[dict]) -> list[str]:
    """Each shipped LeNet-5 config run as it is: accuracies in onnxruntime, sparsity (global and per
    layer), weight storage, exported latency and the run's wall time."""
    out = header("config (`sparsepipe run …`)", "dense acc.", "sparse acc.", "global sparsity",
                 "per layer", "weights stored, dense → CSR/BSR", "latency ratio", "wall time")
    for run in src:
        r = run["report"]
        size = r["size"]
        out.append(row(f"`{run['command'].removeprefix('sparsepipe run ')}`", pct(r["dense"]["accuracy"]),
                       pct(r["sparse"]["accuracy"]), pct(r["sparsity"]["global"]),
                       ", ".join(pct(v, 0) for v in r["sparsity"]["per_layer"].values()),
                       f"{size['dense_bytes']:,} → {size['sparse_bytes']:,} B",
                       f"{r['latency']['sparse']['ratio_vs_dense']:.2f}", f"{run['wall_seconds']:.0f} s"))
    return out


def pipeline_spiking(src: list[dict]) -> list[str]:
    """The spiking CNN config run as it is: dense and LATS side by side."""
    r = src[0]["report"]
    rates = r["spiking"]["firing_rates"]
    layers = ", ".join(pct(v, 0) for v in r["sparsity"]["per_layer"].values())
    return header("", "dense", "LATS") + [
        row("accuracy, onnxruntime", pct(r["dense"]["accuracy"]), pct(r["sparse"]["accuracy"])),
        row("accuracy, PyTorch", pct(r["dense"]["torch_accuracy"]), pct(r["sparse"]["torch_accuracy"])),
        row("global sparsity (per layer)", "0%", f"{pct(r['sparsity']['global'])} ({layers})"),
        row("onnxruntime vs PyTorch: argmax agreement, mean \\|diff\\|",
            *(f"{pct(r[v]['agreement_with_torch'], 1)}, {r[v]['mean_abs_diff_vs_torch']:.1e}" for v in ("dense", "sparse"))),
        row(f"firing rates ({len(rates['dense'])} neuron layers)",
            *(" / ".join(pct(x, 1) for x in rates[v].values()) for v in ("dense", "sparse"))),
        row("latency p50, batch 1, 1 thread", *(f"{r['latency'][v]['p50_ms']:.3f} ms" for v in ("dense", "sparse")))]


TABLES = [
    Table("LATS vs STR vs GMP vs one-shot magnitude, three seeds", ["results/fair-sparse/results.json"],
          ".venv/bin/python tools/bench_fair.py sparse --epochs 12", fair_sparse,
          "lats and str rows re-measured on 2026-12-03 with issue 22's STR and issue 24's defaults "
          "(`--methods lats,str --update`, 83 minutes on one thread beside other jobs); the gmp and magnitude "
          "rows are the earlier run's (their code did not change)."),
    Table("LeNet-5 at 99% sparsity: the papers' Caffe LeNet-5, three seeds", ["results/lenet5-caffe-99/results.json"],
          ".venv/bin/python tools/bench_fair.py sparse --models lenet5_caffe --sparsities 0.99 --extra \"\" "
          "--methods gmp,lats --epochs 20 --out results/lenet5-caffe-99", caffe_lenet5_99),
    Table("GReg-1 / GReg-2 vs one-shot L1, LeNet-5 per layer, three seeds", ["results/fair-greg/results.json"],
          '.venv/bin/python tools/bench_fair.py greg --models lenet5 --sparsities 0.95,0.98,0.99 --extra ""',
          fair_greg, "Re-measured on 2026-12-03 with GReg's official timing, stop rules and ceil count (issue 24): "
                     "43 minutes on one thread beside other jobs; every cell within 0.2 points of the earlier run "
                     "but GReg-2 at 99% (42.64 → 46.39)."),
    Table("GReg-1 / GReg-2 vs one-shot L1, channels, ResNet-20, three seeds", ["results/fair-greg-filters/results.json"],
          ".venv/bin/python tools/bench_fair.py greg --granularity filter --models resnet20 --sparsities 2,3,5,10 "
          '--extra "" --epochs 4 --penalty-epochs 2 --finetune-epochs 2 --lr 0.1 --train-limit 3000 '
          "--out results/fair-greg-filters", fair_greg_filters,
          "Re-measured on 2026-12-03 with l1 counting channels as GReg-1 and GReg's official rules (issue 24): "
          "88 minutes on one thread beside other jobs."),
    Table("Every method at 90 / 95 / 98%, LeNet-5", ["results/methods-lenet5/results.json"],
          ".venv/bin/python tools/bench_methods.py --model lenet5 --data-root ../shared/data/mnist", methods_lenet5,
          "Re-measured on 2026-12-03 with issue 24's defaults (decay_1d, GReg's rules): 21.6 minutes on the 2 "
          "cores; the dense, magnitude and gmp rows came out identical to the earlier run."),
    Table("ResNet-20 on MNIST at 90%", ["results/methods-resnet20/results.json"],
          ".venv/bin/python tools/bench_methods.py --model resnet20 --methods lats,str,greg1 --sparsities 0.9 "
          "--epochs 4 --train-limit 12000 --lr 0.1 --out results/methods-resnet20", methods_resnet20,
          "Re-measured on 2026-12-03 with issue 24's defaults: 9.9 minutes on the 2 cores."),
    Table("From a trained model vs from scratch, LeNet-5", ["results/pretrained/results.json"],
          ".venv/bin/python tools/bench_pretrained.py --mnist ../shared/data/mnist", pretrained,
          "LATS rows re-measured on 2026-12-02 with issue 24's code (`--methods lats`, 1 thread, the 2 cores "
          "shared with four other jobs: their times are inflated; the dense model retrained to 99.24%); GMP and "
          "magnitude rows are the earlier run's from its 99.19% dense model (their code did not change)."),
    Table("Movement pruning vs GMP and LATS from a trained LeNet-5, three seeds", ["results/movement/results.json"],
          "OMP_NUM_THREADS=1 .venv/bin/python tools/bench_movement.py --models lenet5", movement),
    Table("Movement pruning vs GMP and LATS from a trained ResNet-20, three seeds",
          ["results/movement-resnet20/results.json"],
          "OMP_NUM_THREADS=1 .venv/bin/python tools/bench_movement.py --models resnet20 --out results/movement-resnet20 "
          "--finetune-epochs 3 --batch-size 32 --frequency 5", movement),
    Table("GReg-1 against one-shot L1, the same channels removed, ResNet-20",
          ["results/greg-filters/results.json", "results/greg-filters-high/results.json"],
          ".venv/bin/python tools/bench_greg_filters.py (2x, 3x) and --factors 5,10 --out results/greg-filters-high",
          greg_filters, "Re-measured on 2026-12-03 with GReg's official rules: 2x and 3x in 42 minutes on one "
                        "thread beside other jobs, 5x and 10x in 20 minutes on 2 threads."),
    Table("Latency next to MACs", ["results/structured/results.json", "results/structured-pow2/results.json",
                                   "results/structured-vgg16/results.json"],
          ".venv/bin/python tools/bench_structured.py --models resnet20,resnet56 --factors 2,3 (add --pow2 --out "
          "results/structured-pow2; for VGG-16: --models vgg16 --lr 0.02 --out results/structured-vgg16)",
          latency_vs_macs, "onnxruntime 1.31.1, torch 2.15; the first run's ResNet rows predate the widths field "
                           "and its VGG-16 rows (lr 0.1, 21.6%: it did not train) are not shown."),
    Table("Which widths are fast, ResNet-20", ["results/widths/results.json"],
          ".venv/bin/python tools/bench_widths.py", widths),
    Table("int8 on top of pruning", ["results/int8/results.json"], ".venv/bin/python tools/bench_int8.py", int8),
    Table("Latency targets: widths found and re-timed", ["results/latency-target/results.json"],
          ".venv/bin/python tools/bench_latency_target.py", latency_target),
    Table("Latency of the deployed variants", ["results/deploy/results.json"], ".venv/bin/python tools/bench_deploy.py",
          deploy_latency),
    Table("Size and load memory of the deployed variants", ["results/deploy/results.json"],
          ".venv/bin/python tools/bench_deploy.py", deploy_size),
    Table("Channel removal on timm models beside Torch-Pruning", ["results/timm-sweep/results.json"],
          ".venv/bin/pip install torch-pruning==1.6.1 timm==1.0.31 && "
          ".venv/bin/python tools/bench_torchvision_sweep.py --zoo timm --torch-pruning", timm_sweep),
    Table("Channel removal per timm model", ["results/timm-sweep/results.json"],
          ".venv/bin/python tools/bench_torchvision_sweep.py --zoo timm --torch-pruning", timm_sweep_models),
    Table("latency_target = 2 on timm models trained on an image folder", ["results/timm-latency-story/results.json"],
          ".venv/bin/python tools/bench_timm_story.py --epochs 3; .venv/bin/python tools/bench_timm_story.py "
          "--models regnety_004 --checkpoint-epochs 5 --epochs 4 --lr 0.01; .venv/bin/python tools/bench_timm_story.py "
          "--models mobilenetv3_large_100,efficientnet_b0,regnety_004 --checkpoint-epochs 12 --epochs 6 --lr 0.01 "
          "[--set train.distill=0.7]", timm_story,
          "2026-12-03, data.augment = none (the config's), one thread each, beside other jobs (2–3 at once: "
          "the latency search times its candidates under that load, so some rows stop short of x0.55); "
          "3 epochs from random weights leave the dense baselines unconverged."),
    Table("The shipped LeNet-5 configs, run as they are", [f"results/pipeline-runs/lenet5-{m}.json"
                                                            for m in ("lats", "gmp", "magnitude")],
          "OMP_NUM_THREADS=1 .venv/bin/python tools/bench_runs.py lenet5-lats lenet5-gmp lenet5-magnitude",
          pipeline_lenet5),
    Table("Spiking CNN, dense vs LATS", ["results/pipeline-runs/spiking-cnn-lats.json"],
          "OMP_NUM_THREADS=1 .venv/bin/python tools/bench_runs.py spiking-cnn-lats", pipeline_spiking),
    Table("Streaming at scale", ["results/streaming/results.json"],
          ".venv/bin/python tools/bench_streaming.py --mnist ../shared/data/mnist", streaming),
]


# README tables with numbers but no JSON to write them from yet (the check cannot cover them).
WITHOUT_JSON: dict[str, str] = {}


def rendered(table: Table) -> list[str]:
    return table.render([json.loads((ROOT / s).read_text()) for s in table.sources])


def document() -> str:
    """docs/tables.md: every table from its JSON, with its command and sources."""
    parts = ["# Results tables\n",
             "Written by `tools/tables.py` from the JSON beside each table (do not edit by hand; "
             "`tools/tables.py --check` runs in the tests). Numbers: this project's 2-core CPU machine.\n"]
    for t in TABLES:
        parts.append(f"## {t.name}\n")
        parts.append(f"Source: {', '.join(f'`{s}`' for s in t.sources)}. Measured by: `{t.command}`.\n")
        if t.note:
            parts.append(f"{t.note}\n")
        parts.append("\n".join(rendered(t)) + "\n")
    if WITHOUT_JSON:
        parts.append("## README tables not written from JSON yet\n")
        parts.append("\n".join(f"- {name}: {why}." for name, why in WITHOUT_JSON.items()) + "\n")
    return "\n".join(parts)


def numbers(lines: list[str]) -> list[str]:
    """The numbers of a table's body rows (header and separator left out), in order."""
    return [n.replace(",", "") for line in lines[2:] for n in NUMBER.findall(line)]


def key(header_row: str) -> str:
    """What identifies a table: its first two header cells (a README table with a column more or less
    than its JSON gives is still found, and then differs)."""
    return "|".join(c.strip() for c in header_row.strip("|").split("|")[:2])


def markdown_tables(text: str) -> dict[str, list[str]]:
    """Tables of a markdown text by `key`: header, separator and body lines."""
    found: dict[str, list[str]] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and set(lines[i + 1].replace("|", "")) <= set("-: "):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            found[key(lines[i])] = lines[i:j]
            i = j
        else:
            i += 1
    return found


def differences(readme: str, doc: str) -> list[str]:
    """What does not match the JSON: docs/tables.md not as written from it, and README tables (found by
    their header row) whose numbers differ from the rendered table's."""
    problems = []
    if doc != document():
        problems.append("docs/tables.md is not what tools/tables.py writes from the JSON: run tools/tables.py")
    in_readme = markdown_tables(readme)
    for t in TABLES:
        lines = rendered(t)
        theirs = in_readme.get(key(lines[0]))
        if theirs is None:
            problems.append(f"table {t.name!r} ({', '.join(t.sources)}) is in no page: README.md or docs/*.md")
        elif numbers(theirs) != numbers(lines):
            problems.append(f"table {t.name!r} differs from {', '.join(t.sources)}")
    return problems


def with_tables(readme: str) -> str:
    """`readme` with each table that has a registered table's key but other numbers replaced by the rendered
    one (tables whose numbers agree keep their wording and emphasis)."""
    for t in TABLES:
        lines = rendered(t)
        theirs = markdown_tables(readme).get(key(lines[0]))
        if theirs is not None and numbers(theirs) != numbers(lines):
            readme = readme.replace("\n".join(theirs) + "\n", "\n".join(lines) + "\n", 1)
    return readme


def pages() -> list[Path]:
    """The README and the reference pages that hold results tables (docs/tables.md is written, not read)."""
    return [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p != DOC)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    p.add_argument("--readme", action="store_true", help="also rewrite the README's tables that have a JSON source")
    args = p.parse_args(argv)
    if not args.check:
        DOC.parent.mkdir(exist_ok=True)
        DOC.write_text(document())
        if args.readme:
            for page in pages():
                page.write_text(with_tables(page.read_text()))
        return 0
    text = "\n\n".join(page.read_text() for page in pages())
    problems = differences(text, DOC.read_text() if DOC.exists() else "")
    for line in problems:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
