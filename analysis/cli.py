"""Argparse glue for `vlmsweep ingest`, `vlmsweep report` and `vlmsweep fit-scaling`.

`sweep.cli` adds these subparsers with the add_*_arguments functions and calls run_*; `main`
runs them standalone (`python -m analysis.cli ...`). AnalysisInputError means exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from analysis.errors import AnalysisInputError


def _add_once(p: argparse.ArgumentParser, *flags: str, **kwargs) -> None:
    """Add an argument unless the caller's parser already has it (sweep.cli may add STUDY/--root)."""
    dest = kwargs.get("dest") or flags[0].lstrip("-").replace("-", "_")
    if any(a.dest == dest for a in p._actions):
        return
    p.add_argument(*flags, **kwargs)


def add_ingest_arguments(p: argparse.ArgumentParser) -> None:
    _add_once(p, "study", nargs="?", help="study file or name (the catalog covers the whole root)")
    _add_once(p, "--root", type=Path, help="results root (default: the study's output root)")
    _add_once(p, "--quiet", action="store_true", help="no progress bar")


def run_ingest(args: argparse.Namespace, root: str | Path) -> int:
    from analysis.store import ingest

    def progress(done: int, total: int) -> None:
        if not getattr(args, "quiet", False) and (done == total or done % 25 == 0):
            print(f"\ringest: {done}/{total} steps", end="\n" if done == total else "", file=sys.stderr, flush=True)
    try:
        summary = ingest(root, progress=progress)
    except AnalysisInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary)
    return 0


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    _add_once(p, "study", nargs="?", help="study file or name (default: every study under the root)")
    _add_once(p, "--root", type=Path, help="results root")
    _add_once(p, "--out", type=Path, required=True, help="directory for figures, tables and findings.md")
    _add_once(p, "--average-tasks", help="comma-separated tasks of the k-task average (default: all tasks)")
    _add_once(p, "--bootstrap", type=int, default=200, help="bootstrap resamples for intervals")
    _add_once(p, "--seed", type=int, default=0, help="bootstrap seed")


def run_report(args: argparse.Namespace, root: str | Path) -> int:
    from analysis.report import write_report

    tasks = [t.strip() for t in args.average_tasks.split(",")] if getattr(args, "average_tasks", None) else None
    try:
        summary = write_report(root, args.out, study=getattr(args, "study", None), average_tasks=tasks,
                               bootstrap=getattr(args, "bootstrap", 200), seed=getattr(args, "seed", 0))
    except AnalysisInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary)
    return 0


def add_fit_scaling_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path, help="CSV with one row per run")
    p.add_argument("--params-col", required=True, help="column of model parameters N")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--tokens-col", help="column of training tokens D")
    data.add_argument("--flops-col", help="column of training FLOPs C (D = C / 6N)")
    p.add_argument("--loss-col", required=True, help="column of the final loss")
    p.add_argument("--drop-highest-loss", type=int, default=0, metavar="K", help="drop the K highest-loss rows")
    p.add_argument("--bootstrap", type=int, default=0, metavar="B", help="bootstrap resamples for intervals")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--json", action="store_true", help="print the fit as JSON")


def run_fit_scaling(args: argparse.Namespace) -> int:
    from analysis.scaling import fit_scaling_law, load_scaling_csv

    try:
        n, d, loss = load_scaling_csv(args.file, params_col=args.params_col, tokens_col=args.tokens_col,
                                      flops_col=args.flops_col, loss_col=args.loss_col,
                                      drop_highest_loss=args.drop_highest_loss)
        fit = fit_scaling_law(n, d, loss, bootstrap=args.bootstrap, seed=args.seed)
    except AnalysisInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(fit.to_json(), indent=2))
        return 0
    print(f"L(N, D) = E + A/N^alpha + B/D^beta fitted to {fit.n_points} points from {fit.n_starts} starts")
    for name in ("E", "A", "B", "alpha", "beta"):
        lo_hi = fit.intervals.get(name)
        ci = f"   [{lo_hi[0]:.4g}, {lo_hi[1]:.4g}] ({fit.bootstrap} bootstraps)" if lo_hi else ""
        print(f"  {name:5s} = {getattr(fit, name):.4g}{ci}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.cli", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_ingest_arguments(sub.add_parser("ingest", help="build results.duckdb from the step files"))
    add_report_arguments(sub.add_parser("report", help="figures, tables and findings of a study"))
    add_fit_scaling_arguments(sub.add_parser("fit-scaling", help="Chinchilla Approach 3 on a CSV"))
    args = parser.parse_args(argv)
    if args.command == "fit-scaling":
        return run_fit_scaling(args)
    if args.root is None:
        parser.error("--root is required when run standalone")
    return (run_ingest if args.command == "ingest" else run_report)(args, args.root)


if __name__ == "__main__":
    sys.exit(main())
