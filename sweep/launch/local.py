"""The local backend: submitit's LocalExecutor, up to N worker processes, DAG order respected.

A step starts once all its parents have result.json; a step under a failed one is skipped as
blocked. `run` stays in the foreground, polling the jobs and drawing the progress line, and
records each job (its id is the worker's pid) in the launch journal so `status` can see it.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any, Sequence

import submitit

import sweep
from models.run import step_done
from models.steps import Step, step_dir
from sweep.launch import JobFactory, LaunchResult
from sweep.launch.journal import JobRecord, append_jobs
from sweep.launch.progress import ProgressLine
from sweep.launch.worker import StepJob
from sweep.status import StepStatus

POLL_S = 0.2
WEEK_MIN = 7 * 24 * 60  # LocalExecutor kills a job after timeout_min (default 2): make it moot


def source_setup() -> list[str]:
    """A shell line putting this checkout first on PYTHONPATH, so jobs import the same code."""
    src = Path(sweep.__file__).resolve().parent.parent
    return [f"export PYTHONPATH={shlex.quote(str(src))}${{PYTHONPATH:+:$PYTHONPATH}}"]


def _done(root: Path, step: Step) -> bool:
    return step_done(step, root)


class LocalBackend:
    name = "local"

    def run(self, plan: Any, steps: Sequence[Step], *, workers: int = 2, progress: bool = True,
            job_factory: JobFactory | None = None,
            statuses: dict[str, StepStatus] | None = None) -> LaunchResult:
        factory = job_factory or StepJob
        executor = submitit.LocalExecutor(folder=Path(plan.root) / "logs" / "%j")
        executor.update_parameters(timeout_min=WEEK_MIN, setup=source_setup())
        line = ProgressLine(root=plan.root, total=len(steps), workers=workers) if progress else None
        run = _LocalRun(plan, list(steps), executor, factory, max(1, workers), line)
        try:
            run.loop()
        except BaseException:
            run.cancel()
            raise
        return run.result()


class _LocalRun:
    def __init__(self, plan: Any, steps: list[Step], executor: submitit.LocalExecutor,
                 factory: JobFactory, workers: int, line: ProgressLine | None):
        self.plan, self.root, self.waiting = plan, Path(plan.root), steps
        self.ours = {s.step_id for s in steps}
        self.executor, self.factory, self.workers, self.line = executor, factory, workers, line
        self.running: dict[str, tuple[Step, Any, float]] = {}
        self.done: set[str] = set()
        self.bad: set[str] = set()  # failed or blocked in this run
        self.failed = self.blocked = 0
        self.times: list[float] = []
        self.job_ids: list[str] = []

    def loop(self) -> None:
        while self.waiting or self.running:
            self._start_ready()
            self._collect()
            if self.line:
                self.line.show(len(self.done), self.failed, [s for s, _, _ in self.running.values()],
                               self.times)
            time.sleep(POLL_S)
        if self.line:
            self.line.show(len(self.done), self.failed, [], self.times, final=True)

    def _parents_state(self, step: Step) -> str:
        """ready | wait | blocked, from this run's outcomes and (for other parents) the files."""
        for _, pid in step.parents:
            if pid in self.bad:
                return "blocked"
            if pid in self.ours and pid not in self.done:
                return "wait"
            if pid not in self.ours and not _done(self.root, self.plan.by_id[pid]):
                return "wait"  # in flight elsewhere (another run or study); it finishes there
        return "ready"

    def _start_ready(self) -> None:
        for step in list(self.waiting):
            state = self._parents_state(step)
            if state == "blocked":
                self.waiting.remove(step)
                self.bad.add(step.step_id)
                self.blocked += 1
            elif state == "ready" and len(self.running) < self.workers:
                self.waiting.remove(step)
                job = self.executor.submit(self.factory(step, self.root))
                self.running[step.step_id] = (step, job, time.monotonic())
                self.job_ids.append(job.job_id)
                append_jobs(self.root, [JobRecord(
                    step_id=step.step_id, kind=step.kind, job_id=job.job_id, backend="local",
                    study=self.plan.study.name, log=str(job.paths.stderr), submitted_at=time.time())])

    def _collect(self) -> None:
        for sid, (step, job, began) in list(self.running.items()):
            if not job.done():
                continue
            del self.running[sid]
            if _done(self.root, step):
                self.done.add(sid)
                self.times.append(time.monotonic() - began)
            else:
                self.failed += 1
                self.bad.add(sid)

    def cancel(self) -> None:
        for _, job, _ in self.running.values():
            job.cancel(check=False)

    def result(self) -> LaunchResult:
        return LaunchResult(submitted=len(self.job_ids), completed=len(self.done),
                            failed=self.failed, blocked=self.blocked, job_ids=tuple(self.job_ids))
