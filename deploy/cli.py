"""`sparsepipe` command line. Exit codes: 0 pass, 1 regression (gate failed), 2 bad input."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import math
import os
import sys
from pathlib import Path

# Before torch loads OpenMP: its threads wait by sleeping instead of spinning. On a machine shared with
# other jobs, spinning threads ran an epoch of LeNet-5 in 122 s instead of 12 s (2 cores, another
# job running). The user's setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from compress.errors import UserError  # noqa: E402
from compress.imports import user_code_error  # noqa: E402

from .pipeline.stage import BY_NAME, STAGES  # noqa: E402

EXIT_OK, EXIT_REGRESSION, EXIT_BAD_INPUT = 0, 1, 2


def _finite(text: str) -> float:
    """A float flag's value: NaN and infinities are not thresholds."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


_finite.__name__ = "finite number"  # argparse names the type in its message


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (no usage block before them), exit 2 as for all bad input."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sparsepipe", description="Train sparse models, ship them as CSR/ONNX, and "
                                "prove accuracy and latency in onnxruntime against the dense baseline.",
                                epilog="Exit codes: 0 pass, 1 regression (gate failed), 2 bad input.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run every stage for a config (skips up-to-date stages)",
                       description="Run train → freeze → convert → export → validate. Re-running skips stages "
                                   "whose inputs did not change; an interrupted run resumes.")
    r.add_argument("config", type=Path, help="run config (TOML); see `sparsepipe config-reference`")
    r.add_argument("--out", type=Path, help="run folder (default: runs/NAME)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config field, value in TOML syntax (repeatable), e.g. --set train.epochs=5")
    r.add_argument("--force", action="store_true", help="re-run every stage even if up to date")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")

    for stage, text in ((s.name, s.help) for s in STAGES):
        s = sub.add_parser(stage, help=text, description=f"Run only the {stage} stage: {text}.")
        s.add_argument("run_dir", type=Path, help="run folder made by `sparsepipe run` (holds config.toml)")
        s.add_argument("--force", action="store_true", help="re-run even if up to date")
        s.add_argument("--no-progress", action="store_true", help="no progress bars")

    g = sub.add_parser("gate", help="check a report against thresholds or a reference report",
                       description="Exit 0 when every check passes, 1 on a regression, 2 on bad input. "
                                   "Without --reference: dense-vs-sparse thresholds, those recorded in the "
                                   "report unless a flag overrides one. With --reference: the sparse model must "
                                   "not be worse than the reference report's.")
    g.add_argument("report", type=Path, help="report.json to check")
    g.add_argument("--reference", type=Path, help="earlier report.json (e.g. from the main branch)")
    g.add_argument("--max-accuracy-drop", type=_finite, default=None,
                   help="allowed accuracy drop as a fraction (default: the report's, else 0.02 vs dense; 0.01 vs "
                        "reference)")
    g.add_argument("--min-sparsity", type=_finite, default=None,
                   help="required global sparsity (no reference; default: the report's, else 0)")
    g.add_argument("--max-latency-ratio", type=_finite, default=None,
                   help="allowed sparse/dense p50 latency ratio (no reference; 0 = not checked; default: the report's)")
    g.add_argument("--max-sparsity-drop", type=_finite, default=0.01,
                   help="allowed drop in global sparsity vs the reference")
    g.add_argument("--max-latency-ratio-increase", type=_finite, default=0.0,
                   help="allowed increase of the latency ratio vs the reference (0 = not checked)")
    g.add_argument("--min-accuracy", type=_finite, default=None,
                   help="required sparse accuracy as a fraction (no reference; 0 = not checked; default: the report's)")
    g.add_argument("--min-above-chance", type=_finite, default=None,
                   help="required sparse accuracy above chance, 1/classes (no reference; 0 = not checked; default: "
                        "the report's, else 0.05)")
    g.add_argument("--allow-different", action="store_true",
                   help="compare with a reference of another model, dataset, test set or pruned layers")
    g.add_argument("--junit", type=Path, help="also write the checks as JUnit XML here")

    pr = sub.add_parser("profile", help="latency profile of an ONNX model (optionally against a baseline)",
                        description="Interleaved A/B timing over batch sizes and thread counts: mean, p50, p90, "
                                    "p99, std, throughput, and onnxruntime's per-operator time breakdown.")
    pr.add_argument("model", type=Path, help="a .onnx file, a sparse-compute folder, or a run folder (or its "
                    "onnx/ folder): every variant side by side, dense as the baseline")
    pr.add_argument("--baseline", type=Path, help="model to compare with (e.g. dense.onnx); ratios are vs it")
    pr.add_argument("--batch", default="1,8", help="comma-separated batch sizes (default 1,8)")
    pr.add_argument("--threads", default="1", help="comma-separated intra-op thread counts (default 1)")
    pr.add_argument("--seconds", type=float, default=2.0, help="timed seconds per setting (default 2)")
    pr.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds per setting (default 0.5)")
    pr.add_argument("--json", type=Path, help="write the full profile here")
    pr.add_argument("--png", type=Path, help="write box plots of the latency distributions here")

    sub.add_parser("config-reference", help="print every config field as a Markdown table")
    return p


