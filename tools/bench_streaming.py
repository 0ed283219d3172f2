"""Streaming at scale: one training epoch over an image folder of real MNIST images at two sizes,
with and without DataLoader workers; peak resident memory and images per second, side by side.

Each setting runs in a fresh process (so its peak memory is its own). `in-memory` decodes the whole
folder into one tensor first (what `imagefolder` did before it streamed), for contrast.

    .venv/bin/python tools/bench_streaming.py --mnist ../shared/data/mnist --sizes 2000,20000
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def child(args) -> dict:
    """One epoch of `args.model` over the folder; prints a JSON row."""
    import torch

    from compress.config.data import DataConfig
    from compress.data import Split, load_config_data
    from compress.distributed import World
    from compress.loader import batches, first
    from compress.models import ModelConfig, build_model

    torch.manual_seed(0)
    data = load_config_data(DataConfig(name="imagefolder", root=args.folder, image_size=args.image_size,
                                       workers=args.workers, mean=[0.13], std=[0.31]))
    train = data.train
    t0 = time.perf_counter()
    if args.mode == "in-memory":
        train = Split(*first(data.train, len(data.train)))  # every image decoded up front
    if args.model == "linear":  # almost no compute: decoding dominates
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(torch.tensor(data.input_shape).prod()), 10))
    else:
        model = build_model(ModelConfig(name=args.model), data.input_shape, data.num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    seen = 0
    for x, y in batches(train, 64, shuffle=True, seed=0, epoch=0, workers=args.workers if args.mode == "stream" else 0,
                        world=World(), num_classes=data.num_classes):
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
        seen += len(y)
    seconds = time.perf_counter() - t0
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {"images": seen, "seconds": seconds, "images_per_s": seen / seconds, "peak_rss_bytes": own,
            "peak_worker_rss_bytes": workers if args.workers and args.mode == "stream" else 0}


def ensure_folder(mnist: Path, out: Path, count: int) -> Path:
    folder = out / "folders" / f"mnist-{count}"
    if not (folder / "test").is_dir():
        subprocess.run([sys.executable, str(ROOT / "tools" / "make_imagefolder.py"), str(mnist), str(folder),
                        "--train", str(count), "--test", "200"], check=True, stdout=subprocess.DEVNULL)
    return folder


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deploy.report import save_png

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    labels = [f"{r['model'].split(':')[-1]}@{r['image_size']}\n{r['mode']} w{r['workers']}\n{r['size'] // 1000}k"
              for r in rows]
    axes[0].bar(range(len(rows)), [(r["peak_rss_bytes"] + r["peak_worker_rss_bytes"]) / 2**20 for r in rows])
    axes[0].set(title="peak resident memory (MiB, process + largest worker)")
    axes[1].bar(range(len(rows)), [r["images_per_s"] for r in rows])
    axes[1].set(title="training images / s (one epoch)")
    for ax in axes:
        ax.set_xticks(range(len(rows)), labels, fontsize=6)
    fig.tight_layout()
    save_png(fig, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mnist", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    p.add_argument("--sizes", default="2000,20000")
    p.add_argument("--models", default="torchvision:resnet18@32,linear@224",
                   help="MODEL@IMAGE_SIZE list; 'linear' is one Linear layer, so decoding dominates")
    p.add_argument("--image-size", type=int, default=32, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "streaming")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--mode", default="stream", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    from tqdm import tqdm

    from compress import atomic

    rows = []
    settings = [(*m.split("@"), s, mode, w) for m in args.models.split(",") for s in map(int, args.sizes.split(","))
                for mode, w in (("stream", 0), ("stream", 2), ("in-memory", 0))]
    for model, image_size, size, mode, workers in tqdm(settings, desc="settings"):
        folder = ensure_folder(args.mnist, args.out, size)
        res = subprocess.run([sys.executable, __file__, "--child", "--folder", str(folder), "--model", model,
                              "--workers", str(workers), "--mode", mode, "--image-size", image_size],
                             capture_output=True, text=True, check=True)
        row = {"model": model, "image_size": int(image_size), "size": size, "mode": mode, "workers": workers,
               **json.loads(res.stdout)}
        rows.append(row)
        tqdm.write(f"{model} {size} {mode} w{workers}: {row['images_per_s']:.0f} img/s, "
                   f"peak {row['peak_rss_bytes'] / 2**20:.0f} MiB (+ worker {row['peak_worker_rss_bytes'] / 2**20:.0f})")
        summary = {"machine": f"{platform.platform()}, {platform.machine()}, {os.cpu_count()} cores",
                   "batch_size": 64, "rows": rows}
        atomic.write_json(args.out / "results.json", summary)
    plot(rows, args.out / "streaming.png")


if __name__ == "__main__":
    main()
