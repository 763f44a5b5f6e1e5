"""What runs inside one job: `StepJob(step, root)()` trains one step through `models.run.run_step`.

Submitit pickles a `StepJob` for every step; a job of several tasks runs it in each (one rank
each; rank 0 alone writes and records failures). It re-checks `result.json` first, so a requeued
or duplicated job is harmless. On a timeout or preemption signal it asks the running step to
checkpoint (`models.run.request_checkpoint`), lets the step save and raise `Preempted` at its next
optimizer step, and only then hands over to submitit, which calls `checkpoint()` (resume = run the
same step again) and requeues the job, at most `max_num_timeout` times.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import submitit

from models import stepfiles as sf
from models.distributed import ranks_from_env
from models.steps import Step
from sweep.errors import debug_enabled
from sweep.launch.journal import append_failure
from sweep.launch.submitit_adapter import current_job_id, requeue_handler, requeue_signal


def _cancelled() -> bool:
    """Whether SLURM cancelled this job (scancel): its SIGTERM also makes a step checkpoint, but
    such a job must end, not be requeued; `run --retry-failed` resumes it from the checkpoint."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return False
    try:
        out = subprocess.run(["scontrol", "show", "job", current_job_id()], capture_output=True,
                             text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    # A cancelled job whose processes are still ending shows COMPLETING; a warned one RUNNING.
    return "JobState=CANCELLED" in out or "JobState=COMPLETING" in out


class StepJob(submitit.helpers.Checkpointable):
    """A checkpointable callable running one step; subclasses replace `run` (see sweep.launch.noop)."""

    def __init__(self, step: Step, root: str | Path):
        self.step = step
        self.root = str(root)
        self._signal: int | None = None

    def run(self) -> dict[str, Any]:
        from models.run import run_step  # torch is imported only inside the job

        return run_step(self.step, Path(self.root))

    def request_checkpoint(self) -> None:
        from models.run import request_checkpoint

        request_checkpoint()

    def is_preempted(self, error: BaseException) -> bool:
        from models.run import Preempted

        return isinstance(error, Preempted)

    def __call__(self) -> dict[str, Any]:
        if sf.step_done(self.step, self.root):  # a duplicate or requeued job whose step finished meanwhile
            return sf.read_result(sf.paths_of(self.root, self.step).dir) or {}
        waiting = self.parents_not_done()
        if waiting:
            # A SLURM array waits for its parents' arrays with `afterany`, so that one cancelled
            # task does not cancel its siblings' children; the child of that task ends here.
            print(f"vlmsweep: {self.step.kind} {self.step.step_id} not run: parent {waiting[0]} "
                  "has no result (it failed or was cancelled)", file=sys.stderr, flush=True)
            return {}
        handover = self._intercept_preemption()
        try:
            return self.run()
        except BaseException as error:
            if not ranks_from_env().writes_files:
                # Rank 0 alone records failures and checkpoints and requeues a preempted job;
                # another rank stopped for a checkpoint just ends.
                if isinstance(error, Exception) and self.is_preempted(error):
                    return {}
                raise
            if handover is not None and self.is_preempted(error) and not _cancelled():
                try:  # submitit: checkpoint(), requeue and exit, or give up after max_num_timeout
                    handover(self._signal or requeue_signal(), None)
                except Exception as final:
                    self._record_failure(final)
                    raise
            # Outside submitit a preemption is a stop the caller asked for (the local pool on
            # Ctrl-C): the step saved its checkpoint and the next `run` resumes it; no failure.
            if isinstance(error, Exception) and not (handover is None and self.is_preempted(error)):
                self._record_failure(error)
            raise
        finally:
            if handover is not None:
                signal.signal(requeue_signal(), handover)

    def parents_not_done(self) -> list[str]:
        """"kind id" of each parent without result.json under the root."""
        return [f"{kind} {pid}" for kind, pid in self.step.parents
                if not sf.step_paths(self.root, kind, pid).result.exists()]

    def failure_reason(self, error: BaseException) -> str:
        from models.run import failure_reason

        return failure_reason(error)

    def _record_failure(self, error: BaseException) -> None:
        line = f"{type(error).__name__}: {error}".splitlines()[0]
        try:
            append_failure(self.root, self.step.step_id, current_job_id(), line)
        except OSError as exc:  # a full disk: the step's failure.json may say it already
            print(f"vlmsweep: could not record the failure in the launch journal: {exc}", file=sys.stderr)
        if self.failure_reason(error) in sf.QUIET_REASONS and not debug_enabled():
            # Bad input, a full disk, a divergence: the line says it all; a traceback adds nothing.
            print(f"vlmsweep: {self.step.kind} {self.step.step_id} failed: {line}", file=sys.stderr, flush=True)
        else:
            traceback.print_exc()

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on timeout/preemption: resuming is running the same step again."""
        self.request_checkpoint()
        self._signal = None
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)

    def _intercept_preemption(self):
        """Replace submitit's requeue-at-once handler by one that lets the step checkpoint first.

        Returns submitit's handler (to call once the step has saved), or None outside submitit.
        """
        handler = requeue_handler()
        if handler is None:
            return None

        def on_signal(signum: int, frame: Any) -> None:
            print(f"vlmsweep: signal {signum} at {time.strftime('%H:%M:%S')}: "
                  f"checkpointing {self.step.kind} {self.step.step_id}", flush=True)
            self._signal = signum
            self.request_checkpoint()

        signal.signal(requeue_signal(), on_signal)
        return handler
