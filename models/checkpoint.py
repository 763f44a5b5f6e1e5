"""Full resumable checkpoints (written through the one atomic writer, `models.stepfiles`), RNG
state, and the preemption flag that signal handlers raise.

A checkpoint holds everything a run needs to continue bit-exactly: weights, optimizer state, the
optimizer step, the data stream's position, every RNG state, and the metrics rows logged so far,
all as tensors and plain data, so that every file is loaded with `weights_only=True`.
"""

from __future__ import annotations

import contextlib
import importlib
import random
import threading
from pathlib import Path
from typing import Any

from models.stepfiles import StorageError, atomic_path, disk_error

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


class CheckpointError(ValueError):
    """A checkpoint or weights file cannot be used: truncated, unreadable, or holding more than
    tensors and plain data (refused unread). The message is one line naming the file."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = Path(path)
        super().__init__(f"{path}: {problem}")


def save_torch(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` (tensors and plain data only: what `load_torch` accepts) atomically.

    A write the file system refuses (disk full, read-only, no permission) raises
    `stepfiles.StorageError` naming the file; torch's own writer reports it as a RuntimeError
    without the errno, so the file is written through a Python handle that keeps it.
    """
    import torch

    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            torch.save(payload, fh)
    except (OSError, RuntimeError) as exc:
        error = _os_error(exc)
        if error is None or not disk_error(error):
            raise
        raise StorageError(error.errno, path) from exc


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind `exc` (torch wraps a failed write of its handle in a RuntimeError)."""
    while exc is not None and not isinstance(exc, OSError):
        exc = exc.__cause__ or exc.__context__
    return exc


def load_torch(path: Path) -> dict[str, Any]:
    """A checkpoint or weights file, loaded with `weights_only=True`: tensors and plain data only.

    A file holding anything else (a pickled object whose `__reduce__` runs a command, say) is
    refused before any of it runs: a shared results root must not run code in later runs.
    """
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals(_legacy_rng_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(path, f"refused: it holds Python objects, not only tensors and plain "
                              f"data ({_what_was_refused(exc)}); vlmsweep did not write it as it is") from None
    except Exception as exc:  # truncated zip, bad magic, I/O errors: torch raises several types
        raise CheckpointError(path, f"unreadable checkpoint ({type(exc).__name__}: "
                              f"{_first_line(exc)})") from None


def _what_was_refused(exc: BaseException) -> str:
    """The line of torch's long weights-only message that names the refused global."""
    lines = [line.strip() for line in str(exc).splitlines()]
    return next((line.rstrip(".") for line in lines if "GLOBAL" in line or "global" in line.split()),
                _first_line(exc))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0].split(". ")[0][:200]


def _legacy_rng_globals() -> list[Any]:
    """What a checkpoint written before RNG state became tensors needs: numpy's RNG state was a
    uint32 array. These rebuild arrays of plain numbers only; nothing else is allowed."""
    import numpy as np

    found = [np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        with contextlib.suppress(ImportError, AttributeError):
            found.append(importlib.import_module(module)._reconstruct)
            break
    return found


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain numbers (loadable with weights_only=True)."""
    import numpy as np
    import torch

    version, internal, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {"python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64),
                        "gauss": gauss},
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    py, npy = state["python"], state["numpy"]
    if isinstance(py, dict):
        random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
        np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"],
                             npy["has_gauss"], npy["cached_gaussian"]))
    else:  # written before RNG state became tensors: the tuples the getters return
        random.setstate(py)
        np.random.set_state(npy)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