def print_summary(report, run_dir: Path) -> None:
    from .report import summary_rows

    rows = [("", "dense", "sparse")] + summary_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for i, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    for warning in report.warnings:
        print(f"warning: {warning}")
    gate = report.gate
    print(f"gate: {'PASSED' if gate.passed else 'FAILED'}" + "".join(f"\n  - {m}" for m in gate.failures))
    print(f"report: {run_dir / 'report' / 'report.md'} (also report.json, junit.xml, training.png)")


def cmd_run(args) -> int:
    from compress.distributed import init_from_env

    from .config import load_config
    from .pipeline import open_run, run_pipeline
    from .pipeline.folder import RunLock, check_run_dir
    from .pipeline.run import save_config

    cfg = load_config(args.config, args.overrides)
    world = init_from_env(cfg.train.device)  # under torchrun: join the process group (DDP)
    run_dir = args.out or Path("runs") / cfg.name
    check_run_dir(run_dir, args.force)
    run = open_run(run_dir, cfg, write=False, progress=not args.no_progress)  # checks before anything is written
    with RunLock(run_dir) if world.main else contextlib.nullcontext():
        save_config(run)
        report = run_pipeline(run, force=args.force)
    if report is None:  # a helper rank under torchrun: rank 0 reports
        return EXIT_OK
    print_summary(report, run_dir)
    return EXIT_OK if report.gate.passed else EXIT_REGRESSION


def cmd_stage(args) -> int:
    from compress.distributed import current, init_from_env

    from .pipeline import open_run, run_pipeline, run_stage
    from .pipeline.folder import RunLock, is_run_folder

    if not is_run_folder(args.run_dir):
        raise UserError(f"{args.run_dir}: not a run folder (no config.toml and .lock written by `sparsepipe run`)")
    run = open_run(args.run_dir, progress=not args.no_progress)
    init_from_env(run.cfg.train.device)
    if args.command != "train" and not current().main:
        return EXIT_OK
    with RunLock(args.run_dir) if current().main else contextlib.nullcontext():
        if args.command == "validate":  # the stage that decides the verdict prints it
            report = run_pipeline(run, stages=("validate",), force=args.force)
            print_summary(report, args.run_dir)
            return EXIT_OK if report.gate.passed else EXIT_REGRESSION
        ran = run_stage(run, args.command, force=args.force)
    print(f"{args.command}: {'done' if ran else 'up to date, skipped'}")
    return EXIT_OK


def cmd_gate(args) -> int:
    from compress import atomic

    from .gate import GateConfig, check, compare
    from .report import junit_xml, load_report

    _output_file(args.junit, "--junit")
    report = load_report(args.report)
    if args.reference:
        reference = load_report(args.reference)
        checks = compare(report, reference, max_accuracy_drop=0.01 if args.max_accuracy_drop is None
                         else args.max_accuracy_drop, max_sparsity_drop=args.max_sparsity_drop,
                         max_latency_ratio_increase=args.max_latency_ratio_increase,
                         source=str(args.report), ref_source=str(args.reference),
                         allow_different=args.allow_different)
    else:
        gate, said = gate_thresholds(report, args)
        print(said)
        checks = check(report, gate, source=str(args.report))
    for c in checks:
        print(f"{'pass' if c['passed'] else 'FAIL'}  {c['name']}: {c['message']}")
    if args.junit:
        atomic.write_text(args.junit, junit_xml(checks))
    passed = all(c["passed"] for c in checks)
    print(f"gate: {'PASSED' if passed else 'FAILED'}")
    return EXIT_OK if passed else EXIT_REGRESSION


GATE_FLAGS = ("max_accuracy_drop", "min_sparsity", "max_latency_ratio", "min_accuracy", "min_above_chance")


