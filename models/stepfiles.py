"""The on-disk contract of a step, in one place: where its files live and what they are called, the
words for its status, the one `failure.json` schema, the one atomic writer and the one encoding of
intro fractions. Launchers, status, search, ingest and the app import it; nothing else spells a
step file's name.

    <root>/steps/<kind>/<step_id>/  config.json  progress.json  metrics.parquet  evals.parquet
                                    model.pt  result.json | failure.json  ckpt/latest.pt  ckpt/frac-<f>.pt
    <root>/logs/<job_id>/           <job_id>_0_log.out|err  running.lock  stopped

The lowest layer of the project: it imports nothing from it, and neither torch nor pyarrow at
import time (the planner, `vlmsweep status` and the app read step files in milliseconds).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

# -- file names -----------------------------------------------------------------------------------
STEPS_DIR = "steps"
CONFIG = "config.json"  # written first: the step's identity, full config, parents, meta
PROGRESS = "progress.json"  # rewritten while training: tokens done, total, tokens/s
METRICS = "metrics.parquet"  # training curves
EVALS = "evals.parquet"  # evaluation scores
WEIGHTS = "model.pt"  # final weights, read by children and evals
RESULT = "result.json"  # written last: a step is done iff it exists
FAILURE = "failure.json"  # the last attempt's failure (removed when an attempt succeeds)
CKPT_DIR = "ckpt"
TRACKING = "tracking.json"  # the step's experiment-tracker run ids (MLflow's), reused on resume
LATEST = "latest.pt"  # periodic / preemption checkpoint, removed once the step is done
LOGS_DIR = "logs"
RUNNING_LOCK = "running.lock"  # in a job's log folder, flock-held while the job is in flight
STOPPED_MARK = "stopped"  # in a job's log folder: the run was stopped (Ctrl-C) while the job ran
# What ingest signs (name:size:mtime) to tell a changed step from an unchanged one.
SIGNED_FILES = (CONFIG, RESULT, FAILURE, METRICS, EVALS)

# -- parquet tables: column names and Arrow types (pyarrow is imported only when writing) ---------
# Wall-clock metrics rows (seconds and rates): never equal across runs, so resume comparisons skip
# them. data_wait_s: seconds the training process spent getting the step's batch (packing, waiting
# for data workers); a step whose data_wait_s exceeds DATA_BOUND_SHARE of its time is data-bound.
TIMING_METRICS = ("tokens_per_s", "data_wait_s")
DATA_BOUND_SHARE = 0.1


def data_wait_share(rows) -> float | None:
    """The share of a run's step time spent waiting for data, from its metrics rows (step, tokens,
    name, value): Σ data_wait_s ÷ Σ step seconds (tokens per step ÷ tokens_per_s); None without
    both. Steps whose rate is not known (the first of an attempt) are left out of both sums."""
    waits: dict[int, float] = {}
    seconds: dict[int, float] = {}
    for step, tokens, name, value in rows:
        if name == "data_wait_s":
            waits[step] = float(value)
        elif name == "tokens_per_s" and step > 0 and math.isfinite(value) and value > 0:
            seconds[step] = tokens / step / float(value)
    both = waits.keys() & seconds.keys()
    total = sum(seconds[s] for s in both)
    return sum(waits[s] for s in both) / total if total > 0 else None
METRICS_COLUMNS = (("step", "int64"), ("tokens", "int64"), ("name", "string"), ("value", "float64"))
# One evals row per (task, metric); `primary_metric` marks the row a task's stable score uses.
EVALS_COLUMNS = (("task", "string"), ("group", "string"), ("metric", "string"),
                 ("value", "float64"), ("chance", "float64"), ("n", "int64"), ("primary_metric", "bool_"))
TABLE_COLUMNS = {METRICS: METRICS_COLUMNS, EVALS: EVALS_COLUMNS}
# metrics rows of training events (models.stages.guard writes them at the step they happened):
# a loss spike (value = loss / running median of the window before it), a batch skipped for a
# non-finite loss or gradient norm (value 1), a rewind to a checkpoint (value = its step).
SPIKE_METRIC = "loss_spike"
SKIPPED_METRIC = "nonfinite_skipped"
REWIND_METRIC = "nonfinite_rewind"
EVENT_METRICS = (SPIKE_METRIC, SKIPPED_METRIC, REWIND_METRIC)
# evals rows of the held-out validation losses (models.heldout writes them): their own metric, so
# that no average of task scores ever counts them; task -> group
LOSS_METRIC = "val_loss"
# How a study turns a task's primary metric into its stable score (`[eval] stable_score`, carried in
# the study manifest): score − chance, or DCLM's centered (score − chance) / (1 − chance).
STABLE_DEFINITIONS = ("difference", "centered")
HELDOUT_TASKS = {"heldout_text": "text", "heldout_caption": "vl"}

# -- status words ---------------------------------------------------------------------------------
# What a step's files say on their own (`file_state`): result.json = done, failure.json = failed,
# neither = missing (never started, running, or stopped without a trace: only the launch journal
# and the scheduler can tell those apart), and corrupt: a result.json, or a table beside it, that
# cannot be read (a done step must never be read as done when its files are damaged).
DONE, FAILED, MISSING, CORRUPT = "done", "failed", "missing", "corrupt"
FILE_STATES = (DONE, FAILED, MISSING, CORRUPT)
# What `vlmsweep status` reconciles from the files, the launch journal and the scheduler: a missing
# step is running, pending (queued), interrupted (its job ended without a trace because the process
# running it died with its runner: kill -9 of `run`, a host crash, a lost SLURM node; a plain `run`
# resumes it without counting a failure), blocked (under a failed, corrupt or blocked step) or not
# submitted.
RUNNING, PENDING, INTERRUPTED = "running", "pending", "interrupted"
BLOCKED, NOT_SUBMITTED = "blocked", "not submitted"
STATES = (DONE, RUNNING, PENDING, INTERRUPTED, FAILED, CORRUPT, BLOCKED, NOT_SUBMITTED)
IN_FLIGHT = (RUNNING, PENDING)  # states whose step a new run must not submit again
# Why an attempt failed (failure.json "reason"): `input` is bad input the user must fix (a data
# record, a tokenizer, a refused checkpoint file) and `disk` a results root that cannot be written
# (full, read-only, no permission); `run` exits 2 when a step failed for either. `diverged`: a
# non-finite training loss or gradient norm (past the study's allowance of skipped batches and
# rewinds), or non-finite evals: the step's numbers are not a result (docs/divergence.md).
REASONS = ("exception", "oom", "preempted", "crash", "input", "disk", "diverged")
USER_REASONS = ("input", "disk")
# Failures whose one-line message says everything (the worker prints no traceback for them).
QUIET_REASONS = USER_REASONS + ("diverged",)

# -- intro fractions ------------------------------------------------------------------------------
# Fractions (intro_fraction, image_ratio, instruction_share) are kept to this many decimals
# everywhere: the study file, adaptive search's lattice and the trunk checkpoint's file name, so
# two fractions that plan to different steps never share a checkpoint file.
FRACTION_DIGITS = 6
_FRACTION_FILE = re.compile(r"frac-([0-9]+\.[0-9]+)\.pt")


class StepFileError(ValueError):
    """A step file cannot be read or does not follow its schema; the message names file and field."""


def round_fraction(value: float) -> float:
    """The one rounding of a fraction: 0.1 * 3 and 0.3 become the same value (and step)."""
    return round(float(value), FRACTION_DIGITS)


def fraction_file(fraction: float) -> str:
    """The checkpoint file name of intro fraction `fraction`, exact to FRACTION_DIGITS decimals."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"checkpoint fraction {fraction} is outside [0, 1]")
    return f"frac-{round_fraction(fraction):.{FRACTION_DIGITS}f}.pt"


