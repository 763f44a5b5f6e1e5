"""`vlmsweep ingest`, `report` and `fit-scaling`: the study side of the wiring into `analysis`.

The study's manifest (which steps belong to it) is written here, since only `sweep` knows how a
study expands; `analysis` then reads step files and manifests under the root. Bad input found by
analysis (`AnalysisInputError`) becomes a `UserError`: one message, exit 2.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

from sweep.errors import UserError
from sweep.plan import plan_study, write_study_manifest
from sweep.spec import load_study


@contextmanager
def _as_user_errors():
    from analysis.errors import AnalysisInputError

    try:
        yield
    except AnalysisInputError as exc:
        raise UserError(str(exc)) from None


def _progress(done: int, total: int) -> None:
    if sys.stderr.isatty() or done == total:
        end = "\n" if done == total else "\r"
        print(f"ingest: {done}/{total} steps", end=end, file=sys.stderr, flush=True)


def _root_of(args) -> tuple[object, Path]:
    study = load_study(args.study)
    plan = plan_study(study, root=args.root)
    write_study_manifest(plan)
    return study, plan.root


def run_ingest(args) -> int:
    from analysis.store import ingest

    _, root = _root_of(args)
    with _as_user_errors():
        summary = ingest(root, progress=_progress, skip_unreadable=args.skip_unreadable)
    print(summary)
    return 0


def run_report(args) -> int:
    from analysis.report import write_report
    from analysis.store import ingest

    study, root = _root_of(args)
    with _as_user_errors():
        # incremental: cheap when nothing changed
        print(ingest(root, progress=_progress, skip_unreadable=args.skip_unreadable))
        tasks = [t.strip() for t in args.average_tasks.split(",")] if args.average_tasks else None
        summary = write_report(root, args.out, study=study.name, average_tasks=tasks,
                               bootstrap=args.bootstrap, seed=args.seed)
    print(summary)
    return 0


def run_fit_scaling(args) -> int:
    from analysis.cli import run_fit_scaling as fit

    with _as_user_errors():
        return int(fit(args) or 0)
