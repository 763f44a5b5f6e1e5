"""`vlmsweep demo`: the demo study end to end on this machine — time, plan, run, ingest, report.

Runs `studies/demo.toml` on local worker processes under `--out` (default ./vlmsweep-demo), so a
re-run finds every step done and finishes in seconds. Before training it times a short slice of
each kind of step on these workers (`sweep.estimate`) and says how long the whole run will take
here; the progress line's ETA starts from that. The catalog is re-ingested as steps finish, so
`vlmsweep app DIR` in another terminal shows what is done. Ends with where the figures are, the
findings and the command that opens the app. `--seed-offset K` runs the same study with every
training seed moved by K (`sweep.spec.shift_seeds`) under its own root: an independent replication
of the findings, as another machine's float order would give.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

from models import stepfiles as sf
from sweep.errors import UserError
from sweep.launch.devices import local_workers
from sweep.plan import plan_study, write_study_manifest
from sweep.plancli import plan_table
from sweep.spec import load_study, shift_seeds

DEMO_STUDY = Path(__file__).resolve().parents[1] / "studies" / "demo.toml"
CALIBRATION = "calibration"  # under --out: the timed slice's own results root
INGEST_EVERY_S = 30.0  # how often the catalog is refreshed while steps finish (~1 s of CPU each)


def _minutes(seconds: float) -> str:
    return f"about {max(1, round(seconds / 60))} min" if seconds >= 90 else f"about {seconds:.0f} s"


def calibrate(plan, todo, pool, workers: int) -> dict[str, float]:
    """Expected seconds of every step in `todo`, from a timed slice run on `pool` (printed)."""
    from sweep.estimate import calibration_slice, expected_seconds, measured_rates, project
    from sweep.launch import get_backend

    began = time.monotonic()
    chain = calibration_slice(list(plan.steps))
    print(f"demo: timing {len(chain)} short steps (a few optimizer steps of each kind) on {workers} "
          "worker(s) to estimate the run ...", flush=True)
    # First what every evaluation shares, once per machine (the world's blind-answer floors: ~40 s
    # of CPU, cached on disk), split over the workers, so that the slice is timed on cores as busy
    # as the run keeps them. Computed beside the slice instead, they made its training steps look
    # 1.3-1.9x slower than they ran and its evals (which waited for them) 3-10x.
    _prepare_evals(todo, pool)
    timing = dataclasses.replace(plan, root=plan.root / CALIBRATION, steps=tuple(chain))
    get_backend("local").run(timing, chain, workers=workers, progress=False, pool=pool)
    expected = expected_seconds(todo, measured_rates(timing.root, chain))
    if len(expected) < len(todo):
        print("demo: some kinds of step could not be timed; the ETA starts once they finish", flush=True)
        return expected
    total = project(todo, expected, workers)
    print(f"demo: {_minutes(total)} on this machine for {len(todo)} steps on {workers} worker(s) "
          f"(timed in {time.monotonic() - began:.0f} s)", flush=True)
    return expected


@dataclasses.dataclass(frozen=True)
class _PrepareEval:
    """One share of an eval source's shared work, run on a pool worker (picklable)."""

    source: Any
    part: str

    def __call__(self) -> None:
        import models.data

        models.data.prepare_eval_source(self.source, (self.part,))


def _prepare_evals(todo, pool) -> None:
    """Every eval source's shared work, its shares run on the pool's workers, as many at once as it
    has. A share that failed there is redone here, so its error (bad input: exit 2) is the demo's."""
    import models.data

    sources = list(dict.fromkeys(src for s in todo if s.kind == "eval" for src in s.config.data))
    queue = [_PrepareEval(src, part) for src in sources for part in models.data.eval_source_parts(src)]
    running: list[Any] = []
    failed = False
    while queue or running:
        while queue and len(running) < pool.size:
            running.append(pool.submit(queue.pop(0)))
        pool.wait(0.2)
        failed = failed or any(job.outcome not in (None, "returned") for job in running)
        running = [job for job in running if not job.done()]
    if failed:
        for source in sources:
            models.data.prepare_eval_source(source)


class LiveIngest:
    """Re-ingest the catalog in a background thread whenever more steps have finished."""

    def __init__(self, root: Path, every_s: float = INGEST_EVERY_S) -> None:
        self.root, self.every_s, self.stop = root, every_s, threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _finished(self) -> int:
        return sum(1 for _ in (self.root / sf.STEPS_DIR).glob(f"*/*/{sf.RESULT}"))

    def _loop(self) -> None:
        from analysis.store import ingest

        seen = -1
        while not self.stop.wait(self.every_s):
            done = self._finished()
            if done != seen:
                try:
                    ingest(self.root)
                    seen = done
                except Exception:  # noqa: BLE001 - a failed refresh only delays the app's view
                    pass

    def __enter__(self) -> "LiveIngest":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def run_demo(args) -> int:
    from analysis.report import write_report
    from analysis.store import ingest
    from sweep.analysiscli import _as_user_errors, _progress
    from sweep.launch import select_steps

    study_path = Path(args.study) if getattr(args, "study", None) else DEMO_STUDY
    if not study_path.exists():
        raise UserError(f"{study_path}: the demo study is missing (vlmsweep runs from its source checkout)")
    started = time.monotonic()
    base = load_study(study_path)
    study = shift_seeds(base, getattr(args, "seed_offset", 0) or 0)
    suffix = study.name.removeprefix(base.name)  # "-seed-offset-K" for a replication, else ""
    out = Path(getattr(args, "out", None) or f"vlmsweep-demo{suffix}").resolve()
    reports = out / f"report{suffix}"  # a run and its replication can share one root
    plan = plan_study(study, root=out)
    print(plan_table(plan), flush=True)
    write_study_manifest(plan)
    todo = select_steps(plan, retry_failed=True, max_failures=study.backend.max_failures)
    workers = local_workers(args.workers, study.backend)
    if todo:
        with _as_user_errors():
            ingest(out)  # an empty catalog now, so the app opens at once and fills as steps finish
        print(f"\ndemo: results appear as steps finish; watch them now with  vlmsweep app {out}", flush=True)
        _train(plan, todo, workers, study_path, out)
    else:
        print("\ndemo: every step is already done (cached)")
    with _as_user_errors():
        print(ingest(out, progress=_progress))
        report = write_report(out, reports, study=study.name)
    print(report)
    findings = reports / "findings.md"
    if findings.exists():
        print("\n" + findings.read_text())
    print(f"demo: finished in {time.monotonic() - started:.0f} s; figures in {reports}")
    print(f"open the results browser with:  vlmsweep app {out}")
    return 0


def _train(plan, todo, workers: int, study_path: Path, out: Path) -> None:
    from sweep.launch import get_backend
    from sweep.launch.pool import WorkerPool

    pool = WorkerPool(out, workers)  # one pool: its workers import torch once for both runs
    try:
        expected = calibrate(plan, todo, pool, workers)
        print(f"demo: running {len(todo)} step(s) on {workers} local worker(s)", flush=True)
        with LiveIngest(out):
            result = get_backend("local").run(plan, todo, workers=workers, progress=True, expected=expected,
                                              pool=pool)
    finally:
        pool.close()
    if result.failed or result.blocked:
        raise UserError(f"demo: {result.failed} step(s) failed and {result.blocked} were blocked; "
                        f"`vlmsweep status {study_path} --root {out}` shows why")