def parse_fraction_file(name: str) -> float | None:
    """The fraction a checkpoint file name encodes, or None for any other file."""
    match = _FRACTION_FILE.fullmatch(name)
    return float(match.group(1)) if match else None


def fraction_step(fraction: float, tokens: int, tokens_per_step: int | float) -> int:
    """The optimizer step whose checkpoint is intro fraction `fraction` of a trunk of `tokens`
    planned tokens: the step at which it has seen f·T tokens, rounded down (f = 1: its last step)."""
    total = int(-(-tokens // tokens_per_step))
    if fraction >= 1.0:
        return total
    # The epsilon keeps 0.6·T/(B·L) = 59.999999… from rounding down a whole step.
    return min(total, math.floor(fraction * tokens / tokens_per_step + 1e-9))


# -- layout ---------------------------------------------------------------------------------------
def kind_dir(root: str | Path, kind: str) -> Path:
    """The folder holding every step directory of one kind: <root>/steps/<kind>/."""
    return Path(root) / STEPS_DIR / kind


def step_dir(root: str | Path, kind: str, step_id: str) -> Path:
    """Where a step's files live: <root>/steps/<kind>/<step_id>/."""
    return kind_dir(root, kind) / step_id


@dataclass(frozen=True, slots=True)
class StepPaths:
    """Every file of one step directory."""

    dir: Path

    config = property(lambda self: self.dir / CONFIG)
    progress = property(lambda self: self.dir / PROGRESS)
    metrics = property(lambda self: self.dir / METRICS)
    evals = property(lambda self: self.dir / EVALS)
    weights = property(lambda self: self.dir / WEIGHTS)
    result = property(lambda self: self.dir / RESULT)
    failure = property(lambda self: self.dir / FAILURE)
    ckpt = property(lambda self: self.dir / CKPT_DIR)
    latest = property(lambda self: self.dir / CKPT_DIR / LATEST)

    def fraction(self, fraction: float) -> Path:
        """A trunk's full resumable checkpoint at intro fraction `fraction`."""
        return self.ckpt / fraction_file(fraction)

    def fraction_checkpoints(self) -> list[tuple[float, Path]]:
        """(fraction, path) of every fraction checkpoint on disk, by fraction."""
        found = ((parse_fraction_file(p.name), p) for p in self.ckpt.glob("frac-*.pt"))
        return sorted((f, p) for f, p in found if f is not None)


def step_paths(root: str | Path, kind: str, step_id: str) -> StepPaths:
    return StepPaths(step_dir(root, kind, step_id))


def paths_of(root: str | Path, step: Any) -> StepPaths:
    """The files of a step (anything with `kind` and `step_id`, e.g. models.steps.Step)."""
    return step_paths(root, step.kind, step.step_id)


def job_log_dir(root: str | Path, job_id: str) -> Path:
    """A local job's log folder, shaped like submitit's `<root>/logs/<id>/`."""
    return Path(root) / LOGS_DIR / job_id


# -- status from files ----------------------------------------------------------------------------
def missing_fractions(step: Any, root: str | Path) -> list[float]:
    """Checkpoint fractions a trunk is asked for (meta) that it has not saved under `root`."""
    if step.kind != "trunk":
        return []
    paths = paths_of(root, step)
    return [float(f) for f in step.meta.get("checkpoint_fractions", ()) if not paths.fraction(float(f)).exists()]


def step_done(step: Any, root: str | Path) -> bool:
    """Done = result.json exists, and for a trunk every checkpoint its branches need exists.

    A finished trunk asked for one more checkpoint (a finer lattice for adaptive search) is not
    done: running it again replays just that part (bit-identical) and leaves the rest as it was.
    """
    return paths_of(root, step).result.exists() and not missing_fractions(step, root)


def file_state(step: Any, root: str | Path) -> str:
    """done | failed | missing | corrupt, from the step's files only (see FILE_STATES)."""
    paths = paths_of(root, step)
    if paths.result.exists():
        if result_problem(paths) is not None:
            return CORRUPT
        if not missing_fractions(step, root):
            return DONE
    return FAILED if paths.failure.exists() else MISSING


def _parquet_framed(path: Path) -> bool:
    """Whether a Parquet file starts and ends with its magic "PAR1": a truncated or overwritten one
    does not (a cheap check for `status`; ingest reads every page and finds damage inside)."""
    try:
        with open(path, "rb") as fh:
            head, size = fh.read(4), os.fstat(fh.fileno()).st_size
            fh.seek(max(size - 4, 0))
            return size >= 12 and head == b"PAR1" and fh.read(4) == b"PAR1"
    except OSError:
        return False


def result_problem(paths: StepPaths) -> str | None:
    """Why a step with result.json cannot be read as done (the file and what is wrong), or None."""
    try:
        read_json(paths.result)
    except StepFileError as exc:
        return str(exc)
    for table in (paths.metrics, paths.evals):
        if table.exists() and not _parquet_framed(table):
            return f"{table}: not a complete Parquet file (truncated or overwritten)"
    return None


def dir_state(directory: Path) -> str:
    """The file state of a step directory found on disk (no plan: a trunk's fractions unknown)."""
    if (directory / RESULT).exists():
        return DONE
    return FAILED if (directory / FAILURE).exists() else MISSING


# -- the atomic writer ----------------------------------------------------------------------------
def temp_path(path: Path) -> Path:
    """A hidden temp name next to `path`, unique per writer (process and call)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def publish(tmp: Path, path: Path, *, durable: bool = True) -> None:
    """Make `tmp` durable, then rename it over `path`: readers see the old file or the new one.

    `durable=False` skips the two fsyncs (~10 ms a file) for bulk writers that make their batch
    durable at once (`os.sync()`) before they publish the file that says the batch is complete.
    """
    if durable:
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())  # the rename must never publish a file whose bytes are not on disk
    os.replace(tmp, path)
    if not durable:
        return
    with contextlib.suppress(OSError):  # the rename itself, on file systems that allow it
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_TEMP_FILE = re.compile(r"\..+\.[0-9]+\.[0-9a-f]{8}\.tmp")


def remove_temp_files(directory: str | Path) -> list[Path]:
    """Delete the temp files writers left in a step directory and its ckpt/ when they were killed
    mid-write (a writer that fails removes its own). Call it only where no other process can be
    writing: a step's job, before it runs the step."""
    removed = []
    for folder in (Path(directory), Path(directory) / CKPT_DIR):
        for path in folder.glob(".*.tmp") if folder.is_dir() else ():
            if _TEMP_FILE.fullmatch(path.name):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


# errno values that say the results root cannot take a write: full, over quota, read-only, denied.
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


class StorageError(OSError):
    """A step file could not be written: `StorageError(errno, path)` reads "path: cannot write
    (No space left on device)", one line naming the file."""

    def __init__(self, code: int, path: str | Path) -> None:
        super().__init__(code, os.strerror(code), str(path))

    def __str__(self) -> str:
        return f"{self.filename}: cannot write ({self.strerror})"


def disk_error(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) says the file system refused a write."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            return True
        exc = exc.__cause__
    return False


@contextlib.contextmanager
def atomic_path(path: str | Path, *, durable: bool = True) -> Iterator[Path]:
    """A temp path to write `path`'s new content to; published on success, removed on error."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        publish(tmp, path, durable=durable)
    except OSError as exc:
        if isinstance(exc, StorageError) or exc.errno not in DISK_ERRNOS:
            raise
        raise StorageError(exc.errno, path) from exc  # name the file, not its temp name
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes, *, durable: bool = True) -> None:
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str, *, durable: bool = True) -> None:
    write_bytes(path, text.encode(), durable=durable)


def write_json(path: str | Path, value: Any, *, indent: int | None = 2, durable: bool = True) -> None:
    write_text(path, json.dumps(value, indent=indent, sort_keys=True, default=str), durable=durable)


def write_table(path: str | Path, rows: Iterable[Any], columns: tuple[tuple[str, str], ...]) -> None:
    """Rows (dicts, or tuples in column order) as a parquet file with exactly these columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in columns])
    rows = [r if isinstance(r, dict) else dict(zip(schema.names, r)) for r in rows]
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)


