"""Mutation testing of the core modules with cosmic-ray (not in CI: each mutant reruns tests).

For each target (a module and the fast tests that guard it) cosmic-ray writes every mutant of the
module into the file in place, runs the tests, and restores the file. Writes
results/mutation/TARGET.json: counts, score (killed / all run) and every surviving mutant's diff.

    python tools/mutation.py gate formats          # whole modules
    python tools/mutation.py formats --sample 80   # a seeded sample of 80 mutants (slow modules)
    python tools/mutation.py gate --survivors      # only the last run's survivors (after adding tests)
    python tools/mutation.py --list

Needs the `mutation` extra (pip install -e '.[mutation]'). Run it on a clean tree: cosmic-ray edits the
module under test while a mutant runs (and restores it after).
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results" / "mutation"
# target -> (module mutated, tests that must kill its mutants): fast, deterministic test files only
TARGETS: dict[str, tuple[str, list[str]]] = {
    "gate": ("deploy/gate.py", ["tests/test_gate.py"]),
    "formats": ("deploy/formats.py", ["tests/test_formats.py"]),
    "sparse_check": ("deploy/sparse_check.py", ["tests/test_sparse_check.py", "tests/test_formats.py"]),
    "report": ("deploy/report.py", ["tests/test_report.py", "tests/test_gate.py"]),
    "validate": ("deploy/validate.py", ["tests/test_validate_numbers.py", "tests/test_export_validate.py",
                                       "tests/test_timing_decisions.py"]),
    "magnitude": ("compress/pruners/magnitude.py", ["tests/test_magnitude.py", "tests/test_pruner_weights.py",
                                                   "tests/test_pruners.py"]),
    "remove": ("compress/structured/remove.py", ["tests/test_channel_correctness.py"]),
    "recurrent": ("compress/structured/recurrent.py", ["tests/test_recurrent.py"]),
    "lats": ("compress/pruners/lats.py", ["tests/test_pruners.py", "tests/test_pruner_weights.py",
                                         "tests/test_methods.py"]),
    "str": ("compress/pruners/str_reparam.py", ["tests/test_methods.py", "tests/test_pruner_weights.py"]),
    "greg": ("compress/pruners/greg.py", ["tests/test_greg_rules.py", "tests/test_option_defaults.py",
                                         "tests/test_pruner_weights.py", "tests/test_methods.py"]),
    "gmp": ("compress/pruners/gmp.py", ["tests/test_gmp.py", "tests/test_pruner_weights.py", "tests/test_methods.py"]),
    "movement": ("compress/pruners/movement.py", ["tests/test_movement.py"]),
    "ops": ("compress/structured/ops.py", ["tests/test_channel_rules.py", "tests/test_tracing.py"]),
    "graph": ("compress/structured/graph.py", ["tests/test_tracing.py", "tests/test_channel_rules.py",
                                              "tests/test_attention_heads.py"]),
    "shipped": ("deploy/shipped.py", ["tests/test_shipped.py"]),
}


def config(module: str, tests: list[str], timeout: float) -> str:
    command = f"{sys.executable} -m pytest -x -q -p no:cacheprovider {' '.join(tests)}"
    return (f'[cosmic-ray]\nmodule-path = "{module}"\ntimeout = {timeout}\nexcluded-modules = []\n'
            f'test-command = "env OMP_NUM_THREADS=1 {command}"\n\n[cosmic-ray.distributor]\nname = "local"\n')


def keep_only(session: Path, n: int = 0, seed: int = 0, survivors: list[dict] | None = None) -> int:
    """Mark as skipped all mutants but a seeded sample of `n`, or but the earlier `survivors` (same
    operator and occurrence); returns how many mutants there are."""
    from cosmic_ray.work_db import use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    with use_db(str(session)) as db:
        items = sorted(db.pending_work_items, key=lambda item: item.job_id)
        if survivors is not None:
            wanted = {(s["operator"], s["occurrence"]) for s in survivors}
            keep = {i.job_id for i in items if (i.mutations[0].operator_name, i.mutations[0].occurrence) in wanted}
        else:
            keep = set(random.Random(seed).sample([i.job_id for i in items], min(n, len(items))))
        for item in items:
            if item.job_id not in keep:
                db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
    return len(items)


def summary(session: Path, target: str, module: str, tests: list[str], total: int, seconds: float) -> dict:
    """Counts, score and the surviving mutants (operator, line, diff) of a finished session."""
    from cosmic_ray.work_db import use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    killed, survived, incompetent = 0, [], 0
    with use_db(str(session)) as db:
        for item, result in db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            if result.test_outcome == TestOutcome.SURVIVED:
                m = item.mutations[0]
                survived.append({"job": item.job_id, "operator": m.operator_name, "occurrence": m.occurrence,
                                 "line": m.start_pos[0], "diff": result.diff})
            elif result.test_outcome == TestOutcome.INCOMPETENT:
                incompetent += 1
            else:
                killed += 1
    run = killed + len(survived) + incompetent
    from importlib.metadata import version
    return {"target": target, "module": module, "tests": tests, "tool": f"cosmic-ray {version('cosmic-ray')}",
            "mutants": total, "run": run, "killed": killed, "incompetent": incompetent, "survived": len(survived),
            "score": killed / (killed + len(survived)) if killed + len(survived) else None, "seconds": round(seconds),
            "score_counts": "killed / (killed + survived); incompetent mutants (the mutated module or the test "
                            "command could not run) are counted apart",
            "survivors": sorted(survived, key=lambda s: s["line"])}


def run_target(target: str, sample: int, seed: int, timeout: float, survivors: bool = False) -> dict:
    module, tests = TARGETS[target]
    OUT.mkdir(parents=True, exist_ok=True)
    earlier = json.loads((OUT / f"{target}.json").read_text()) if survivors else None
    with tempfile.TemporaryDirectory() as work:
        cfg, session = Path(work) / "cr.toml", Path(work) / "session.sqlite"
        cfg.write_text(config(module, tests, timeout))
        cr = [str(Path(sys.executable).parent / "cosmic-ray")]
        subprocess.run([*cr, "init", str(cfg), str(session)], cwd=REPO, check=True)
        baseline = subprocess.run([*cr, "baseline", str(cfg)], cwd=REPO)
        if baseline.returncode != 0:
            raise SystemExit(f"{target}: the tests fail on the unmutated code; fix them first")
        total = keep_only(session, sample, seed, earlier and earlier["survivors"]) if sample or earlier else None
        t0 = time.perf_counter()
        subprocess.run([*cr, "exec", str(cfg), str(session)], cwd=REPO, check=True)
        result = summary(session, target, module, tests, total or 0, time.perf_counter() - t0)
        if result["incompetent"] == result["run"]:
            raise SystemExit(f"{target}: no mutant could be tested (is the test command right?)")
    if earlier:  # the mutants killed before stay killed: the tests only grew
        newly = result["killed"]
        result.update(killed=earlier["killed"] + newly, run=earlier["run"], mutants=earlier["mutants"],
                      incompetent=earlier["incompetent"], sample=earlier["sample"],
                      score=(earlier["killed"] + newly) / (earlier["killed"] + earlier["survived"]),
                      earlier={k: earlier[k] for k in ("killed", "survived", "score")})
        result["survived"] = len(result["survivors"])
    elif not sample:
        result["mutants"] = result["run"]
    if not earlier:
        result["sample"] = {"size": sample, "seed": seed} if sample else None
    (OUT / f"{target}.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("targets", nargs="*", help=f"any of: {', '.join(TARGETS)}")
    ap.add_argument("--sample", type=int, default=0, help="run only a seeded sample of this many mutants")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant before it counts as killed")
    ap.add_argument("--survivors", action="store_true", help="rerun only the survivors in results/mutation/TARGET.json")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    if args.list or not args.targets:
        for name, (module, tests) in TARGETS.items():
            print(f"{name:14} {module:34} {' '.join(tests)}")
        return
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        ap.error(f"unknown target {unknown[0]!r} (see --list)")
    for target in args.targets:
        r = run_target(target, args.sample, args.seed, args.timeout, args.survivors)
        print(f"{target}: {r['killed']} killed, {r['survived']} survived, {r['incompetent']} incompetent "
              f"(score {r['score']:.1%}) -> results/mutation/{target}.json")


if __name__ == "__main__":
    main()
