"""Persistent local worker processes: each imports torch once and runs many steps, one at a time.

`WorkerPool.submit(job)` hands a picklable step job (a `StepJob`) to an idle worker, started with
the `spawn` method (never a fork of a process with torch threads) and told the worker count in
`VLMSWEEP_WORKERS`. A step's stdout/stderr go to `<root>/logs/<job_id>/`; a worker that dies
(segfault, SIGKILL, OOM) fails its step with a recorded reason and is replaced on the next submit.
A worker told to stop (SIGTERM) ends its step with a checkpoint and leaves: it says so in its
report, takes no further step, and a step it was handed but never started comes back "declined".
"""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing
import os
import pickle
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Iterator

from models import stepfiles as sf
from models.spawn import bare_main
from sweep.launch.journal import append_failure
from sweep.launch.memory import oom_kills

STOP_GRACE_S = 60.0  # how long a stopping step may take to save its checkpoint before SIGKILL


@dataclass(frozen=True, slots=True)
class JobPaths:
    stdout: Path
    stderr: Path


def job_paths(root: str | Path, job_id: str) -> JobPaths:
    """Where a pool job's logs go: the same shape as submitit's `<root>/logs/<id>/<id>_0_log.*`."""
    folder = sf.job_log_dir(root, job_id)
    return JobPaths(stdout=folder / f"{job_id}_0_log.out", stderr=folder / f"{job_id}_0_log.err")


