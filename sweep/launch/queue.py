"""What SLURM says about our jobs: one `squeue` and one `sacct` call per poll, never one per job.

`squeue -r` lists every live job with array tasks expanded; `sacct` covers finished ones (and
arrays whose unstarted tasks it still prints as `12_[3-5%2]`, which `expand_job_ids` expands).
Local jobs are worker-pool jobs ("pid.n"), checked by the lock their supervisor holds.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from models import stepfiles as sf

LIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED",
               "RESIZING", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}
RUNNING_STATES = {"RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT"}
# sacct state → the reason `vlmsweep status` shows
FAILURE_REASONS = {"FAILED": "exception", "OUT_OF_MEMORY": "OOM", "TIMEOUT": "TIMEOUT",
                   "NODE_FAIL": "NODE_FAIL", "CANCELLED": "CANCELLED", "PREEMPTED": "PREEMPTED",
                   "BOOT_FAIL": "BOOT_FAIL", "DEADLINE": "DEADLINE"}
# sacct states of a job that died with its node, not of its own doing: the step is interrupted
# (resumed by a plain `run`, no failure counted), like a local step whose runner was killed.
INTERRUPTING = {"NODE_FAIL", "BOOT_FAIL"}


class QueueError(RuntimeError):
    """squeue/sacct could not be asked (no SLURM client, or the controller does not answer)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class JobState:
    job_id: str
    state: str  # SLURM's word: PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, OUT_OF_MEMORY, …
    reason: str = ""  # squeue/sacct reason (Dependency, DependencyNeverSatisfied, None, …)
    started: bool = True  # False for a job cancelled before it ever ran (e.g. a dead dependency)

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    @property
    def running(self) -> bool:
        return self.state in RUNNING_STATES


_ARRAY = re.compile(r"^(\d+)_\[([0-9,\-]+)(?:%\d+)?\]$")


def expand_job_ids(job_id: str) -> list[str]:
    """"12_[0-2,5%2]" → ["12_0", "12_1", "12_2", "12_5"]; plain ids are returned as they are."""
    match = _ARRAY.match(job_id)
    if not match:
        return [job_id]
    base, spec = match.groups()
    out = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out.extend(f"{base}_{i}" for i in range(int(lo), int(hi or lo) + 1))
    return out


def _call(command: list[str]) -> str:
    if shutil.which(command[0]) is None:
        raise QueueError(f"`{command[0]}` not found: jobs under this root were submitted to SLURM; "
                         "run where the SLURM clients are (or bring up scripts/slurm-dev-cluster)")
    proc = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise QueueError(f"`{' '.join(command[:3])} …` failed: {proc.stderr.strip()}")
    return proc.stdout


def parse_squeue(text: str) -> dict[str, JobState]:
    out = {}
    for line in text.splitlines():
        if line.strip():
            job_id, state, reason = (line.split("|") + ["", ""])[:3]
            out[job_id] = JobState(job_id=job_id, state=state, reason=reason)
    return out


def parse_sacct(text: str) -> dict[str, JobState]:
    out = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        job_id, state, reason, start, nodes = (line.split("|") + ["", "", "", ""])[:5]
        state = state.split()[0] if state else "UNKNOWN"  # "CANCELLED by 0" → CANCELLED
        # A job cancelled while pending (a dead dependency) may still show Start = its cancel
        # time (SLURM 22.05 does for arrays); it never had a node, so NodeList is the witness.
        started = start not in ("", "None", "Unknown") and nodes != "None assigned"
        for task in expand_job_ids(job_id):
            out[task] = JobState(job_id=task, state=state, reason=reason, started=started)
    return out


def query_slurm(job_ids: list[str]) -> dict[str, JobState]:
    """States of these jobs ("12" or "12_3"): one squeue call, then one sacct call for the rest."""
    if not job_ids:
        return {}
    live = parse_squeue(_call(["squeue", "-h", "-r", "-o", "%i|%T|%r"]))
    bases = sorted({j.split("_")[0] for j in job_ids})
    finished = parse_sacct(_call(["sacct", "-X", "-n", "-P", "-j", ",".join(bases),
                                  "-o", "JobID,State,Reason,Start,NodeList"]))
    return {j: live.get(j) or finished.get(j) or JobState(job_id=j, state="UNKNOWN", started=False)
            for j in job_ids}


def local_job_state(root: str | Path, job_id: str) -> JobState:
    """A local or inline job's state: a job that held a lock ("pid.n") by that lock in its log
    folder (RUNNING while held, STOPPED when the run was stopped mid-step, else ENDED)."""
    folder = sf.job_log_dir(root, job_id)
    try:
        fd = os.open(folder / sf.RUNNING_LOCK, os.O_RDONLY)
    except OSError:
        return JobState(job_id=job_id, state="ENDED")
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return JobState(job_id=job_id, state="RUNNING")
    finally:
        os.close(fd)
    state = "STOPPED" if (folder / sf.STOPPED_MARK).exists() else "ENDED"
    return JobState(job_id=job_id, state=state)
