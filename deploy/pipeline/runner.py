"""Run stages in order over a run folder, skipping the ones that are up to date."""
from __future__ import annotations

import shutil
import time

from compress import atomic, distributed

from ..report import load_report
from ..report_schema import Report
from .cache import fingerprint, up_to_date, write_manifest
from .run import Run
from .stage import BY_NAME


def run_stage(run: Run, name: str, force: bool = False) -> bool:
    """Run one stage unless up to date; returns True when it ran.

    Under torchrun every rank runs a collective stage (train); rank 0 alone writes manifests.
    """
    stage = BY_NAME[name]
    upstream = [BY_NAME[u] for u in stage.upstream]
    world = distributed.current()
    fp = fingerprint(run, stage, upstream)
    if not force and up_to_date(run, stage, fp):
        return False
    folder = run.dir / stage.folder
    marker = folder / ".inputs"
    if world.main:
        # Training must not resume from a checkpoint made with other inputs; the other stages
        # overwrite their files atomically, so what they produced before survives a failed re-run.
        if stage.name == "train" and (force or not marker.exists() or marker.read_text() != fp):
            shutil.rmtree(folder, ignore_errors=True)
        (folder / "stage.json").unlink(missing_ok=True)
        for stale in folder.rglob(".*.tmp"):  # left by a process killed mid-write
            stale.unlink()
        atomic.write_text(marker, fp)
    if stage.collective:
        distributed.barrier()
    run.forget_frozen()  # each stage builds the frozen models it reads once, from the files as they are now
    t0 = time.perf_counter()
    outputs = stage.run(run)
    if stage.collective:
        distributed.barrier()
    if world.main:
        write_manifest(run, stage, fp, outputs, upstream, time.perf_counter() - t0)
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
