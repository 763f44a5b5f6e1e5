"""The step entry point the launch backends call: `run_step(step, root)`.

It writes config.json first, progress.json while training, then metrics.parquet, evals.parquet
and result.json last (each to a temp name, then renamed); on an exception failure.json, then it
re-raises. Re-running a step resumes from its last checkpoint; a done step returns at once (a
trunk asked for a checkpoint fraction it lacks replays just that part). torch is imported lazily
so that the planner can import the path helpers here in milliseconds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import socket
import subprocess
import threading
import time
import traceback
import types
import typing
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models import steps as steps_mod
from models.checkpoint import (
    EVALS_COLUMNS,
    METRICS_COLUMNS,
    Preempted,
    clear_checkpoint_request,
    request_checkpoint,
    write_json,
    write_table,
)
from models.steps import CODE_SALT, Step, step_dir

if TYPE_CHECKING:
    from models.stages.base import RunOptions

__all__ = ["run_step", "request_checkpoint", "Preempted", "trunk_checkpoint_path", "step_done",
           "missing_fractions",
           "fraction_step", "load_step_config", "RunOptions"]


def trunk_checkpoint_path(root: str | Path, trunk_id: str, fraction: float) -> Path:
    """Where a trunk keeps its full resumable checkpoint at intro fraction `fraction`."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"checkpoint fraction {fraction} is outside [0, 1]")
    return step_dir(root, "trunk", trunk_id) / "ckpt" / f"frac-{fraction:.4f}.pt"


def fraction_step(fraction: float, tokens: int, batch_size: int, seq_len: int) -> int:
    """The optimizer step at which a trunk's token count reaches f·T, rounded down (f=1: the end)."""
    total = -(-tokens // (batch_size * seq_len))
    if fraction >= 1.0:
        return total
    # The epsilon keeps 0.6·T/(B·L) = 59.999999… from rounding down a whole step.
    return min(total, math.floor(fraction * tokens / (batch_size * seq_len) + 1e-9))


def weights_path(root: str | Path, kind: str, step_id: str) -> Path:
    """A finished step's final weights (model state dict), read by its children and evals."""
    return step_dir(root, kind, step_id) / "model.pt"


def latest_checkpoint_path(root: str | Path, kind: str, step_id: str) -> Path:
    return step_dir(root, kind, step_id) / "ckpt" / "latest.pt"


def _decode(tp: Any, value: Any) -> Any:
    """JSON value → the typed config value (dataclasses, optional dataclasses, tuples)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
        origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        hints = typing.get_type_hints(tp)
        return tp(**{k: _decode(hints[k], v) for k, v in value.items() if k in hints})
    if origin is tuple or (isinstance(value, list) and origin is None and tp is not list):
        return tuple(_decode(Any, v) if not isinstance(v, list) else _decode(tuple, v) for v in value)
    return value


def load_step_config(root: str | Path, kind: str, step_id: str) -> tuple[Any, list[tuple[str, str]]]:
    """A parent step's config (typed) and parents, from its config.json."""
    file = step_dir(root, kind, step_id) / "config.json"
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"{file}: cannot read the {kind} step's config ({exc}); "
                                f"run the {kind} step first") from exc
    config = _decode(steps_mod.CONFIG_TYPES[kind], data["config"])
    return config, [tuple(p) for p in data.get("parents", [])]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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


def _failure(directory: Path, step: Step, exc: BaseException) -> None:
    import torch

    reason = ("preempted" if isinstance(exc, Preempted)
              else "oom" if isinstance(exc, (torch.OutOfMemoryError, MemoryError)) else "exception")
    write_json(directory / "failure.json", {
        "step_id": step.step_id, "kind": step.kind, "status": "failed", "reason": reason,
        "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:500],
        "traceback": traceback.format_exc(), "finished_at": _now()})


