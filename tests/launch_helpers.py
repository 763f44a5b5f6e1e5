"""Helpers shared by the launch tests: a small real study/plan and waiting on SLURM jobs."""

from __future__ import annotations

import functools
import time
from pathlib import Path

from sweep.launch.noop import NoopStepJob
from sweep.plan import plan_study
from sweep.spec import load_study
from sweep.status import reconcile

# 12 steps in 4 levels: encoder+trunk → 2 branches + 2 trunk evals → 2 finetunes + 2 evals → 2 evals
SMALL_STUDY = """
[study]
name = "{name}"
[axes]
scale = ["debug"]
intro_fraction = [0.5, 1.0]
image_ratio = [0.1]
[backend]
max_failures = {max_failures}
[backend.slurm]
cpus = 1
mem_gb = 1
time = {time_min}
"""


# Settings for debug studies that start at the trunk (a patch projection: no encoder step to
# pre-train) with tiny budgets: a step trains in seconds.
QUICK_TRUNK_FIRST = """
[model.vision]
kind = "patch"
frozen = false
pretrain = false
[train]
trunk_tokens_per_param = 0.2
image_tokens_per_param = 0.05
[finetune]
samples = 8
"""


def small_plan(tmp_path: Path, *, name: str = "small", root: Path | None = None,
               max_failures: int = 3, time_min: int = 10, extra: str = ""):
    path = tmp_path / f"{name}.toml"
    path.write_text(SMALL_STUDY.format(name=name, max_failures=max_failures, time_min=time_min)
                    + extra)
    return plan_study(load_study(path), root=root or tmp_path / "root")


def noop(seconds: float = 0.0, fail_ids=frozenset(), slow=()):
    return functools.partial(NoopStepJob, seconds=seconds, fail_ids=frozenset(fail_ids), slow=tuple(slow))


def wait_settled(plan, timeout_s: float = 120.0, poll_s: float = 1.0):
    """Reconcile until no step is pending or running; the final statuses."""
    deadline = time.monotonic() + timeout_s
    while True:
        statuses = reconcile(plan)
        if not any(s.state in ("pending", "running") for s in statuses.values()):
            return statuses
        if time.monotonic() > deadline:
            live = {k: (s.state, s.job_id) for k, s in statuses.items()
                    if s.state in ("pending", "running")}
            raise AssertionError(f"steps still queued after {timeout_s} s: {live}")
        time.sleep(poll_s)


def wait_for(predicate, timeout_s: float = 60.0, poll_s: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)
