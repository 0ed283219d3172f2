"""Every ONNX variant against dense: latency (interleaved, 1 thread), file size and load memory.

Models: an FC-heavy MLP (784-2048-2048-10) and LeNet-5 on MNIST, pruned layer-wise by magnitude
to each sparsity (one dense epoch, one fine-tuning epoch). Writes results/deploy/results.json and
latency_ratio.png.

    .venv/bin/python tools/bench_deploy.py --data-root ../shared/data/mnist
"""
from __future__ import annotations

import argparse
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compress import atomic  # noqa: E402
from compress.data import load_data  # noqa: E402
from compress.models import ModelConfig, build_model  # noqa: E402
from compress.config.prune import PruneConfig  # noqa: E402
from compress.pruners import build_pruner  # noqa: E402
from compress.selection import select_layers  # noqa: E402
from compress.sparsity import global_sparsity  # noqa: E402
from compress.train import TrainConfig, train  # noqa: E402
from deploy.export import export_onnx  # noqa: E402
from deploy.report import save_png  # noqa: E402
from deploy.latency import compare_latency  # noqa: E402
from deploy.formats import save_sparse  # noqa: E402
from deploy.onnx_variants import make_compact, make_sparse_compute  # noqa: E402
from deploy.runtime import open_model  # noqa: E402
from deploy.validate import onnx_logits  # noqa: E402

MODELS = {"mlp-2048": ModelConfig(name="mlp", hidden=[2048, 2048]), "lenet5": ModelConfig(name="lenet5")}
RSS_PROBE = """
import sys, resource
sys.path.insert(0, {root!r})
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * resource.getpagesize()
from deploy.runtime import open_model
import numpy as np
before = rss()
s = open_model({path!r})
s.run(None, {{s.get_inputs()[0].name: np.zeros({shape}, np.float32)}})
print(rss() - before)
"""


def load_memory(path: Path, shape: list[int]) -> int:
    """Resident memory added by loading and running the model once, in a fresh process."""
    code = RSS_PROBE.format(root=str(Path(__file__).resolve().parents[1]), path=str(path), shape=shape)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def trained(name: str, data, sparsity: float, epochs: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(MODELS[name], data.input_shape, data.num_classes)
    cfg = PruneConfig(method="magnitude" if sparsity else "dense")
    cfg.magnitude.sparsity, cfg.magnitude.scope = sparsity or 0.5, "layer"
    pruner = build_pruner(cfg)
    train(model, pruner, data, TrainConfig(epochs=epochs, lr=0.05, batch_size=128),
          select_layers(model, cfg.layers), progress=False)
    return pruner.freeze().eval()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="../shared/data/mnist")
    p.add_argument("--sparsities", default="0.9,0.95,0.98")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--out", type=Path, default=Path("results/deploy"))
    args = p.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    data = load_data("mnist", str(Path(args.data_root).resolve()))
    batches = [int(b) for b in args.batches.split(",")]
    meta = {"machine": f"{platform.platform()}, {torch.get_num_threads()} torch threads", "threads": 1,
            "onnxruntime": ort.__version__, "seconds_per_setting": args.seconds, "rows": []}
    x_all = data.test.x.numpy()
    for name in args.models.split(","):
        folder = out / name
        dense = trained(name, data, 0.0, args.epochs)
        export_onnx(dense, data.test.x[:32], folder / "dense.onnx")
        dense_acc = float((onnx_logits(open_model(folder / "dense.onnx"), x_all, 512).argmax(1) == data.test.y.numpy()).mean())
        for sparsity in tqdm([float(s) for s in args.sparsities.split(",")], desc=name):
            model = trained(name, data, sparsity, args.epochs)
            sub = folder / f"s{sparsity}"
            export_onnx(model, data.test.x[:32], sub / "sparse.onnx")
            save_sparse(sub / "csr", {n: model.get_submodule(n).weight.detach()  # what the convert stage writes
                                      for n in select_layers(model, PruneConfig().layers)})
            make_compact(sub / "sparse.onnx", sub / "sparse-compact.onnx")
            acc = float((onnx_logits(open_model(sub / "sparse.onnx"), x_all, 512).argmax(1) == data.test.y.numpy()).mean())
            for batch in batches:
                compute = sub / f"sparse-compute-b{batch}"
                manifest = make_sparse_compute(sub / "sparse.onnx", sub / "csr", compute, batch=batch, threads=1)
                paths = {"dense": folder / "dense.onnx", "sparse": sub / "sparse.onnx",
                         "sparse-compact": sub / "sparse-compact.onnx", "sparse-compute": compute}
                sessions = {k: open_model(v, threads=1) for k, v in paths.items()}
                x = np.ascontiguousarray(x_all[:batch])
                lat = compare_latency(sessions, x, warmup=20, runs=50, seconds=args.seconds, warmup_seconds=0.5)
                shape = [batch, *data.input_shape]
                row = {"model": name, "sparsity": global_sparsity(model, select_layers(model, PruneConfig().layers)),
                       "target": sparsity, "batch": batch, "dense_accuracy": dense_acc, "sparse_accuracy": acc,
                       "sparse_compute_layers": list(manifest["layers"]), "considered": manifest["considered"]}
                for k, v in paths.items():
                    size = sum(f.stat().st_size for f in v.rglob("*")) if v.is_dir() else v.stat().st_size
                    row[k] = {"p50_ms": lat[k]["p50_ms"], "p90_ms": lat[k]["p90_ms"],
                              "ratio": lat[k]["p50_ms"] / lat["dense"]["p50_ms"], "bytes": size,
                              "load_rss_bytes": load_memory(v, shape)}
                meta["rows"].append(row)
                tqdm.write(f"{name} {sparsity:.2f} b{batch}: " + ", ".join(
                    f"{k} x{row[k]['ratio']:.2f}" for k in paths if k != "dense")
                    + f" | sparse layers: {row['sparse_compute_layers']}")
                atomic.write_json(out / "results.json", meta)
    plot(meta, out / "latency_ratio.png")
    return 0


def plot(meta: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(r["model"], r["batch"]) for r in meta["rows"]})
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.6), squeeze=False)
    for ax, (model, batch) in zip(axes[0], keys):
        rows = sorted((r for r in meta["rows"] if r["model"] == model and r["batch"] == batch),
                      key=lambda r: r["target"])
        for variant in ("sparse", "sparse-compact", "sparse-compute"):
            ax.plot([100 * r["target"] for r in rows], [r[variant]["ratio"] for r in rows], "o-", label=variant)
        ax.axhline(1.0, color="grey", ls="--")
        top = max(r[v]["ratio"] for r in rows for v in ("sparse", "sparse-compact", "sparse-compute"))
        ax.set_ylim(0, max(1.2, 1.05 * top))  # from 0: ±1% noise must not look like an effect
        ax.set(title=f"{model}, batch {batch}", xlabel="sparsity (%)", ylabel="latency / dense (p50)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)


if __name__ == "__main__":
    sys.exit(main())
