"""An exclusive, process-wide lock on an output root, so two `vlmsweep run`s never submit a step twice.

It is an `fcntl.flock` on `<root>/launch/run.lock`: the kernel releases it when the holder exits,
even on SIGKILL, so a crashed run never leaves a stale lock. The holder's pid is written inside
for the message a waiting run prints.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sweep.errors import UserError


class LockBusy(UserError):
    """Another process holds the root's run lock for longer than we were willing to wait."""


@contextmanager
def root_lock(root: str | Path, *, wait_s: float = 30.0, poll_s: float = 0.1) -> Iterator[Path]:
    """Hold `<root>/launch/run.lock` for the body; wait up to `wait_s` for another holder."""
    path = Path(root) / "launch" / "run.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = path.read_text().strip() or "unknown"
                    raise LockBusy(f"{path}: another `vlmsweep run` (pid {holder}) is using this "
                                   f"root; wait for it to finish or use another --root") from None
                time.sleep(poll_s)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the flock