def run_step(step: Step, root: str | Path, options: "RunOptions | None" = None,
             data: Any = None) -> dict[str, Any]:
    """Run (or resume, or skip if done) one step; returns its result.json content.

    `data` is the data provider (default: the `models.data` package); tests pass `models.synthetic`.
    """
    from models.stages.base import RunOptions as _RunOptions

    # How the step runs: the caller's options, else the study's (`meta["run"]`, see sweep.plan).
    options = options or _RunOptions(**step.meta.get("run", {}))
    directory = step_dir(root, step.kind, step.step_id)
    directory.mkdir(parents=True, exist_ok=True)
    if data is None:
        import models.data as data
    done = directory / "result.json"
    if done.exists() and not (step.kind == "trunk" and missing_fractions(step, root)):
        return json.loads(done.read_text())
    write_json(directory / "config.json", step.to_json())
    clear_checkpoint_request()
    with _Signals():
        try:
            return _execute(step, Path(root), directory, options, data)
        except BaseException as exc:
            _failure(directory, step, exc)
            raise
        finally:
            clear_checkpoint_request()


def missing_fractions(step: Step, root: str | Path) -> list[float]:
    """Checkpoint fractions a trunk is asked for (meta) that it has not saved under `root`."""
    if step.kind != "trunk":
        return []
    return [f for f in step.meta.get("checkpoint_fractions", ())
            if not trunk_checkpoint_path(root, step.step_id, float(f)).exists()]


def step_done(step: Step, root: str | Path) -> bool:
    """Done = result.json exists, and for a trunk every checkpoint its branches need exists.

    A finished trunk asked for one more checkpoint (a finer lattice for adaptive search) is not
    done: running it again replays just that part (bit-identical) and leaves the rest as it was.
    """
    return ((step_dir(root, step.kind, step.step_id) / "result.json").exists()
            and not missing_fractions(step, root))


def _execute(step: Step, root: Path, directory: Path, options: Any, data: Any) -> dict[str, Any]:
    import torch

    from models.stages import runners

    started, t0 = _now(), time.perf_counter()
    torch.set_num_threads(options.threads)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    ctx = runners.Context(step=step, root=root, dir=directory, options=options, data=data,
                          progress=_progress_writer(directory))
    if (directory / "result.json").exists():  # a done trunk asked for a new fraction
        runners.replay_trunk_fractions(ctx)
        result = json.loads((directory / "result.json").read_text())
        result["checkpoint_fractions"] = sorted(set(result.get("checkpoint_fractions", []))
                                                | set(step.meta.get("checkpoint_fractions", [])))
        write_json(directory / "result.json", result)
        return result
    out = runners.RUNNERS[step.kind](ctx)
    if out.metrics is not None:
        write_table(directory / "metrics.parquet", out.metrics, METRICS_COLUMNS)
    if out.evals is not None:
        write_table(directory / "evals.parquet", out.evals, EVALS_COLUMNS)
    result = {"step_id": step.step_id, "kind": step.kind, "status": "done", "tokens": out.tokens,
              "flops": out.flops, "params": out.params,
              "wall_time_s": time.perf_counter() - t0, "peak_memory_bytes": _peak_memory(),
              "code_salt": CODE_SALT, "git_commit": _git_commit(), "started_at": started,
              "finished_at": _now(), "hostname": socket.gethostname(), "device": _device_name()}
    if step.kind == "trunk":
        result["checkpoint_fractions"] = sorted(float(f) for f in step.meta.get("checkpoint_fractions", ()))
    write_json(directory / "result.json", result)
    (directory / "ckpt" / "latest.pt").unlink(missing_ok=True)  # it has served its purpose
    (directory / "failure.json").unlink(missing_ok=True)  # an earlier attempt's, now stale
    return result


def _progress_writer(directory: Path) -> Any:
    def write(tokens: int, total: int, tokens_per_s: float) -> None:
        write_json(directory / "progress.json", {
            "tokens": tokens, "total_tokens": total,
            "tokens_per_s": None if math.isnan(tokens_per_s) else tokens_per_s,
            "updated_at": _now()})
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


def __getattr__(name: str) -> Any:
    if name == "RunOptions":  # lazily, so `import models.run` stays torch-free
        from models.stages.base import RunOptions
        return RunOptions
    raise AttributeError(name)