def read_json(path: Path) -> dict[str, Any]:
    """A step file's JSON object; StepFileError naming the file when it is unreadable or not one."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise StepFileError(f"{path}: cannot read JSON ({_json_problem(exc)})") from None
    if not isinstance(value, dict):
        raise StepFileError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _json_problem(exc: BaseException) -> str:
    """Why a JSON text could not be read, in words (json's own message, or the nesting depth)."""
    return "nested too deeply" if isinstance(exc, RecursionError) else str(exc)


def read_json_or_none(path: Path) -> dict[str, Any] | None:
    """The JSON object at `path`, or None when it is absent or unreadable (status displays)."""
    try:
        return read_json(path)
    except StepFileError:
        return None


def now_iso() -> str:
    """The timestamp format of every step file: ISO-8601, UTC, to the millisecond (a parent's
    finished_at sorts before its child's)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


# -- failure.json ---------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, slots=True)
class Failure:
    """What failure.json holds: why the step's last attempt ended without a result."""

    step_id: str
    kind: str
    reason: str  # one of REASONS
    error: str  # "ExceptionType: message", one line
    finished_at: str  # ISO-8601 UTC (now_iso)
    traceback: str = ""  # the step's own traceback; empty when the process died (reason crash)
    job_id: str = ""  # the job of that attempt, when a launcher recorded it
    # reason diverged, in training: the optimizer step whose loss or gradient norm was not finite,
    # that loss and norm as text ("nan", "inf", "-inf", or the number: JSON has no NaN), and the
    # last finite training loss before it (None: there was none)
    optimizer_step: int | None = None
    loss: str = ""
    grad_norm: str = ""
    last_finite_loss: float | None = None

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"failure reason {self.reason!r} is not one of {', '.join(REASONS)}")

    @property
    def summary(self) -> str:
        """The one line `status` and `plan --explain` show."""
        return f"OOM: {self.error}" if self.reason == "oom" else self.error


