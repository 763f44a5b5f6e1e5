"""Memory: a step killed without a trace again and again is a failure (`oom`), not an
interruption; and a run refuses an address-space limit too small to import torch.

A local or inline step whose process is SIGKILLed (most often by the kernel's OOM killer; a host
crash and `kill -9` read the same) leaves neither a result nor a failure: `status` calls it
interrupted and a plain `run` resumes it. Resuming once is right — a kill -9 of `run` or a lost
host is no fault of the step — but a step that is killed again would be resumed forever. So the
second traceless end in a row (two local/inline attempts, each holding its job lock to the end,
neither stopped nor failed) is recorded as a failure with reason `oom`: it counts toward
`max_failures` and `run` stops retrying it unless asked (`--retry-failed`). A local worker
SIGKILLed while this cgroup's OOM-kill counter went up is failed as `oom` at once (`oom_kills`).

Under a small `ulimit -v` (RLIMIT_AS) torch does not fail cleanly: importing it and Lightning
maps ~1 GB of address space, and below that the process spins or dies by SIGSEGV with no
message. `run` checks the limit first and refuses it in one line (exit 2).
"""

from __future__ import annotations

import re
import resource
from pathlib import Path
from typing import Any

from models import stepfiles as sf
from models.stepfiles import INTERRUPTED
from sweep.errors import UserError
from sweep.launch.journal import append_failure, read_failures, read_jobs
from sweep.launch.queue import local_job_state

KILLS_BEFORE_FAILURE = 2  # traceless ends in a row: the first is resumed, the second is a failure
# The least address space a step can run in: torch + Lightning map ~0.96 GB on import (VmPeak,
# measured on CPU torch 2.x), a `debug` step a few hundred MB more.
MIN_ADDRESS_SPACE = 2 * 1024 ** 3


class MemoryLimitError(UserError):
    """The address-space limit (ulimit -v) is below what a step needs."""


def check_memory_limit() -> None:
    """Refuse an RLIMIT_AS below MIN_ADDRESS_SPACE (inherited by every worker and step)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY and soft < MIN_ADDRESS_SPACE:
        raise MemoryLimitError(
            f"the address-space limit (ulimit -v) is {soft / 1024 ** 2:.0f} MB; a step needs at least "
            f"{MIN_ADDRESS_SPACE / 1024 ** 3:.0f} GB (torch and Lightning alone map ~1 GB): raise the "
            "limit (`ulimit -v unlimited`), or bound memory with a cgroup (a step it kills is "
            "recorded as failed with reason oom)")


def oom_kills(fs: str | Path = "/") -> int | None:
    """How many processes the kernel's OOM killer has killed in this process's memory cgroup
    (cgroup v2 `memory.events`, v1 `memory.oom_control`), or None where that cannot be read."""
    fs = Path(fs)
    try:
        lines = (fs / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    candidates = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if controllers == "":  # v2
            candidates += [fs / "sys/fs/cgroup" / rel / "memory.events", fs / "sys/fs/cgroup/memory.events"]
        elif "memory" in controllers.split(","):  # v1 (a container sees its cgroup at the root)
            candidates += [fs / "sys/fs/cgroup/memory" / rel / "memory.oom_control",
                           fs / "sys/fs/cgroup/memory/memory.oom_control"]
    for candidate in candidates:
        try:
            found = re.search(r"^oom_kill (\d+)$", candidate.read_text(), re.M)
        except OSError:
            continue
        if found:
            return int(found.group(1))
    return None


def record_repeated_kills(plan: Any, statuses: dict[str, Any]) -> list[str]:
    """Write the `oom` failure of every interrupted step killed KILLS_BEFORE_FAILURE times in a row;
    the ids of those steps (call with the root lock held, then reconcile again)."""
    interrupted = {sid for sid, s in statuses.items() if s.state == INTERRUPTED}
    if not interrupted:
        return []
    failed_jobs = {f.job_id for f in read_failures(plan.root)}
    attempts: dict[str, list[str]] = {}
    for record in read_jobs(plan.root):
        if record.step_id in interrupted and record.backend in ("local", "inline"):
            attempts.setdefault(record.step_id, []).append(record.job_id)
    recorded = []
    for sid, jobs in attempts.items():
        killed = _traceless_in_a_row(plan.root, jobs, failed_jobs)
        if killed >= KILLS_BEFORE_FAILURE:
            _record(plan, plan.by_id[sid], jobs[-1], killed)
            recorded.append(sid)
    return recorded


def _traceless_in_a_row(root: Any, jobs: list[str], failed_jobs: set[str]) -> int:
    """How many of the latest attempts, counting back, ended without a trace."""
    count = 0
    for job_id in reversed(jobs):
        if job_id in failed_jobs or local_job_state(root, job_id).state != "ENDED":
            break
        if not (sf.job_log_dir(root, job_id) / sf.RUNNING_LOCK).exists():
            break  # never took its lock: it did not start
        count += 1
    return count


def _record(plan: Any, step: Any, job_id: str, killed: int) -> None:
    error = (f"killed without a trace {killed} times in a row (SIGKILL: most likely the kernel's OOM "
             "killer, see `dmesg`); give the step more memory or a smaller micro-batch, then "
             "`run --retry-failed`")
    sf.write_failure(sf.paths_of(plan.root, step).dir, sf.Failure(
        step_id=step.step_id, kind=step.kind, reason="oom", error=error, job_id=job_id,
        finished_at=sf.now_iso()))
    append_failure(plan.root, step.step_id, job_id, f"OOM: {error}")