def gate_thresholds(report, args) -> tuple:
    """The thresholds a standalone gate applies: those recorded in the report (validated as a gate
    section), each replaced by its flag when given; and a line saying where each came from."""
    from compress.schema import parse

    from .gate import GateConfig

    recorded = report.gate.thresholds if report.gate else {}
    known = {k: v for k, v in recorded.items() if k in {f.name for f in dataclasses.fields(GateConfig)}}
    parse(GateConfig, known, f"{args.report}: gate.thresholds")
    flags = {k: getattr(args, k) for k in GATE_FLAGS if getattr(args, k) is not None}
    gate = parse(GateConfig, {**known, **flags}, "gate flags")
    origin = {k: "flag" if k in flags else "report" if k in known else "default" for k in GATE_FLAGS}
    said = "thresholds: " + ", ".join(f"{k} {getattr(gate, k):g} ({origin[k]})" for k in GATE_FLAGS)
    return gate, said


def _int_list(text: str, flag: str, most: int | None = None) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1 or (most is not None and max(values) > most):
        raise UserError(f"{flag}: expected comma-separated positive integers{f' up to {most}' if most else ''}, "
                        f"got {text!r}")
    return values


def _output_file(path: Path | None, flag: str) -> None:
    """An output file the command may write: not a folder, not under a file."""
    if path is None:
        return
    from compress.atomic import file_in_the_way

    if path.is_dir():
        raise UserError(f"{flag} {path}: is a folder; give a file name")
    if path.exists() and not path.is_file():  # a device or a FIFO: never replaced by our file
        raise UserError(f"{flag} {path}: is not a regular file; give a file name")
    blocker = file_in_the_way(path)
    if blocker is not None:
        raise UserError(f"{flag} {path}: {blocker} is a file, not a folder")


MAX_SECONDS = 3600.0  # per setting
MAX_THREADS = 1024


def cmd_profile(args) -> int:
    from compress import atomic

    from .profile import plot, profile_bounded, variants, without_raw_times

    models = {**({"baseline": args.baseline} if args.baseline else {}), **variants(args.model)}
    if not (0 < args.seconds <= MAX_SECONDS) or not (0 <= args.warmup <= MAX_SECONDS):  # also refuses nan
        raise UserError(f"--seconds must be in (0, {MAX_SECONDS}] and --warmup in [0, {MAX_SECONDS}], got "
                        f"{args.seconds:g} and {args.warmup:g}")
    _output_file(args.json, "--json")
    _output_file(args.png, "--png")
    report = profile_bounded(models, _int_list(args.batch, "--batch"), _int_list(args.threads, "--threads", MAX_THREADS),
                             seconds=args.seconds, warmup_seconds=args.warmup)
    for r in report["results"]:
        for name, st in r["models"].items():
            key = f"ratio_vs_{report['baseline']}"
            ratio = f"  x{st[key]:.2f} vs {report['baseline']}" if key in st else ""
            print(f"batch {r['batch']:>4} threads {r['threads']}  {name:8s} p50 {st['p50_ms']:.4f} ms  "
                  f"p90 {st['p90_ms']:.4f}  p99 {st['p99_ms']:.4f}  {st['throughput_per_s']:.0f}/s{ratio}")
    for name, ops in report.get("operators", {}).items():
        print(f"{name}: " + ", ".join(f"{op} {100 * share:.0f}%" for op, share in list(ops.items())[:5]))
    if args.json:
        atomic.write_json(args.json, without_raw_times(report))
    if args.png:
        plot(report, args.png)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command in BY_NAME:
            return cmd_stage(args)
        if args.command == "gate":
            return cmd_gate(args)
        if args.command == "profile":
            return cmd_profile(args)
        if args.command == "config-reference":
            from .config import config_reference

            print(config_reference(), end="")
            return EXIT_OK
    except UserError as e:
        print(f"sparsepipe: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("sparsepipe: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except SystemExit as e:  # exit() inside a user's model, dataset or pruner: not sparsepipe's verdict
        user = user_code_error(e)
        if user is None:
            raise
        print(f"sparsepipe: error: {user} (it called exit({e.code!r}))", file=sys.stderr)
    except Exception as e:
        problem = _bad_input(e)
        if problem is None:
            raise  # a bug of ours: the traceback is what a report needs
        print(f"sparsepipe: error: {problem}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _bad_input(e: Exception) -> str | None:
    """The one line for an error the input caused (a path the filesystem refuses, a full disk, the
    user's own code raising), or None for anything else."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{e.filename or 'disk'}: no space left on device"
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    if isinstance(e, RuntimeError) and str(e).startswith("Symlink loop from"):
        return f"{str(e).removeprefix('Symlink loop from ')}: symbolic link loop"
    user = user_code_error(e)
    return str(user) if user is not None else None


if __name__ == "__main__":
    sys.exit(main())
