"""Regenerate tests/mnist_subset/ from the full MNIST IDX files (default ../shared/data/mnist).

The subset is class-balanced and deterministic: for each digit, the first PER_CLASS images of that
digit in file order, kept in their original order. It is written as the four standard gzipped IDX
files, so `load_data("mnist", "tests/mnist_subset")` reads it like the full set.

    python tools/make_mnist_subset.py [--src DIR] [--out DIR] [--train-per-class N] [--test-per-class N]
"""
import argparse
import gzip
import struct
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx_gz(path: Path) -> np.ndarray:
    """The array in a gzipped IDX file of unsigned bytes."""
    raw = gzip.open(path).read()
    dims = raw[3]
    shape = struct.unpack(f">{dims}I", raw[4:4 + 4 * dims])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    """`array` (uint8) as a gzipped IDX file; mtime 0 so the bytes are reproducible."""
    head = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with open(path, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as gz:
        gz.write(head + np.ascontiguousarray(array, np.uint8).tobytes())


def balanced_pick(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first `per_class` samples of each class, in file order."""
    picks = [np.flatnonzero(labels == c)[:per_class] for c in range(10)]
    return np.sort(np.concatenate(picks))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=REPO.parent / "shared" / "data" / "mnist")
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "data" / "mnist-subset")
    ap.add_argument("--train-per-class", type=int, default=300)
    ap.add_argument("--test-per-class", type=int, default=100)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", args.train_per_class), ("t10k", args.test_per_class)):
        img_name, lbl_name = SPLITS[split]
        images, labels = read_idx_gz(args.src / f"{img_name}.gz"), read_idx_gz(args.src / f"{lbl_name}.gz")
        keep = balanced_pick(labels, per_class)
        write_idx_gz(args.out / f"{img_name}.gz", images[keep])
        write_idx_gz(args.out / f"{lbl_name}.gz", labels[keep])
        print(f"{split}: {len(keep)} of {len(labels)} images ({per_class} per class)")


if __name__ == "__main__":
    main()
