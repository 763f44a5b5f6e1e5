"""One step on several local processes: DDP over a workstation's GPUs ([backend] gpus_per_step), or
over gloo ranks on CPUs.

`LocalRanks(job, ranks)` wraps a step job. The process that calls it becomes global rank 0 and
spawns ranks 1 … k-1, each running the same pickled job, with the variables torchrun sets (RANK,
LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, NODE_RANK, MASTER_ADDR, MASTER_PORT), which
`models.distributed` and Lightning read: no launcher re-runs a command line. Every rank inherits
the worker's CUDA_VISIBLE_DEVICES and trains on GPU LOCAL_RANK of it. A helper rank dies with
rank 0's process; when rank 0's job raised, the helpers are ended at once.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import sys
import traceback
from typing import Any, Iterator

from models.distributed import LOCAL_VARIABLES
from models.spawn import bare_main
from sweep.launch.pool import die_with_parent

JOIN_S = 60.0  # how long finished ranks may take to exit before they are killed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_variables(rank: int, world: int, port: int) -> dict[str, str]:
    """torchrun's variables for local rank `rank` of `world` on this one node."""
    values = (rank, rank, world, world, 0, "127.0.0.1", port)
    return {name: str(value) for name, value in zip(LOCAL_VARIABLES, values)}


@contextlib.contextmanager
def _variables(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _helper(job: Any, rank: int, world: int, port: int) -> None:
    """Rank `rank` (> 0): run the job; exit 0 when it returned or stopped for a checkpoint."""
    os.environ.update(rank_variables(rank, world, port))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides on Ctrl-C
    die_with_parent()
    try:
        job()
    except BaseException as error:  # noqa: BLE001 - reported through the exit status
        if isinstance(error, Exception) and _is_preempted(job, error):
            sys.exit(0)
        traceback.print_exc()
        sys.exit(1)


def _is_preempted(job: Any, error: BaseException) -> bool:
    try:
        return bool(job.is_preempted(error))
    except Exception:  # noqa: BLE001
        return False


class LocalRanks:
    """A step job run by `ranks` local processes, this one global rank 0 (picklable)."""

    def __init__(self, job: Any, ranks: int):
        self.job, self.ranks = job, ranks

    @property
    def step(self) -> Any:
        return self.job.step

    def is_preempted(self, error: BaseException) -> bool:
        return _is_preempted(self.job, error)

    def __call__(self) -> Any:
        port, ctx = free_port(), multiprocessing.get_context("spawn")
        helpers = [ctx.Process(target=_helper, args=(self.job, r, self.ranks, port),
                               name=f"vlmsweep-rank{r}") for r in range(1, self.ranks)]
        ok = False
        with _variables(rank_variables(0, self.ranks, port)):
            with bare_main():
                for p in helpers:
                    p.start()
            try:
                out = self.job()
                ok = True
                return out
            except BaseException as error:
                ok = isinstance(error, Exception) and self.is_preempted(error)
                raise
            finally:
                _end(helpers, wait_s=JOIN_S if ok else 0.0)


def _end(helpers: list[Any], wait_s: float) -> None:
    for p in helpers:
        p.join(timeout=wait_s)
        if p.is_alive():
            p.kill()
            p.join(timeout=5)
