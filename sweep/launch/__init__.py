"""Launch backends behind one small interface: inline (this process), local (worker processes), slurm.

`select_steps` decides what a `run` submits (missing steps, failed ones when asked, never a done or
in-flight one, nothing under a step that cannot run); `get_backend(name).run(plan, steps, ...)`
runs or submits them and returns a `LaunchResult`. Each backend lives in its own module.
`run_and_wait` is the same for callers that need the steps finished (adaptive search): it waits
on `vlmsweep status`'s reconciliation for a backend that returns at once (SLURM).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Sequence

from models.stepfiles import CORRUPT, DONE, FAILED, IN_FLIGHT
from models.steps import Step
from sweep.launch.backend import BACKENDS, Backend, JobFactory, LaunchResult, run_levels

if TYPE_CHECKING:  # sweep.status imports this package's journal and queue modules
    from sweep.status import StepStatus

__all__ = ["BACKENDS", "Backend", "JobFactory", "LaunchResult", "get_backend", "run_and_wait", "run_levels",
           "select_steps"]
SETTLE_POLL_S = 5.0  # run_and_wait: seconds between reconciliations (one squeue + one sacct each)


def get_backend(name: str) -> Backend:
    if name == "inline":
        from sweep.launch.inline import InlineBackend
        return InlineBackend()
    if name == "local":
        from sweep.launch.local import LocalBackend
        return LocalBackend()
    if name == "slurm":
        from sweep.launch.slurm import SlurmBackend
        return SlurmBackend()
    raise ValueError(f"unknown backend {name!r}; known backends: {', '.join(BACKENDS)}")


def select_steps(plan: Any, retry_failed: bool, max_failures: int, *,
                 statuses: dict[str, StepStatus] | None = None) -> list[Step]:
    """The steps a `run` should submit, parents first.

    Missing and interrupted steps (an interrupted one resumes from its checkpoint and counts no
    failure), failed ones when `retry_failed` or when the last attempt crashed (its process was
    killed: the OOM killer, kill -9; often transient) unless they failed `max_failures` times;
    never a done, corrupt, queued or running step; never a step under one that cannot run.
    """
    from sweep.status import reconcile

    statuses = reconcile(plan) if statuses is None else statuses
    will_finish: dict[str, bool] = {}  # step_id → done, in flight, or chosen now
    chosen: list[Step] = []
    for step in plan.steps:
        status = statuses[step.step_id]
        if status.state == DONE or status.state in IN_FLIGHT:
            will_finish[step.step_id] = True
            continue
        if not all(will_finish.get(pid, False) for _, pid in step.parents):
            will_finish[step.step_id] = False
            continue
        retry = retry_failed or status.cause == "crash"
        if status.state == CORRUPT or (status.state == FAILED and (not retry or status.failures >= max_failures)):
            will_finish[step.step_id] = False
            continue
        will_finish[step.step_id] = True
        chosen.append(step)
    return chosen


def run_and_wait(plan: Any, steps: Sequence[Step], backend: str, *, workers: int, progress: bool = True,
                 poll_s: float = SETTLE_POLL_S) -> dict[str, StepStatus]:
    """Run `steps` on a backend as `vlmsweep run` does (under the root's run lock, recorded in the
    journal) and wait until none of them is queued or running; every step's status then."""
    from sweep.locking import root_lock
    from sweep.status import reconcile

    with root_lock(plan.root):
        get_backend(backend).run(plan, steps, workers=workers, progress=progress, statuses=reconcile(plan))
    ids = [s.step_id for s in steps]
    while True:
        statuses = reconcile(plan)
        if not any(statuses[i].state in IN_FLIGHT for i in ids):
            return statuses
        time.sleep(poll_s)
