"""Where every step of a plan stands: done, running, pending, failed, blocked or not submitted
(the words are `models.stepfiles.STATES`).

Reconciled from the step files (`models.stepfiles`), the launch
journal (`<root>/launch/jobs.jsonl`, `failures.jsonl`) and one `squeue` + one `sacct` call for
all SLURM jobs at once. A failed step carries its reason (the exception, OOM, TIMEOUT, NODE_FAIL,
CANCELLED) and the path of its log; a step under a failed one is blocked.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from models import stepfiles as sf
from models.stepfiles import BLOCKED, DONE, FAILED, NOT_SUBMITTED, PENDING, RUNNING, STATES
from sweep.launch.journal import JobRecord, latest_jobs, read_failures, read_jobs
from sweep.launch.queue import FAILURE_REASONS, JobState, local_job_state, query_slurm

UNKNOWN_GRACE_S = 300.0  # a job SLURM does not list yet counts as pending for this long


@dataclass(frozen=True, kw_only=True, slots=True)
class StepStatus:
    step_id: str
    kind: str
    state: str  # one of models.stepfiles.STATES
    reason: str = ""  # why failed / blocked
    job_id: str = ""  # the latest job that ran or will run it
    log: str = ""  # that job's stderr
    failures: int = 0  # failed attempts so far (for max_failures)
    progress: dict[str, Any] | None = None  # progress.json of a running step

    def to_json(self) -> dict[str, Any]:
        return {"step_id": self.step_id, "kind": self.kind, "state": self.state,
                "reason": self.reason, "job_id": self.job_id, "log": self.log,
                "failures": self.failures, "progress": self.progress}


def _failure_text(paths: sf.StepPaths) -> str:
    """failure.json's one line ("" when there is none)."""
    if not paths.failure.exists():
        return ""
    try:
        return sf.read_failure(paths.dir).summary
    except sf.StepFileError as exc:
        return str(exc)


def job_states(records: list[JobRecord]) -> dict[str, JobState]:
    """States of the recorded jobs: SLURM ones in one query, local ones by pid."""
    slurm_ids = sorted({r.job_id for r in records if r.backend == "slurm"})
    states = query_slurm(slurm_ids)
    for r in records:
        if r.backend == "local":
            states[r.job_id] = local_job_state(r.job_id, r.log)
    return states


def _failed_attempts(records: list[JobRecord], states: dict[str, JobState],
                     failures: dict[str, set[str]]) -> dict[str, int]:
    """step_id → attempts that failed: ones a worker recorded plus ones SLURM killed after start."""
    seen: dict[str, set[str]] = {k: set(v) for k, v in failures.items()}
    for r in records:
        st = states.get(r.job_id)
        if st and st.started and st.state in FAILURE_REASONS:
            seen.setdefault(r.step_id, set()).add(r.job_id)
    return {k: len(v) for k, v in seen.items()}


def reconcile(plan: Any, *, states: dict[str, JobState] | None = None) -> dict[str, StepStatus]:
    """step_id → StepStatus for every step of the plan (in the plan's topological order)."""
    records = [r for r in read_jobs(plan.root) if r.step_id in plan.by_id]
    if states is None:
        states = job_states(records)
    latest = latest_jobs(records)
    worker_failures: dict[str, set[str]] = {}
    errors: dict[str, str] = {}
    for f in read_failures(plan.root):
        worker_failures.setdefault(f.step_id, set()).add(f.job_id)
        errors[f.step_id] = f.error
    attempts = _failed_attempts(records, states, worker_failures)
    out: dict[str, StepStatus] = {}
    for step in plan.steps:
        sid = step.step_id
        record = latest.get(sid)
        base = dict(step_id=sid, kind=step.kind, failures=attempts.get(sid, 0),
                    job_id=record.job_id if record else "", log=record.log if record else "")
        out[sid] = _one(plan, step, record, states, errors.get(sid, ""), out, base)
    return out


def _blocking_parent(step: Any, out: dict[str, StepStatus]) -> StepStatus | None:
    for _, pid in step.parents:
        parent = out.get(pid)
        if parent and parent.state in (FAILED, BLOCKED):
            return parent
    return None


def _one(plan: Any, step: Any, record: JobRecord | None, states: dict[str, JobState],
         error: str, out: dict[str, StepStatus], base: dict[str, Any]) -> StepStatus:
    paths = sf.paths_of(plan.root, step)
    if plan.status(step) == DONE:
        return StepStatus(state=DONE, **base)
    job = states.get(record.job_id) if record else None
    if paths.result.exists() and not (job is not None and job.live):
        # A finished trunk that another study now asks for one more checkpoint fraction:
        # `run` replays just that part from its nearest earlier checkpoint.
        wanted = ", ".join(f"{f:g}" for f in sf.missing_fractions(step, plan.root))
        return StepStatus(state=NOT_SUBMITTED, reason=f"needs checkpoint(s) at f = {wanted}", **base)
    blocker = _blocking_parent(step, out)
    why_blocked = f"{blocker.kind} {blocker.step_id} {blocker.state}" if blocker else ""
    if job is not None and job.state == "UNKNOWN" and record is not None:
        if time.time() - record.submitted_at < UNKNOWN_GRACE_S:  # accounting lags sbatch a little
            return StepStatus(state=PENDING, reason="just submitted", **base)
        return StepStatus(state=FAILED, reason=f"job {job.job_id} is unknown to squeue and "
                          "sacct (was the cluster reset?)", **base)
    if job is not None and job.live:
        if job.running:
            return StepStatus(state=RUNNING, progress=sf.read_json_or_none(paths.progress), **base)
        if blocker:
            return StepStatus(state=BLOCKED, reason=why_blocked, **base)
        return StepStatus(state=PENDING, reason=job.reason, **base)
    if job is not None and not job.started:  # cancelled before it ran: a dependency died
        return StepStatus(state=BLOCKED, reason=why_blocked or f"job {job.job_id} {job.state} "
                          f"before it started ({job.reason or 'dependency never satisfied'})", **base)
    if job is not None and job.state == "INTERRUPTED" and not error:  # Ctrl-C of a local run
        return StepStatus(state=NOT_SUBMITTED, reason="interrupted; `run` resumes it", **base)
    if job is not None and job.state in FAILURE_REASONS:
        detail = error or _failure_text(paths)
        reason = FAILURE_REASONS[job.state] + (f": {detail}" if detail else "")
        return StepStatus(state=FAILED, reason=reason, **base)
    if paths.failure.exists() or error:
        return StepStatus(state=FAILED, reason=error or _failure_text(paths), **base)
    if job is not None and record is not None and record.backend != "inline":
        return StepStatus(state=FAILED, reason=f"job {job.job_id} ended ({job.state}) "
                          "without a result", **base)
    if blocker:
        return StepStatus(state=BLOCKED, reason=why_blocked, **base)
    return StepStatus(state=NOT_SUBMITTED, **base)


def summary(statuses: dict[str, StepStatus]) -> dict[str, int]:
    counts = Counter(s.state for s in statuses.values())
    return {state: counts.get(state, 0) for state in STATES}
