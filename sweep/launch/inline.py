"""The inline backend: every step in this process, one after another, parents first.

For tests and debugging (a breakpoint in a step works). A failed step does not stop the run:
its descendants are skipped as blocked and independent steps still run. A thread redraws the
progress line while a step trains.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Sequence

from models import stepfiles as sf
from models.steps import Step
from sweep.launch.backend import JobFactory, LaunchResult
from sweep.launch.journal import JobRecord, append_jobs
from sweep.launch.pool import JobLock
from sweep.launch.progress import ProgressLine
from sweep.launch.worker import StepJob
from sweep.status import StepStatus


class InlineBackend:
    name = "inline"

    def run(self, plan: Any, steps: Sequence[Step], *, workers: int = 1, progress: bool = True,
            job_factory: JobFactory | None = None,
            statuses: dict[str, StepStatus] | None = None) -> LaunchResult:
        factory = job_factory or StepJob
        line = ProgressLine(root=plan.root, total=len(steps)) if progress else None
        state = {"failed": 0, "current": [], "finished": [], "waiting": list(steps)}
        stop = threading.Event()
        ticker = threading.Thread(target=_tick, args=(line, state, stop), daemon=True)
        if line:
            ticker.start()
        bad: set[str] = set()  # failed or blocked in this run
        blocked = 0
        try:
            for i, step in enumerate(steps):
                state["waiting"] = list(steps[i + 1:])  # replaced, never mutated: the ticker reads it
                if any(pid in bad for _, pid in step.parents):
                    bad.add(step.step_id)
                    blocked += 1
                    continue
                state["current"] = [step]
                began = time.monotonic()
                lock = _record(plan, step, f"inline-{os.getpid()}.{i}")
                stopped = True  # unless the step returns or raises: Ctrl-C stops it mid-step
                try:
                    factory(step, plan.root)()
                    state["finished"] = state["finished"] + [(step, time.monotonic() - began)]
                    stopped = False
                except Exception:
                    state["failed"] += 1
                    bad.add(step.step_id)
                    stopped = False
                finally:
                    lock.release(stopped=stopped)
                state["current"] = []
        finally:
            stop.set()
        if line:
            ticker.join()
            line.show(state["failed"], [], state["finished"], [], final=True)
        return LaunchResult(submitted=len(steps), completed=len(state["finished"]), failed=state["failed"],
                            blocked=blocked)


def _record(plan: Any, step: Step, job_id: str) -> JobLock:
    """Journal the step's attempt and hold its job lock, so that `status` tells a step running
    here from one whose run died (interrupted) in any other process."""
    lock = JobLock(sf.job_log_dir(plan.root, job_id))
    append_jobs(plan.root, [JobRecord(step_id=step.step_id, kind=step.kind, job_id=job_id,
                                      backend="inline", study=plan.study.name, log="",
                                      submitted_at=time.time())])
    return lock


def _tick(line: ProgressLine | None, state: dict, stop: threading.Event) -> None:
    while line is not None and not stop.wait(0.5):
        line.show(state["failed"], list(state["current"]), state["finished"], state["waiting"])
