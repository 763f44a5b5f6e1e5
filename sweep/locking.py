"""An exclusive, process-wide lock on an output root, so two `vlmsweep run`s never submit a step twice.

It is an `fcntl.flock` on `<root>/launch/run.lock`: the kernel releases it when the holder exits,
even on SIGKILL, so a crashed run never leaves a stale lock. The holder's pid is written inside
for the message a waiting run prints at once: that it waits, and for which process.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from sweep.errors import UserError


class LockBusy(UserError):
    """Another process holds the root's run lock for longer than we were willing to wait."""


@contextmanager
def root_lock(root: str | Path, *, wait_s: float = 30.0, poll_s: float = 0.1,
              say: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold `<root>/launch/run.lock` for the body; wait up to `wait_s` for another holder, saying at
    once (on stderr, or through `say`) that it waits, and for which process."""
    path = Path(root) / "launch" / "run.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = describe_holder(path)
                if time.monotonic() >= deadline:
                    raise LockBusy(f"{path}: another `vlmsweep run` ({holder}) is using this "
                                   f"root; wait for it to finish or use another --root") from None
                if not told:
                    (say or _to_stderr)(f"vlmsweep: waiting up to {wait_s:.0f} s for {holder}, which "
                                        f"holds the run lock {path}")
                    told = True
                time.sleep(poll_s)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def describe_holder(path: Path) -> str:
    """"pid 123 (vlmsweep run studies/x.toml)": who holds the lock, as far as /proc tells."""
    pid = path.read_text().strip() if path.exists() else ""
    if not pid.isdigit():
        return "a process that has not written its pid yet"
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        command = " ".join(a.decode(errors="replace") for a in argv if a)
    except OSError:
        return f"pid {pid}"
    return f"pid {pid} ({command[:200]})" if command else f"pid {pid}"


def _to_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
