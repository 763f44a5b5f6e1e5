"""`vlmsweep ingest`, `report`, `predict` and `fit-scaling`: the study side of the wiring into `analysis`.

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


def _target(args) -> tuple[str | None, Path]:
    """(study name or None, results root) of a study file — planned, its manifest written — or of a
    results folder (what `vlmsweep demo` writes, or a copy of one), taken as it is."""
    if not args.study.is_dir():
        study, root = _root_of(args)
        return study.name, root
    if args.root is not None:
        raise UserError(f"--root names the results of a study file; {args.study} is itself a results folder")
    return getattr(args, "name", None), args.study


def run_ingest(args) -> int:
    from analysis.store import ingest

    _, root = _target(args)
    with _as_user_errors():
        summary = ingest(root, progress=_progress, skip_unreadable=args.skip_unreadable)
    print(summary)
    return 0


def run_report(args) -> int:
    from analysis.report import write_report
    from analysis.store import ingest

    name, root = _target(args)
    with _as_user_errors():
        # incremental: cheap when nothing changed
        print(ingest(root, progress=_progress, skip_unreadable=args.skip_unreadable))
        tasks = [t.strip() for t in args.average_tasks.split(",")] if args.average_tasks else None
        name = name if name is not None else _only_study(root)
        summary = write_report(root, args.out, study=name, average_tasks=tasks,
                               bootstrap=args.bootstrap, seed=args.seed)
    print(summary)
    return 0


def _only_study(root: Path) -> str | None:
    from analysis.queries import study_names
    from analysis.store import connect

    with connect(root) as con:
        names = study_names(con)
    if len(names) > 1:
        raise UserError(f"{root} holds studies {', '.join(names)}: name one with --name")
    return names[0] if names else None


def _target_params(scale: str | None, params: float | None) -> float:
    """--params as given, or the LM parameters of preset --scale (as the planner counts them)."""
    if scale is None:
        return float(params)
    from models.accounting import param_counts
    from models.presets import PRESETS

    if scale not in PRESETS:
        raise UserError(f"--scale {scale!r} is not a preset; known presets: {', '.join(PRESETS)}")
    return float(param_counts(PRESETS[scale].model)["lm_total"])


def run_predict(args) -> int:
    import json

    from analysis.predict_io import report_json, report_text, run_prediction
    from analysis.store import ingest

    if args.bootstrap < 0:
        raise UserError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    params = _target_params(args.scale, args.params)
    name, root = _target(args)  # a results folder: its catalog, and its only study unless --name says
    with _as_user_errors():
        ingest(root, progress=_progress)
        report = run_prediction(root, name if name is not None else _only_study(root), params=params,
                                tokens=args.tokens, bootstrap=args.bootstrap, seed=args.seed)
    if args.json:  # the text output states its warnings first; JSON carries them in a field
        for warning in report.prediction.warnings:
            print(f"vlmsweep predict: warning: {warning}", file=sys.stderr)
    print(json.dumps(report_json(report), indent=1, default=float) if args.json else report_text(report))
    return 0


def run_fit_scaling(args) -> int:
    from analysis.cli import run_fit_scaling as fit

    with _as_user_errors():
        return int(fit(args) or 0)
