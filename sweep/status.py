"""Where every step of a plan stands: done, running, pending, interrupted, failed, corrupt, blocked
or not submitted (the words are `models.stepfiles.STATES`).

Reconciled from the step files (`models.stepfiles`), the launch journal (`<root>/launch/jobs.jsonl`,
`failures.jsonl`) and one `squeue` + one `sacct` call for all SLURM jobs at once. A failed step
carries its reason (the exception, OOM, TIMEOUT, CANCELLED, a bad input file, a full disk) and the
path of its log; a step under a failed one is blocked. A step whose latest job ended with neither a
result nor a failure of that attempt died with the process running it (kill -9 of `run`, a host
crash, a lost SLURM node): it is interrupted, and a plain `run` resumes it without counting a
failure.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from models import stepfiles as sf
from models.stepfiles import (
    BLOCKED,
    CORRUPT,
    DONE,
    FAILED,
    INTERRUPTED,
    NOT_SUBMITTED,
    PENDING,
    RUNNING,
    STATES,
)
from sweep.launch.journal import FailureRecord, JobRecord, latest_jobs, read_failures, read_jobs
from sweep.launch.queue import FAILURE_REASONS, INTERRUPTING, JobState, local_job_state, query_slurm

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
    cause: str = ""  # a failed step's failure.json reason (models.stepfiles.REASONS), if known

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


def job_states(root: Any, records: list[JobRecord]) -> dict[str, JobState]:
    """States of the recorded jobs: SLURM ones in one query, local and inline ones by their lock."""
    slurm_ids = sorted({r.job_id for r in records if r.backend == "slurm"})
    states = query_slurm(slurm_ids)
    for r in records:
        if r.backend in ("local", "inline"):
            states[r.job_id] = local_job_state(root, r.job_id)
    return states


def _failed_attempts(records: list[JobRecord], states: dict[str, JobState],
                     failures: dict[str, set[str]]) -> dict[str, int]:
    """step_id → attempts that failed: ones a worker recorded plus ones SLURM killed after start."""
    seen: dict[str, set[str]] = {k: set(v) for k, v in failures.items()}
    for r in records:
        st = states.get(r.job_id)
        if st and st.started and st.state in FAILURE_REASONS and st.state not in INTERRUPTING:
            seen.setdefault(r.step_id, set()).add(r.job_id)
    return {k: len(v) for k, v in seen.items()}


def reconcile(plan: Any, *, states: dict[str, JobState] | None = None) -> dict[str, StepStatus]:
    """step_id → StepStatus for every step of the plan (in the plan's topological order)."""
    records = [r for r in read_jobs(plan.root) if r.step_id in plan.by_id]
    if states is None:
        states = job_states(plan.root, records)
    latest = latest_jobs(records)
    failures: dict[str, list[FailureRecord]] = {}
    for f in read_failures(plan.root):
        failures.setdefault(f.step_id, []).append(f)
    attempts = _failed_attempts(records, states, {k: {f.job_id for f in v} for k, v in failures.items()})
    out: dict[str, StepStatus] = {}
    for step in plan.steps:
        sid = step.step_id
        record = latest.get(sid)
        base = dict(step_id=sid, kind=step.kind, failures=attempts.get(sid, 0),
                    job_id=record.job_id if record else "", log=record.log if record else "")
        out[sid] = _one(plan, step, record, states, failures.get(sid, []), out, base)
    return out


def _blocking_parent(step: Any, out: dict[str, StepStatus]) -> StepStatus | None:
    for _, pid in step.parents:
        parent = out.get(pid)
        if parent and parent.state in (FAILED, CORRUPT, BLOCKED):
            return parent
    return None


def _timestamp(iso: str) -> float:
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return 0.0


def _attempt_failure(paths: sf.StepPaths, record: JobRecord | None,
                     failures: list[FailureRecord]) -> tuple[str, str] | None:
    """(cause, one line) of the failure the latest attempt left, or None if it left none.

    Without a job record every failure counts; with one, only failures at or after its submission
    (an older failure.json belongs to an attempt before it). A checkpoint-and-stop (`preempted`)
    is not a failure.
    """
    since = record.submitted_at if record is not None else float("-inf")
    failure = sf.failure_or_none(paths.dir)
    if failure is not None and failure.reason != "preempted" and _timestamp(failure.finished_at) >= since:
        return failure.reason, failure.summary
    if failure is None and paths.failure.exists():
        return "exception", _failure_text(paths)  # unreadable failure.json: still a failure
    fresh = [f for f in failures if f.at >= since]
    return ("exception", fresh[-1].error) if fresh else None


def _one(plan: Any, step: Any, record: JobRecord | None, states: dict[str, JobState],
         failures: list[FailureRecord], out: dict[str, StepStatus], base: dict[str, Any]) -> StepStatus:
    paths = sf.paths_of(plan.root, step)
    file_state = plan.status(step)
    if file_state == DONE:
        return StepStatus(state=DONE, **base)
    if file_state == CORRUPT:
        return StepStatus(state=CORRUPT, reason=f"{sf.result_problem(paths)}; delete it and `run` "
                          "recomputes the step", **base)
    job = states.get(record.job_id) if record else None
    if paths.result.exists() and not (job is not None and job.live):
        # A finished trunk that another study now asks for one more checkpoint fraction:
        # `run` replays just that part from its nearest earlier checkpoint.
        wanted = ", ".join(f"{f:g}" for f in sf.missing_fractions(step, plan.root))
        return StepStatus(state=NOT_SUBMITTED, reason=f"needs checkpoint(s) at f = {wanted}", **base)
    blocker = _blocking_parent(step, out)
    why_blocked = f"{blocker.kind} {blocker.step_id} {blocker.state}" if blocker else ""
    if job is not None and job.state == "UNKNOWN" and record is not None:
        if blocker:  # whatever SLURM later says of its job, it waits on a parent without a result
            return StepStatus(state=BLOCKED, reason=why_blocked, **base)
        if time.time() - record.submitted_at < UNKNOWN_GRACE_S:  # accounting lags sbatch a little
            return StepStatus(state=PENDING, reason="just submitted", **base)
        return StepStatus(state=FAILED, reason=f"job {job.job_id} is unknown to squeue and "
                          "sacct (was the cluster reset?)", **base)
    if job is not None and job.live:
        if blocker:  # queued or started, its job finds a parent without a result and runs nothing
            return StepStatus(state=BLOCKED, reason=why_blocked, **base)
        if job.running:
            return StepStatus(state=RUNNING, progress=sf.read_json_or_none(paths.progress), **base)
        return StepStatus(state=PENDING, reason=job.reason, **base)
    if job is not None and not job.started:  # cancelled before it ran: a dependency died
        return StepStatus(state=BLOCKED, reason=why_blocked or f"job {job.job_id} {job.state} "
                          f"before it started ({job.reason or 'dependency never satisfied'})", **base)
    return _ended(step, job, _attempt_failure(paths, record, failures), blocker, out, base)


def _ended(step: Any, job: JobState | None, failed: tuple[str, str] | None,
           blocker: StepStatus | None, out: dict[str, StepStatus], base: dict[str, Any]) -> StepStatus:
    """A step whose latest job (if any) has ended without a result: failed, blocked, not
    submitted or interrupted."""
    ended_badly = job is not None and job.state in FAILURE_REASONS and job.state not in INTERRUPTING
    if failed is not None or ended_badly:
        cause, detail = failed or ("", "")
        if ended_badly:
            detail = FAILURE_REASONS[job.state] + (f": {detail}" if detail else "")
        return StepStatus(state=FAILED, reason=detail, cause=cause, **base)
    if blocker:
        return StepStatus(state=BLOCKED, reason=f"{blocker.kind} {blocker.step_id} {blocker.state}", **base)
    if job is None:
        return StepStatus(state=NOT_SUBMITTED, **base)
    waiting = [f"{kind} {pid}" for kind, pid in step.parents
               if out.get(pid) is not None and out[pid].state != DONE]
    if waiting:  # its job found a parent without a result and ran nothing (see StepJob)
        return StepStatus(state=NOT_SUBMITTED, reason=f"job {job.job_id} ran nothing: "
                          f"{waiting[0]} was not done", **base)
    return StepStatus(state=INTERRUPTED, reason=_interruption(job), **base)


def _interruption(job: JobState) -> str:
    if job.state == "STOPPED":
        return f"job {job.job_id} was stopped mid-step (Ctrl-C or SIGTERM of `run`); `run` resumes it"
    if job.state in INTERRUPTING:
        return f"job {job.job_id} ended {job.state}; `run` resumes it"
    return (f"job {job.job_id} ended without a result or a failure: the process running it died "
            "with its runner (kill -9, a host crash); `run` resumes it")


def summary(statuses: dict[str, StepStatus]) -> dict[str, int]:
    counts = Counter(s.state for s in statuses.values())
    return {state: counts.get(state, 0) for state in STATES}