class JobLock:
    """`<root>/logs/<job_id>/running.lock`, flock-held while a local or inline job is in flight.

    It says "in flight" to `vlmsweep status` in any process; the kernel drops it when this
    process dies, so a killed run never shows a step running forever, and a job whose lock is free
    with neither a result nor a failure died with its runner (status: interrupted).
    """

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(folder / sf.RUNNING_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def release(self, *, stopped: bool = False) -> None:
        """Drop the lock; `stopped`: the run was stopped mid-step (Ctrl-C), `run` resumes it."""
        if stopped:
            with contextlib.suppress(OSError):
                (self.folder / sf.STOPPED_MARK).touch()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class PoolJob:
    """One step handed to one worker; `done()` once the worker reported or died."""

    def __init__(self, job_id: str, paths: JobPaths, job: Any):
        self.job_id, self.paths, self.job = job_id, paths, job
        # "returned" | "raised" | "died" | "interrupted" (checkpointed and stopped) | "declined"
        # (never started: its worker was leaving); the last two are no failure of the step
        self.outcome: str | None = None
        self.began = time.time()
        self.oom_kills = oom_kills()  # the cgroup's OOM-kill count when it started
        self._lock = JobLock(self.paths.stderr.parent)

    def done(self) -> bool:
        return self.outcome is not None

    def finish(self, outcome: str) -> None:
        self.outcome = outcome
        # A stopped or declined job is no traceless death (sweep.launch.kills counts those).
        self._lock.release(stopped=outcome in ("interrupted", "declined"))


class _Worker:
    def __init__(self, ctx: Any, workers: int, slot: int, devices: str | None):
        self.conn, child = ctx.Pipe()
        # Not a daemon: a step on several ranks starts their processes from the worker.
        self.process = ctx.Process(target=worker_main, args=(child, workers, devices),
                                   name="vlmsweep-worker")
        with bare_main():
            self.process.start()
        child.close()
        self.job: PoolJob | None = None
        self.leaving = False  # it said it ends after its step (SIGTERM): hand it nothing more
        self.seq = 0
        self.slot = slot  # which of the pool's device sets it holds


class WorkerPool:
    """Up to `workers` persistent processes; the caller never submits more jobs than that.

    `devices[i]`, when given, is the CUDA_VISIBLE_DEVICES of the worker in slot i (a worker that
    died is replaced in its slot), so concurrent steps train on distinct GPUs.
    """

    def __init__(self, root: str | Path, workers: int, *, start_method: str = "spawn",
                 devices: list[str] | None = None):
        self.root, self.size = Path(root), max(1, workers)
        self.ctx = multiprocessing.get_context(start_method)
        self.workers: list[_Worker] = []
        self.devices = devices

    def submit(self, job: Any) -> PoolJob:
        worker = self._idle_worker()
        worker.seq += 1
        job_id = f"{worker.process.pid}.{worker.seq}"
        pool_job = PoolJob(job_id, job_paths(self.root, job_id), job)
        worker.job = pool_job
        try:
            payload = pickle.dumps(job)
        except Exception as error:  # noqa: BLE001 - any pickling error fails just this step
            self._fail(worker, f"the step job could not be pickled: {type(error).__name__}: {error}")
            return pool_job
        worker.conn.send((job_id, str(pool_job.paths.stdout), str(pool_job.paths.stderr), payload))
        return pool_job

    def _idle_worker(self) -> _Worker:
        for worker in self.workers:
            if worker.job is None and not worker.leaving and worker.process.is_alive():
                return worker
        for gone in [w for w in self.workers if w.job is None]:  # exited or leaving
            gone.process.join(timeout=5)
            gone.conn.close()
        self.workers = [w for w in self.workers if w.job is not None]
        if len(self.workers) >= self.size:
            raise RuntimeError(f"all {self.size} workers are busy; wait for one to finish first")
        slot = min(set(range(self.size)) - {w.slot for w in self.workers})
        worker = _Worker(self.ctx, self.size, slot, self.devices[slot] if self.devices else None)
        self.workers.append(worker)
        return worker

    def wait(self, timeout: float) -> None:
        """Handle what workers report (or their deaths) for up to `timeout` seconds."""
        busy = [w for w in self.workers if w.job is not None]
        if not busy:
            time.sleep(timeout)
            return
        by_handle = {**{w.conn: w for w in busy}, **{w.process.sentinel: w for w in busy}}
        for handle in wait(list(by_handle), timeout):
            worker = by_handle[handle]
            if worker.job is None:
                continue  # both its pipe and its sentinel were ready; handled already
            self._receive(worker)

    def _receive(self, worker: _Worker) -> None:
        try:
            job_id, outcome, leaving = worker.conn.recv()
        except (EOFError, OSError):  # it died: no report will come
            worker.process.join(timeout=5)
            if worker.process.exitcode == 0 and worker.job is not None:
                # A worker returns only between steps (a step's every exception is caught), so
                # it left on SIGTERM before it read this step: the step never started.
                worker.job.finish("declined")
                worker.job = None
                return
            self._fail(worker, *_death_reason(worker.process.exitcode, worker.job))
            return
        assert worker.job is not None and job_id == worker.job.job_id, (job_id, worker.job)
        worker.leaving = worker.leaving or leaving
        worker.job.finish(outcome)
        worker.job = None

    def _fail(self, worker: _Worker, reason: str, cause: str = "crash") -> None:
        job = worker.job
        assert job is not None
        step = getattr(job.job, "step", None)  # a StepJob; see sweep.launch.backend.JobFactory
        if step is not None:
            record_death(self.root, step, job.job_id, job.began, reason, cause)
        with contextlib.suppress(OSError), job.paths.stderr.open("a") as log:
            log.write(f"\nvlmsweep: {reason}\n")
        job.finish("died")
        worker.job = None  # a live worker (the pickling failure) stays for the next step

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Ask running steps to checkpoint (SIGTERM), wait for them, then end every worker."""
        for worker in self.workers:
            if worker.process.is_alive():
                if worker.job is not None:
                    os.kill(worker.process.pid, signal.SIGTERM)
                else:
                    with contextlib.suppress(OSError):
                        worker.conn.send(None)
        deadline = time.monotonic() + grace_s
        while any(w.job is not None for w in self.workers) and time.monotonic() < deadline:
            self.wait(min(0.5, max(deadline - time.monotonic(), 0.01)))
        self.close()

    def close(self) -> None:
        """End every worker now (SIGKILL after a short wait); a job still running is interrupted."""
        for worker in self.workers:
            with contextlib.suppress(OSError):
                worker.conn.send(None)
        for worker in self.workers:
            worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)
            if worker.job is not None:
                worker.job.finish("interrupted")
                worker.job = None
            worker.conn.close()
        self.workers = []


def _death_reason(exitcode: int | None, job: PoolJob | None = None) -> tuple[str, str]:
    """(error, failure reason) of a worker's death: `oom` for a SIGKILL while this cgroup's
    OOM-kill count went up (memory evidence), else `crash`."""
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        if name == "SIGKILL" and job is not None and job.oom_kills is not None \
                and (oom_kills() or 0) > job.oom_kills:
            return "worker process died: killed by SIGKILL; the kernel's OOM killer killed in this " \
                   "cgroup meanwhile (out of host memory)", "oom"
        hint = " (the OOM killer or kill -9)" if name == "SIGKILL" else ""
        return f"worker process died: killed by {name}{hint}", "crash"
    return f"worker process died (exit code {exitcode})", "crash"


def record_death(root: Path, step: Any, job_id: str, began: float, reason: str,
                 cause: str = "crash") -> None:
    """failure.json (unless the step wrote one in this attempt) and the journal's failure entry.

    A disk that takes neither (full) gets one line on stderr; the run goes on.
    """
    paths = sf.paths_of(root, step)
    try:
        fresh = paths.failure.stat().st_mtime >= began
    except FileNotFoundError:
        fresh = False
    try:
        if not fresh:
            sf.write_failure(paths.dir, sf.Failure(step_id=step.step_id, kind=step.kind, reason=cause,
                                                   error=reason, job_id=job_id, finished_at=sf.now_iso()))
        append_failure(root, step.step_id, job_id, reason)
    except OSError as exc:
        print(f"vlmsweep: could not record that {step.kind} {step.step_id} failed ({reason}): "
              f"{exc.filename or root}: {exc.strerror or exc}", file=sys.stderr, flush=True)


# ---- inside a worker process -------------------------------------------------------------------

def die_with_parent() -> None:
    """SIGTERM this worker when the supervisor dies (even by SIGKILL): no orphan keeps training."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)


@contextlib.contextmanager
def _redirected(stdout: str, stderr: str) -> Iterator[None]:
    """Point fds 1 and 2 (Python's and C's output, subprocesses') at the step's log files."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(stdout, "a") as out, open(stderr, "a") as err:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def worker_main(conn: Connection, workers: int, devices: str | None = None) -> None:
    """Run jobs from `conn` until told to stop (None) or the supervisor's pipe closes."""
    # Ctrl-C reaches the whole process group: the supervisor alone decides, then sends SIGTERM,
    # which a running step turns into a checkpoint (models.run.run_step installs that handler).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["VLMSWEEP_WORKERS"] = str(workers)  # before torch is imported: it sizes threads
    if devices is not None:  # before CUDA is initialised: this worker's GPUs, and only those
        os.environ["CUDA_VISIBLE_DEVICES"] = devices
    die_with_parent()
    stopping, idle = False, True

    def on_term(signum: int, frame: Any) -> None:  # a step's own handler replaces this one
        nonlocal stopping
        stopping = True
        if idle:  # waiting for a step: leave now (a step sent meanwhile comes back "declined")
            raise SystemExit(0)
    signal.signal(signal.SIGTERM, on_term)
    with contextlib.suppress(Exception):  # import torch and Lightning now, not in the first step's time
        import models.stages.runners  # noqa: F401
    while not stopping:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        job_id, stdout, stderr, payload = message
        idle = False
        with _redirected(stdout, stderr):
            outcome = _run_one(payload)
        # A stop asked of this worker alone (SIGTERM to its pid) checkpoints its step: it leaves.
        stopping = stopping or outcome == "interrupted"
        try:
            conn.send((job_id, outcome, stopping))
        except OSError:  # the supervisor is gone (killed): nobody to report to
            return
        idle = True


def _run_one(payload: bytes) -> str:
    term = signal.getsignal(signal.SIGTERM)
    job = None
    try:
        job = pickle.loads(payload)
        job()
        return "returned"
    except BaseException as error:  # noqa: BLE001 - a step's failure must not end the worker
        if isinstance(error, Exception) and getattr(job, "is_preempted", None) \
                and _safe(job.is_preempted, error):
            return "interrupted"
        if not hasattr(job, "failure_reason"):  # a StepJob has said it: one line or its traceback
            traceback.print_exc()
        return "raised"
    finally:
        signal.signal(signal.SIGTERM, term)


def _safe(predicate: Any, error: BaseException) -> bool:
    try:
        return bool(predicate(error))
    except Exception:  # noqa: BLE001
        return False
