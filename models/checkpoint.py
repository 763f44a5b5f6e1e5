"""Durable step files: atomic writes (temp name + rename), full resumable checkpoints, RNG state,
the metrics/evals parquet tables, and the preemption flag that signal handlers raise.

A checkpoint holds everything a run needs to continue bit-exactly: weights, optimizer state, the
optimizer step, the data stream's position, every RNG state, and the metrics rows logged so far.
"""

from __future__ import annotations

import json
import os
import random
import threading
from pathlib import Path
from typing import Any, Iterable

# Column names and Arrow types of the two tables (pyarrow is imported only when writing).
METRICS_COLUMNS = (("step", "int64"), ("tokens", "int64"), ("name", "string"), ("value", "float64"))
EVALS_COLUMNS = (("task", "string"), ("group", "string"), ("metric", "string"),
                 ("value", "float64"), ("chance", "float64"), ("n", "int64"), ("primary_metric", "bool_"))

_checkpoint_requested = threading.Event()


class Preempted(RuntimeError):
    """Raised after a requested checkpoint is saved: the step stops and resumes when run again."""


def request_checkpoint() -> None:
    """Ask the running training loop to checkpoint at the next optimizer step and stop (signal-safe)."""
    _checkpoint_requested.set()


def checkpoint_requested() -> bool:
    return _checkpoint_requested.is_set()


def clear_checkpoint_request() -> None:
    _checkpoint_requested.clear()


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp.{os.getpid()}")


def _commit(tmp: Path, path: Path) -> None:
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())  # the rename must never publish a file whose bytes are not on disk
    os.replace(tmp, path)


def write_json(path: Path, value: Any) -> None:
    tmp = _tmp_name(path)
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True, default=str))
    _commit(tmp, path)


def write_table(path: Path, rows: Iterable[dict[str, Any]],
                columns: tuple[tuple[str, str], ...]) -> None:
    """Rows (dicts or tuples in column order) as a parquet file with exactly these columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in columns])
    rows = [r if isinstance(r, dict) else dict(zip(schema.names, r)) for r in rows]
    table = pa.Table.from_pylist(rows, schema=schema)
    tmp = _tmp_name(path)
    pq.write_table(table, tmp)
    _commit(tmp, path)


def save_torch(path: Path, payload: dict[str, Any]) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    torch.save(payload, tmp)
    _commit(tmp, path)


def load_torch(path: Path) -> dict[str, Any]:
    import torch

    try:
        # weights_only stays off: the payload holds our own JSON-able data state and RNG bytes.
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(f"checkpoint {path} is unreadable: {exc}") from exc


def rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
