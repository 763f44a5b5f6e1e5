"""The local backend: N persistent worker processes on this machine, DAG order respected.

The workers (`sweep.launch.pool`) each import torch once and run many steps, one at a time, on GPUs
of their own when the machine has any (`sweep.launch.devices`); an LM step runs on `gpus_per_step`
local ranks (`sweep.launch.ranks`). A step starts once all its parents are done, a step under a
failed one is skipped as blocked, and `run` stays in the foreground, drawing the progress line and
recording each job in the launch journal so `status` can see it. Ctrl-C or SIGTERM asks the running
steps to checkpoint, ends the workers and raises KeyboardInterrupt. A SIGTERM to one worker alone
stops only its step (checkpointed): the step goes back in the queue, at most MAX_REQUEUES times.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from models.distributed import MULTI_RANK_KINDS
from models.stepfiles import step_done
from models.steps import Step
from sweep.estimate import critical_paths
from sweep.launch.backend import JobFactory, LaunchResult
from sweep.launch.devices import visible_gpus, worker_devices
from sweep.launch.journal import JobRecord, append_jobs
from sweep.launch.pool import WorkerPool
from sweep.launch.progress import ProgressLine, failure_line
from sweep.launch.ranks import LocalRanks
from sweep.launch.worker import StepJob
from sweep.plan import step_cost
from sweep.status import StepStatus

POLL_S = 0.2
# How often one run hands a step stopped by a SIGTERM to its worker alone (not to the run) to a
# fresh worker; past that the step is left interrupted (no failure) for the next `run` to resume.
MAX_REQUEUES = 3


class LocalBackend:
    name = "local"

    def run(self, plan: Any, steps: Sequence[Step], *, workers: int = 2, progress: bool = True,
            job_factory: JobFactory | None = None, statuses: dict[str, StepStatus] | None = None,
            expected: Mapping[str, float] | None = None, pool: WorkerPool | None = None) -> LaunchResult:
        """`expected`: seconds each step should take here (`sweep.estimate`), for the ETA from the
        start and the start order; `pool`: workers already running (the caller closes them)."""
        workers = max(1, workers)
        per_step = plan.study.backend.gpus_per_step
        executor = pool or WorkerPool(plan.root, workers, devices=worker_devices(visible_gpus(), per_step, workers))
        line = ProgressLine(root=plan.root, total=len(steps), workers=workers,
                            expected=dict(expected or {})) if progress else None
        run = _LocalRun(plan, list(steps), executor, with_local_ranks(job_factory or StepJob, per_step),
                        workers, line, expected)
        with _sigterm_interrupts():
            try:
                run.loop()
            except BaseException:
                executor.stop()
                raise
            finally:
                if pool is None:
                    executor.close()
        return run.result()


def with_local_ranks(factory: JobFactory, ranks: int) -> JobFactory:
    """`factory`'s jobs, each LM step's run by `ranks` local processes (gpus_per_step > 1)."""
    if ranks <= 1:
        return factory
    return lambda step, root: (LocalRanks(factory(step, root), ranks) if step.kind in MULTI_RANK_KINDS
                               else factory(step, root))


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM of `vlmsweep run` stops it as Ctrl-C does (checkpoints, no orphan workers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def start_order(steps: Sequence[Step], expected: Mapping[str, float] | None = None) -> dict[str, float]:
    """Each step's priority: its longest chain of descendants (itself included), in expected seconds
    where known, else in planned FLOPs (evals count nothing). Starting the ready step with the longest
    chain first keeps workers from idling while one long chain finishes at the end."""
    def cost(step: Step) -> float:
        if expected and step.step_id in expected:
            return expected[step.step_id]
        return float(step_cost(step).flops or 0) / 1e10  # ~ seconds at 10 GFLOP/s: only the order matters
    return critical_paths(list(steps), cost)


def _say(line: ProgressLine | None, text: str) -> None:
    if line is not None:
        line.note(text)
    else:
        print(text, file=sys.stderr, flush=True)


class _LocalRun:
    def __init__(self, plan: Any, steps: list[Step], executor: WorkerPool,
                 factory: JobFactory, workers: int, line: ProgressLine | None,
                 expected: Mapping[str, float] | None = None):
        self.plan, self.root, self.waiting = plan, Path(plan.root), steps
        self.priority = start_order(steps, expected)
        self.ours = {s.step_id for s in steps}
        self.executor, self.factory, self.workers, self.line = executor, factory, workers, line
        self.running: dict[str, tuple[Step, Any, float]] = {}
        self.done: set[str] = set()
        self.bad: set[str] = set()  # failed or blocked in this run
        self.failed = self.blocked = 0
        self.finished: list[tuple[Step, float]] = []  # (step, seconds) done in this run
        self.job_ids: list[str] = []
        self.requeued: dict[str, int] = {}  # step id -> times a stopped worker's step was requeued

    def loop(self) -> None:
        while self.waiting or self.running:
            self._collect()  # first: a step that just ended frees its worker for its children
            self._start_ready()
            if self.line:
                self.line.show(self.failed, [s for s, _, _ in self.running.values()], self.finished,
                               self.waiting)
            self.executor.wait(POLL_S)
        if self.line:
            self.line.show(self.failed, [], self.finished, [], final=True)

    def _parents_state(self, step: Step) -> str:
        """ready | wait | blocked, from this run's outcomes and (for other parents) the files."""
        for _, pid in step.parents:
            if pid in self.bad:
                return "blocked"
            if pid in self.ours and pid not in self.done:
                return "wait"
            if pid not in self.ours and not step_done(self.plan.by_id[pid], self.root):
                return "wait"  # in flight elsewhere (another run or study); it finishes there
        return "ready"

    def _start_ready(self) -> None:
        for step in sorted(self.waiting, key=lambda s: -self.priority[s.step_id]):
            state = self._parents_state(step)
            if state == "blocked":
                self.waiting.remove(step)
                self.bad.add(step.step_id)
                self.blocked += 1
            elif state == "ready" and len(self.running) < self.workers:
                self.waiting.remove(step)
                submitted = time.time()  # before: a job may fail inside submit (pickling)
                job = self.executor.submit(self.factory(step, self.root))
                self.running[step.step_id] = (step, job, time.monotonic())
                self.job_ids.append(job.job_id)
                append_jobs(self.root, [JobRecord(
                    step_id=step.step_id, kind=step.kind, job_id=job.job_id, backend="local",
                    study=self.plan.study.name, log=str(job.paths.stderr), submitted_at=submitted)])

    def _collect(self) -> None:
        for sid, (step, job, began) in list(self.running.items()):
            if not job.done():
                continue
            del self.running[sid]
            if step_done(step, self.root):
                self.done.add(sid)
                self.finished.append((step, time.monotonic() - began))
            elif getattr(job, "outcome", None) == "declined":  # its worker left before starting it
                self.waiting.append(step)
            elif getattr(job, "outcome", None) == "interrupted":  # its worker alone was stopped
                self.requeued[sid] = self.requeued.get(sid, 0) + 1
                if self.requeued[sid] <= MAX_REQUEUES:
                    _say(self.line, f"stopped: {step.kind} {sid} (its worker got SIGTERM); "
                         "resuming it from its checkpoint on a fresh worker")
                    self.waiting.append(step)
                else:  # stopped again and again: leave it interrupted for the next `run`
                    self.bad.add(sid)
            else:
                self.failed += 1
                self.bad.add(sid)
                _say(self.line, failure_line(self.root, step, str(job.paths.stderr)))

    def result(self) -> LaunchResult:
        return LaunchResult(submitted=len(self.job_ids), completed=len(self.done),
                            failed=self.failed, blocked=self.blocked, job_ids=tuple(self.job_ids))
