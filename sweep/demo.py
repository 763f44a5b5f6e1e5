"""`vlmsweep demo`: the demo study end to end on this machine — plan, run, ingest, report.

Runs `studies/demo.toml` on local worker processes under `--out` (default ./vlmsweep-demo), so a
re-run finds every step done and finishes in seconds. Ends with where the figures are, the
findings table and the command that opens the app.
"""

from __future__ import annotations

import time
from pathlib import Path

from sweep.errors import UserError
from sweep.launch.devices import local_workers
from sweep.plan import plan_study, write_study_manifest
from sweep.plancli import plan_table
from sweep.spec import load_study

DEMO_STUDY = Path(__file__).resolve().parents[1] / "studies" / "demo.toml"


def run_demo(args) -> int:
    from analysis.report import write_report
    from analysis.store import ingest
    from sweep.analysiscli import _as_user_errors, _progress
    from sweep.launch import get_backend, select_steps

    study_path = Path(args.study) if getattr(args, "study", None) else DEMO_STUDY
    if not study_path.exists():
        raise UserError(f"{study_path}: the demo study is missing (vlmsweep runs from its source checkout)")
    started = time.monotonic()
    study = load_study(study_path)
    out = Path(args.out).resolve()
    plan = plan_study(study, root=out)
    print(plan_table(plan), flush=True)
    write_study_manifest(plan)
    todo = select_steps(plan, retry_failed=True, max_failures=study.backend.max_failures)
    workers = local_workers(args.workers, study.backend)
    if todo:
        print(f"\ndemo: running {len(todo)} step(s) on {workers} local worker(s)", flush=True)
        result = get_backend("local").run(plan, todo, workers=workers, progress=True)
        if result.failed or result.blocked:
            raise UserError(f"demo: {result.failed} step(s) failed and {result.blocked} were blocked; "
                            f"`vlmsweep status {study_path} --root {out}` shows why")
    else:
        print("\ndemo: every step is already done (cached)")
    with _as_user_errors():
        print(ingest(out, progress=_progress))
        report = write_report(out, out / "report", study=study.name)
    print(report)
    findings = out / "report" / "findings.md"
    if findings.exists():
        print("\n" + findings.read_text())
    print(f"demo: finished in {time.monotonic() - started:.0f} s; figures in {out / 'report'}")
    print(f"open the results browser with:  vlmsweep app {out}")
    return 0
