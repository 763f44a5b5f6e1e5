"""The one place vlmsweep touches submitit's private API, so an upgrade that moves it breaks here
and in the golden sbatch tests (tests/test_launch_golden.py), not somewhere in a job.

- `render_sbatch`: `submitit.slurm.slurm._make_sbatch_string`, the script SlurmExecutor submits
  (golden files and `run --dry-run` print it without submitting).
- `requeue_signal`: `JobEnvironment._usr_sig()`, the signal SLURM sends before the time limit.
- `requeue_handler`: submitit's own handler for it (`checkpoint_and_try_requeue`), which
  `sweep.launch.worker.StepJob` defers until the step has saved its checkpoint.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any, Callable

from submitit.core.job_environment import JobEnvironment
from submitit.slurm.slurm import _make_sbatch_string

SUBMITIT_REQUEUE_HANDLER = "checkpoint_and_try_requeue"


def render_sbatch(params: dict[str, Any], *, folder: str | Path, job_name: str,
                  array_size: int | None = None, command: str = "<COMMAND>") -> str:
    """The sbatch script submitit writes for these SlurmExecutor parameters."""
    kwargs = dict(params)
    if array_size is not None and array_size > 1:
        kwargs["map_count"] = array_size
    return _make_sbatch_string(command=command, folder=folder, job_name=job_name, **kwargs)


def requeue_signal() -> int:
    """The signal submitit asks SLURM to send before a job's time limit (SIGUSR2 here)."""
    return JobEnvironment._usr_sig()


def requeue_handler() -> Callable[[int, Any], None] | None:
    """submitit's checkpoint-and-requeue handler when this process is a submitit job, else None."""
    handler = signal.getsignal(requeue_signal())
    if callable(handler) and getattr(handler, "__name__", "") == SUBMITIT_REQUEUE_HANDLER:
        return handler
    return None


def current_job_id() -> str:
    """The submitit job id of this process ("12_3"), or "inline" outside a submitit job."""
    try:
        return JobEnvironment().job_id
    except (RuntimeError, KeyError):
        return "inline"
