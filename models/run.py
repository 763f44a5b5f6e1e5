"""The step entry point the launch backends call: `run_step(step, root)`.

It writes config.json first, progress.json while training, then metrics.parquet, evals.parquet
and result.json last (the files and their writer are `models.stepfiles`'); on an exception
failure.json, then it re-raises. Re-running a step resumes from its last checkpoint; a done step
returns at once (a trunk asked for a checkpoint fraction it lacks replays just that part). torch
is imported lazily so that importing this module stays cheap.
"""

from __future__ import annotations

import math
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

from models import stepfiles as sf
from models.checkpoint import CheckpointError, Preempted, clear_checkpoint_request, request_checkpoint
from models.config import RunOptions
from models.distributed import MULTI_RANK_KINDS, Ranks, ranks_from_env
from models.steps import CODE_SALT, Step

__all__ = ["run_step", "request_checkpoint", "failure_reason", "Preempted", "RunOptions"]


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


class _Signals:
    """SIGTERM/SIGUSR2 → request_checkpoint, installed only from the main thread, restored after."""

    def __enter__(self) -> "_Signals":
        self.old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGUSR2):
                self.old[sig] = signal.signal(sig, lambda *_: request_checkpoint())
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.old.items():
            signal.signal(sig, handler)


def failure_reason(exc: BaseException) -> str:
    """The failure.json reason of `exc` (one of models.stepfiles.REASONS)."""
    import torch

    from models.data.errors import DataError
    from models.stages.guard import Diverged

    if isinstance(exc, Preempted):
        return "preempted"
    if isinstance(exc, Diverged):
        return "diverged"
    if sf.disk_error(exc):
        return "disk"
    if isinstance(exc, (DataError, CheckpointError, sf.StepFileError)):
        return "input"  # the user's to fix: the message names the file and record
    return "oom" if isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or _host_oom(exc) else "exception"


def _host_oom(exc: BaseException) -> bool:
    """torch's CPU allocator failing (a RuntimeError: "DefaultCPUAllocator: can't allocate memory",
    or "not enough memory" on some platforms): the host is out of memory, like a CUDA OOM."""
    text = str(exc)
    return isinstance(exc, RuntimeError) and "DefaultCPUAllocator" in text and "memory" in text


def _failure(directory: Path, step: Step, exc: BaseException, ranks: Ranks) -> None:
    where = f"rank 0 of {ranks.world}: " if ranks.world > 1 else ""
    details = {k: getattr(exc, k) for k in ("optimizer_step", "loss", "grad_norm", "last_finite_loss")
               if getattr(exc, k, None) not in (None, "")}  # a Diverged's: where it went bad
    failure = sf.Failure(step_id=step.step_id, kind=step.kind, reason=failure_reason(exc),
                         error=f"{where}{type(exc).__name__}: {exc}".splitlines()[0][:500],
                         traceback=traceback.format_exc(), finished_at=sf.now_iso(), **details)
    try:
        sf.write_failure(directory, failure)
    except OSError as error:  # a full disk may not take failure.json either: say so, keep `exc`
        print(f"vlmsweep: could not record the failure of {step.kind} {step.step_id} in "
              f"{directory / sf.FAILURE}: {error.strerror or error}", file=sys.stderr, flush=True)


def run_step(step: Step, root: str | Path, options: RunOptions | None = None,
             data: Any = None) -> dict[str, Any]:
    """Run (or resume, or skip if done) one step; returns its result.json content.

    `data` is the data provider (default: the `models.data` package); tests pass `models.synthetic`.
    """
    # How the step runs: the caller's options, else the study's (`meta["run"]`, see sweep.plan).
    options = options or RunOptions(**step.meta.get("run", {}))
    ranks = ranks_from_env()
    if ranks.world > 1 and step.kind not in MULTI_RANK_KINDS:
        raise ValueError(f"a {step.kind} step trains on one rank, not {ranks.world}: only "
                         f"{', '.join(MULTI_RANK_KINDS)} steps split their batches over ranks")
    paths = sf.paths_of(root, step)
    if data is None:
        import models.data as data
    if sf.step_done(step, root):
        return sf.read_result(paths.dir)
    clear_checkpoint_request()
    with _Signals():
        try:
            if ranks.writes_files:  # rank 0 alone writes the step's files
                sf.remove_temp_files(paths.dir)  # of an attempt killed mid-write; this job alone writes here
                sf.write_json(paths.config, step.to_json())
            return _execute(step, Path(root), paths, options, data, ranks)
        except BaseException as exc:
            if ranks.writes_files:  # one failure.json: rank 0's (the others' tracebacks are in their logs)
                _failure(paths.dir, step, exc, ranks)
            raise
        finally:
            clear_checkpoint_request()


