"""Seeded mutation fuzzing of the JSON files sparsepipe reads (run by test_hostile_files.py in a child
process, so that a crash shows up as a signal instead of killing pytest).

Targets: a report.json read by `sparsepipe gate`, a convert-stage manifest.json read by
formats.load_sparse, and a sparse-compute manifest.json read by runtime.open_model. Each mutation
changes one place of the document (a value replaced by another type, a huge, negative, NaN or
nested value; a key removed or added) or its bytes (truncated, flipped, deeply nested). Outcome per
mutation: `error` (exit 2 / a UserError), `pass`/`fail` (a gate verdict on a report still valid),
`same` (a manifest that still loads the same arrays), `different` (it loads other arrays: silently
wrong), `traceback` (any other exception). Prints one JSON summary line; exits 1 on a traceback.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from compress.errors import UserError  # noqa: E402

VALUES = [None, True, False, -1, 0, 1, 2.0, -0.5, 1e308, 10**30, "x", "", [], {}, [1, 2], {"a": 1},
          float("nan"), float("inf"), [[[[[]]]]]]


def places(doc, path=()):
    """Every (path) to a value inside `doc`."""
    yield path
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from places(v, path + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:8]):
            yield from places(v, path + (i,))


def mutate_tree(doc, rng: np.random.Generator):
    doc = copy.deepcopy(doc)
    spots = [p for p in places(doc) if p]
    path = spots[int(rng.integers(len(spots)))]
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    kind = int(rng.integers(4))
    if kind == 0 and isinstance(parent, dict):
        del parent[path[-1]]
    elif kind == 1 and isinstance(parent, dict):
        parent["unexpected"] = VALUES[int(rng.integers(len(VALUES)))]
    else:
        parent[path[-1]] = VALUES[int(rng.integers(len(VALUES)))]
    return doc


def mutate_bytes(text: str, rng: np.random.Generator) -> bytes:
    data = bytearray(text.encode())
    kind = int(rng.integers(3))
    if kind == 0:
        return bytes(data[: int(rng.integers(len(data)))])
    if kind == 1:
        for i in rng.integers(0, len(data), size=4):
            data[i] = int(rng.integers(256))
        return bytes(data)
    return b"[" * int(rng.integers(1000, 200_000))


def variants(doc, rng: np.random.Generator, rounds: int):
    for _ in range(rounds):
        if rng.random() < 0.8:
            yield json.dumps(mutate_tree(doc, rng), allow_nan=True).encode()
        else:
            yield mutate_bytes(json.dumps(doc), rng)


def gate_outcome(path: Path) -> str:
    from deploy.cli import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        code = main(["gate", str(path)])
    if code == 2 and err.getvalue().count("\n") == 1:
        return "error"
    return {0: "pass", 1: "fail"}.get(code, f"exit {code}")


def arrays_outcome(load, original) -> str:
    try:
        got = load()
    except UserError:
        return "error"
    same = set(got) == set(original) and all(
        got[k].shape == original[k].shape and np.array_equal(np.asarray(got[k]), np.asarray(original[k]))
        for k in original)
    return "same" if same else "different"


def main(work: Path, rounds: int, seed: int) -> None:
    from deploy.formats import load_sparse
    from deploy.runtime import open_model

    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}
    x = np.load(work / "x.npy")
    report = json.loads((work / "report.json").read_text())
    targets = {
        "report": (work / "report.json", report, lambda p: gate_outcome(p)),
        "sparse manifest": (work / "sparse" / "manifest.json", None,
                            lambda p: arrays_outcome(lambda: load_sparse(p.parent), sparse_original)),
        "compute manifest": (work / "compute" / "manifest.json", None,
                             lambda p: arrays_outcome(lambda: {"y": open_model(p.parent).run(None, {"input": x})[0]},
                                                      compute_original)),
    }
    sparse_original = load_sparse(work / "sparse")
    compute_original = {"y": open_model(work / "compute").run(None, {"input": x})[0]}
    for name, (path, doc, outcome) in targets.items():
        original = path.read_bytes()
        doc = doc if doc is not None else json.loads(original)
        for i, data in enumerate(variants(doc, rng, rounds)):
            path.write_bytes(data)
            try:
                result = outcome(path)
            except Exception as e:  # a traceback a user would see
                result = "traceback"
                import traceback
                where = traceback.extract_tb(e.__traceback__)[-1]
                print(f"{name} #{i}: {type(e).__name__}: {str(e)[:200]} ({Path(where.filename).name}:{where.lineno})",
                      file=sys.stderr)
            counts[f"{name}: {result}"] = counts.get(f"{name}: {result}", 0) + 1
        path.write_bytes(original)
    counts["mutations"] = 3 * rounds
    print(json.dumps(counts))
    sys.exit(1 if any(k.endswith("traceback") for k in counts) else 0)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
