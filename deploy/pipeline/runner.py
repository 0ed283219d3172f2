"""Run stages in order over a run folder, skipping the ones that are up to date.

A stage that runs writes into a staging folder beside its own (`.NAME.new/`) and its files are moved
into place only when it has finished, so a failure (a full disk, a crash, a bad input found late)
leaves the previous outputs and their manifest as they were. Training resumes from the checkpoint
in the staging folder when its inputs are unchanged.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Callable

from compress import atomic, distributed
from compress.errors import UserError

from ..report import load_report
from ..report_schema import Report
from .cache import fingerprint, read_manifest, up_to_date, write_manifest
from .run import Run
from .stage import BY_NAME, Stage

MARKER = ".inputs"  # the fingerprint a staging folder was started for


def verify_upstream(run: Run, upstream: list[Stage]) -> None:
    """Every file an upstream stage recorded must still hash as recorded before this stage reads it."""
    for up in upstream:
        manifest = read_manifest(run, up) or {"outputs": {}}
        for rel, digest in manifest["outputs"].items():
            path = run.dir / rel
            inside(run.dir, path, f"stage '{up.name}' lists {rel!r}")
            if not path.is_file() or atomic.sha256_file(path) != digest:
                raise UserError(f"{path}: changed since stage '{up.name}' wrote it (re-run `sparsepipe "
                                f"{up.name} {run.dir} --force` to rebuild it)")


def inside(root: Path, path: Path, what: str) -> None:
    """Refuse a path that leaves the run folder: an absolute or '..' path, or a symlink on the way (the
    files it leads to are not sparsepipe's to read, hash or replace)."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    if rel == ".." or rel.startswith(".." + os.sep) or os.path.isabs(rel):
        raise UserError(f"{root}: {what}, which is outside the run folder")
    here = Path(root)
    for part in Path(rel).parts:
        here = here / part
        if here.is_symlink():
            raise UserError(f"{here}: is a symbolic link inside the run folder; sparsepipe does not follow it "
                            f"({what}); remove it and rerun")


def move_into_place(staging: Path, final: Path) -> None:
    """Move every file of `staging` to the same place under `final` (each an atomic rename); remove staging."""
    for path in sorted(p for p in staging.rglob("*") if p.is_file() and p.name != MARKER):
        dest = final / path.relative_to(staging)
        inside(final.parent, dest, f"writing {dest.name}")
        if dest.parent.exists() and not dest.parent.is_dir():
            raise UserError(f"{dest.parent}: is a file where sparsepipe keeps a folder of its outputs; move it away")
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest)
    shutil.rmtree(staging)


def run_stage(run: Run, name: str, force: bool = False, work: Callable[[Run], list[str]] | None = None) -> bool:
    """Run one stage unless up to date; returns True when it ran.

    `work` stands in for the stage's own function (same contract: write into run.stage_dir, return the
    files written), e.g. to record a model trained outside the pipeline as the stage's output.
    Under torchrun every rank runs a collective stage (train); rank 0 alone writes and moves files.
    """
    stage = BY_NAME[name]
    upstream = [BY_NAME[u] for u in stage.upstream]
    world = distributed.current()
    fp = fingerprint(run, stage, upstream)
    if not force and up_to_date(run, stage, fp):
        return False
    verify_upstream(run, upstream)
    staging = run.dir / f".{stage.folder}.new"
    marker = staging / MARKER
    if staging.is_symlink():  # ours is a folder: a link may lead to files sparsepipe must not touch
        raise UserError(f"{staging}: is a symbolic link, not sparsepipe's staging folder; remove it and rerun")
    if world.main:
        # Only training resumes, from an unfinished attempt with the same inputs; anything else left
        # in the staging folder is ours and half-made.
        resume = stage.collective and not force and marker.is_file() and marker.read_text() == fp
        if not resume:
            shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True, exist_ok=True)
        for stale in staging.rglob(".*.tmp"):  # left by a process killed mid-write
            stale.unlink()
        atomic.write_text(marker, fp)
    if stage.collective:
        distributed.barrier()
    run.forget_frozen()  # each stage builds the frozen models it reads once, from the files as they are now
    run.stage_dir = staging
    t0 = time.perf_counter()
    try:
        outputs = stage.run(run) if work is None else work(run)
    except BaseException:
        if world.main and not stage.collective:  # only training resumes; a half-made export is not kept
            shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        run.stage_dir = None
    if stage.collective:
        distributed.barrier()
    if world.main:
        move_into_place(staging, run.dir / stage.folder)
        write_manifest(run, stage, fp, [f"{stage.folder}/{rel}" for rel in outputs], upstream,
                       time.perf_counter() - t0)
    run.forget_frozen()
    return True


def run_pipeline(run: Run, stages: tuple[str, ...] = tuple(BY_NAME), force: bool = False) -> Report | None:
    """Run `stages` in order (skipping up-to-date ones) and return the report.

    Under torchrun, ranks other than 0 help with the collective stages only and return None.
    """
    if not distributed.current().main:
        for name in stages:
            if BY_NAME[name].collective:
                run_stage(run, name, force=force)
        return None
    for i, name in enumerate(stages, 1):
        t0 = time.perf_counter()
        ran = run_stage(run, name, force=force)
        status = f"done in {time.perf_counter() - t0:.1f} s" if ran else "up to date, skipped"
        run.log(f"[{i}/{len(stages)}] {name}: {status}")
    return load_report(run.dir / "report" / "report.json")