def _execute(step: Step, root: Path, paths: sf.StepPaths, options: Any, data: Any,
             ranks: Ranks) -> dict[str, Any]:
    import torch

    from models.stages import runners

    started, t0 = sf.now_iso(), time.perf_counter()
    torch.set_num_threads(options.threads)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    ctx = runners.Context(step=step, root=root, dir=paths.dir, options=options, data=data,
                          progress=_progress_writer(paths), writes_files=ranks.writes_files)
    result = sf.read_result(paths.dir)
    if result is not None:  # a done trunk asked for a new fraction
        runners.replay_trunk_fractions(ctx)
        result["checkpoint_fractions"] = sorted(set(result.get("checkpoint_fractions", []))
                                                | set(step.meta.get("checkpoint_fractions", [])))
        if ranks.writes_files:
            sf.write_result(paths.dir, result)
        return result
    out = runners.RUNNERS[step.kind](ctx)
    _check_finite(out)
    if not ranks.writes_files:
        return {}
    if out.metrics is not None:
        sf.write_table(paths.metrics, out.metrics, sf.METRICS_COLUMNS)
    if out.evals is not None:
        sf.write_table(paths.evals, out.evals, sf.EVALS_COLUMNS)
        if step.kind == "eval":
            from models.stages.tracking import log_evals

            log_evals(step, paths.dir, out.evals)  # its rows, as its tracker run's summary
    result = {"step_id": step.step_id, "kind": step.kind, "status": "done", "tokens": out.tokens,
              "flops": out.flops, "params": out.params,
              "wall_time_s": time.perf_counter() - t0, "peak_memory_bytes": _peak_memory(),
              "code_salt": CODE_SALT, "git_commit": _git_commit(), "started_at": started,
              "finished_at": sf.now_iso(), "hostname": socket.gethostname(), "device": _device_name(),
              "ranks": ranks.world}
    events = Counter(row[2] for row in out.metrics or () if row[2] in sf.EVENT_METRICS)
    result |= {name: events[name] for name in sf.EVENT_METRICS if events[name]}  # status shows them
    if out.metrics:
        result["data_wait_share"] = sf.data_wait_share(out.metrics)
    if step.kind == "trunk":
        result["checkpoint_fractions"] = sorted(float(f) for f in step.meta.get("checkpoint_fractions", ()))
    sf.write_result(paths.dir, result)
    paths.latest.unlink(missing_ok=True)  # it has served its purpose
    paths.failure.unlink(missing_ok=True)  # an earlier attempt's, now stale
    return result


def _check_finite(out: Any) -> None:
    """No NaN or inf is a result: non-finite evals fail the step as diverged (a training loss or
    gradient norm that is not finite never becomes a row: models.stages.guard stops it first)."""
    from models.stages.guard import Diverged

    for row in out.evals or ():
        if not math.isfinite(row["value"]):
            raise Diverged(f"eval task {row['task']!r} metric {row['metric']!r} is {row['value']}: "
                           "the evaluated model's numbers are not finite (did its training diverge?)")


def _progress_writer(paths: sf.StepPaths) -> Any:
    def write(tokens: int, total: int, tokens_per_s: float, data_wait_share: float | None = None) -> None:
        sf.write_json(paths.progress, {
            "tokens": tokens, "total_tokens": total,
            "tokens_per_s": None if math.isnan(tokens_per_s) else tokens_per_s,
            "data_wait_share": data_wait_share, "updated_at": sf.now_iso()})
    return write


def _peak_memory() -> int:
    import resource

    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def _device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    import platform
    return f"cpu ({platform.processor() or platform.machine()})"