def write_failure(directory: Path, failure: Failure) -> None:
    write_json(Path(directory) / FAILURE, {**asdict(failure), "status": FAILED})


_REQUIRED_FAILURE_FIELDS = ("step_id", "kind", "reason", "error", "finished_at")


def read_failure(directory: Path) -> Failure:
    """A step directory's failure.json; StepFileError naming the file and the field."""
    path = Path(directory) / FAILURE
    data = read_json(path)
    values: dict[str, Any] = {}
    for name in ("step_id", "kind", "reason", "error", "finished_at", "traceback", "job_id", "loss", "grad_norm"):
        value = data.get(name, None if name in _REQUIRED_FAILURE_FIELDS else "")
        if not isinstance(value, str):
            raise StepFileError(f"{path}: field {name!r} must be a string, got {value!r}")
        values[name] = value
    for name, kinds in (("optimizer_step", (int,)), ("last_finite_loss", (int, float))):
        value = data.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)
                                  or not math.isfinite(value)):
            raise StepFileError(f"{path}: field {name!r} must be a finite number or null, got {value!r}")
        values[name] = value
    try:
        datetime.fromisoformat(values["finished_at"])
        return Failure(**values)
    except ValueError as exc:
        raise StepFileError(f"{path}: {exc}") from None


def failure_or_none(directory: Path) -> Failure | None:
    """failure.json when it is there and readable, else None (status displays)."""
    with contextlib.suppress(StepFileError):
        return read_failure(directory)
    return None


# -- result.json ----------------------------------------------------------------------------------
def write_result(directory: Path, result: dict[str, Any]) -> None:
    """Publish result.json (the step is done from this moment on)."""
    write_json(Path(directory) / RESULT, result)


def read_result(directory: Path) -> dict[str, Any] | None:
    """result.json, or None when the step has none; StepFileError when it is unreadable."""
    path = Path(directory) / RESULT
    if not path.exists():
        return None
    return read_json(path)
