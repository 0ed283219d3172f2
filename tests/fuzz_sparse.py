"""Seeded mutation fuzzing of sparse files (run by test_hostile_files.py in a child process, so that a
crash shows up as a signal instead of killing pytest).

Targets: a convert-stage folder (weights.safetensors + manifest.json) read by formats.load_sparse, and
a sparse-compute folder run by runtime.open_model. Each mutation changes one array of the weights
file: values overwritten (random, huge, negative), truncated, reshaped, or cast to another dtype.
Half the mutations also re-stamp the manifest's sha256, as a crafted file would. Outcome per
mutation: `error` (a UserError), `same` (the result equals the original), or `different`.
Prints one JSON summary line.

    python tests/fuzz_sparse.py WORK_FOLDER MUTATIONS SEED
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from compress import atomic  # noqa: E402
from compress.errors import UserError  # noqa: E402


def mutate(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    kind = rng.integers(0, 5)
    flat = a.reshape(-1).copy()
    if kind == 0 and flat.size:  # overwrite values
        idx = rng.integers(0, flat.size, size=max(1, flat.size // 50))
        if flat.dtype.kind == "f":
            flat[idx] = rng.choice([np.nan, np.inf, -1e30, 0.0, 3.0], size=len(idx))
        else:
            info = np.iinfo(flat.dtype)
            flat[idx] = rng.choice([-1, 10**6, info.max, info.min, 64, 222, 0], size=len(idx)).astype(flat.dtype)
        return flat.reshape(a.shape)
    if kind == 1:  # truncate
        return flat[: int(rng.integers(0, max(flat.size, 1)))]
    if kind == 2 and flat.size >= 2:  # reshape
        return flat[: flat.size // 2 * 2].reshape(2, -1)
    if kind == 3:  # another dtype
        return flat.astype({"f": np.float64, "i": np.int64, "u": np.int64}[flat.dtype.kind]).reshape(a.shape)
    return np.concatenate([flat, flat[:3]])  # longer


def rewrite(folder: Path, arrays: dict, key: str, value: np.ndarray, rehash: bool, manifest: dict) -> None:
    save_file({**arrays, key: np.ascontiguousarray(value)}, str(folder / "weights.safetensors"))
    m = dict(manifest)
    if rehash:
        m["weights_sha256"] = atomic.sha256_file(folder / "weights.safetensors")
    (folder / "manifest.json").write_text(json.dumps(m))


def main(work: Path, mutations: int, seed: int) -> None:
    from deploy.formats import load_sparse
    from deploy.runtime import open_model

    rng = np.random.default_rng(seed)
    x = np.load(work / "x.npy")
    targets = {"convert": (work / "sparse", work / "sparse"), "compute": (work / "compute" / "csr", work / "compute")}
    originals = {"convert": load_sparse(work / "sparse"),
                 "compute": open_model(work / "compute").run(None, {"input": x})[0]}
    counts = {"mutations": 0, "error": 0, "same": 0, "different": 0, "different_unhashed": 0}
    while counts["mutations"] < mutations:  # a count, not a time: the same mutations on any machine
        name = ["convert", "compute"][counts["mutations"] % 2]
        csr_folder, root = targets[name]
        backup = work / f"{name}.backup"
        if not backup.exists():
            shutil.copytree(csr_folder, backup)
        arrays = load_file(str(backup / "weights.safetensors"))
        manifest = json.loads((backup / "manifest.json").read_text())
        key = sorted(arrays)[int(rng.integers(0, len(arrays)))]
        rehash = bool(rng.integers(0, 2))
        rewrite(csr_folder, arrays, key, mutate(arrays[key], rng), rehash, manifest)
        print(f"{name} {key} rehash={rehash}", file=sys.stderr, flush=True)  # the last line names a crash
        counts["mutations"] += 1
        try:
            if name == "convert":
                got = load_sparse(root)
                same = set(got) == set(originals[name]) and all(
                    np.array_equal(got[k].numpy(), originals[name][k].numpy(), equal_nan=True) for k in got)
            else:
                out = open_model(root).run(None, {"input": x})[0]
                same = np.array_equal(out, originals[name], equal_nan=True)
        except UserError:
            counts["error"] += 1
            continue
        counts["same" if same else "different"] += 1
        if not same and not rehash:
            counts["different_unhashed"] += 1
    print(json.dumps(counts))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
