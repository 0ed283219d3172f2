"""Write real MNIST images (from the four IDX files) as an image folder: OUT/train/CLASS/*.png and
OUT/test/CLASS/*.png, the layout `data.name = "imagefolder"` reads. Real data for the own-model
example and the streaming benchmark.

    .venv/bin/python tools/make_imagefolder.py ../shared/data/mnist data/mnist-folder --train 2000 --test 500
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from compress.data import load_idx_folder  # noqa: E402


def write_split(images, labels, out: Path, count: int, offset: int = 0) -> int:
    """Write `count` images (cycling through the split when it holds fewer) and return how many."""
    for i in tqdm(range(count), desc=out.name, leave=False):
        j = (offset + i) % len(labels)
        folder = out / str(int(labels[j]))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[j]).save(folder / f"{i:07d}.png")
    return count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mnist", type=Path, help="folder with the four MNIST IDX files")
    p.add_argument("out", type=Path, help="image folder to write (must not exist)")
    p.add_argument("--train", type=int, default=2000, help="training images (default 2000)")
    p.add_argument("--test", type=int, default=500, help="test images (default 500)")
    args = p.parse_args()
    if args.out.exists():
        sys.exit(f"{args.out}: exists; choose a new folder")
    for split, count in (("train", args.train), ("test", args.test)):
        images, labels = load_idx_folder(args.mnist, split)
        write_split(images, labels, args.out / split, count)
    print(f"{args.out}: {args.train} training and {args.test} test images in 10 class folders")


if __name__ == "__main__":
    main()
