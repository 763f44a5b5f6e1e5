"""Full resumable checkpoints (written through the one atomic writer, `models.stepfiles`), RNG
state, and the preemption flag that signal handlers raise.

A checkpoint holds everything a run needs to continue bit-exactly: weights, optimizer state, the
optimizer step, the data stream's position, every RNG state, and the metrics rows logged so far.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

from models.stepfiles import atomic_path

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


def save_torch(path: Path, payload: dict[str, Any]) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


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
