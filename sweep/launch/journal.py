"""The launch journal: one JSON line per submitted job in `<root>/launch/jobs.jsonl`.

`run` appends a record for every step it submits (step id, job id, array index, backend, log
path); `status` and `select_steps` read it to find a step's latest job. Steps are keyed by id, so
two studies under one root see each other's jobs and never submit a shared step twice.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path


class JournalError(ValueError):
    """A launch record under <root>/launch/ cannot be read; names the file and line."""


@dataclass(frozen=True, kw_only=True, slots=True)
class JobRecord:
    """One submitted job for one step."""

    step_id: str
    kind: str
    job_id: str  # what the backend calls the job: "12_3" (SLURM array task), "12", a pid (local)
    backend: str  # inline | local | slurm
    study: str  # the study that submitted it (a shared step may be submitted by another study)
    log: str  # stderr of the job (the traceback of a failed step is there)
    submitted_at: float  # unix time
    array_job_id: str = ""  # SLURM array the job belongs to ("" when not an array)
    array_index: int = -1  # its index in that array (-1 when not an array)
    level: int = 0  # DAG level among the steps of that submission


@dataclass(frozen=True, kw_only=True, slots=True)
class FailureRecord:
    """One failed attempt of a step, written by the worker that saw the exception."""

    step_id: str
    job_id: str
    error: str  # "ExceptionType: message"
    at: float


def launch_dir(root: str | Path) -> Path:
    return Path(root) / "launch"


def _append(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    # One write() on an O_APPEND descriptor: concurrent writers never interleave within a batch.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, text.encode())
    except OSError as exc:  # os.write names no file: a full disk's message must
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    finally:
        os.close(fd)


def _read(path: Path, cls: type) -> list:
    if not path.exists():
        return []
    names = {f.name for f in fields(cls)}
    out = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            out.append(cls(**{k: v for k, v in row.items() if k in names}))
        except (json.JSONDecodeError, TypeError, RecursionError) as exc:
            raise JournalError(f"{path}: line {number}: not a valid {cls.__name__}: {exc}") from None
    return out


def append_jobs(root: str | Path, records: list[JobRecord]) -> None:
    if records:
        _append(launch_dir(root) / "jobs.jsonl", [asdict(r) for r in records])


def read_jobs(root: str | Path) -> list[JobRecord]:
    return _read(launch_dir(root) / "jobs.jsonl", JobRecord)


def append_failure(root: str | Path, step_id: str, job_id: str, error: str) -> None:
    record = FailureRecord(step_id=step_id, job_id=job_id, error=error, at=time.time())
    _append(launch_dir(root) / "failures.jsonl", [asdict(record)])


def read_failures(root: str | Path) -> list[FailureRecord]:
    return _read(launch_dir(root) / "failures.jsonl", FailureRecord)


def latest_jobs(records: list[JobRecord]) -> dict[str, JobRecord]:
    """step_id → its most recently submitted job (the file is in submission order)."""
    latest: dict[str, JobRecord] = {}
    for record in records:
        latest[record.step_id] = record
    return latest
