"""`Checkpointer`: the Lightning callback that saves a stage's fraction checkpoints, its periodic
and requested (preemption) checkpoints, and reports progress.

Global rank 0 alone writes. A stop request (SIGUSR2 before a time limit, SIGTERM) reaches ranks
at different optimizer steps, so after every step the ranks agree on it (a max over a CPU group:
no GPU sync); then all stop after the same step, rank 0 saves, and a barrier holds the others
until the checkpoint is on disk.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch

from models import checkpoint as ck
from models.config import RunOptions
from models.stages.module import StageModule
from models.stages.sharding import weights_state


class _Vote:
    """Flags every rank agrees on once per step (any rank's True wins), over a CPU (gloo) group."""

    def __init__(self, world: int) -> None:
        self.group: Any = None
        if world > 1:
            import torch.distributed as dist

            # On CPU the default group is gloo already; NCCL gets a gloo sibling (a collective
            # call every rank makes, here at train start).
            if dist.get_backend() != "gloo":
                self.group = dist.new_group(backend="gloo")
        self.world = world

    def __call__(self, *mine: bool) -> list[bool]:
        if self.world == 1:
            return list(mine)
        import torch.distributed as dist

        flags = torch.tensor([int(m) for m in mine], dtype=torch.int32)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self.group)
        return [bool(f) for f in flags.tolist()]

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier(group=self.group)


@dataclass(kw_only=True)
class Checkpointer(L.Callback):
    """Saves fraction checkpoints, periodic and requested (preemption) ones, and progress.json."""

    latest: Path  # the periodic / preemption checkpoint
    total_steps: int
    fraction_paths: dict[int, list[Path]] = field(default_factory=dict)  # step → checkpoints
    options: RunOptions = field(default_factory=RunOptions)
    progress: Callable[[int, float], None] | None = None  # (tokens done, tokens/s)
    stop_at: int | None = None  # end the fit after this step (a trunk replaying one checkpoint)
    _last_save: float = field(default_factory=time.monotonic)
    _last_progress: float = 0.0
    _vote: _Vote | None = None

    def _save(self, module: StageModule, paths: list[Path]) -> None:
        # Under FSDP gathering the state is a collective every rank takes part in.
        state = module.full_state() if module.global_rank == 0 or module.sharded else None
        if module.global_rank == 0:
            for path in paths:
                ck.save_torch(path, state)
        self._last_save = time.monotonic()

    def save_latest(self, module: StageModule) -> None:
        self._save(module, [self.latest])

    def on_train_start(self, trainer: L.Trainer, module: StageModule) -> None:
        self._vote = _Vote(trainer.world_size)
        if threading.current_thread() is threading.main_thread():
            # Lightning registered its SIGTERM handler at fit start; it broadcasts from inside the
            # handler under DDP. SIGTERM asks for a checkpoint, as models.run set it up to.
            signal.signal(signal.SIGTERM, lambda *_: ck.request_checkpoint())
        self._save_fractions(module)

    def on_train_end(self, trainer: L.Trainer, module: StageModule) -> None:
        if module.sharded:  # the shards are gathered while the ranks' group still exists
            module.final_weights = weights_state(trainer.strategy, module.model)

    def _save_fractions(self, module: StageModule) -> None:
        todo = [p for p in self.fraction_paths.get(module.step_count, []) if not p.exists()]
        if todo:
            self._save(module, todo)

    def on_train_batch_end(self, trainer: L.Trainer, module: StageModule, *args: Any) -> None:
        self._save_fractions(module)
        opts, now = self.options, time.monotonic()
        assert self._vote is not None
        # Ranks' clocks and signals differ: they agree on both, so all save (FSDP) or stop together.
        stop, due = self._vote(ck.checkpoint_requested(), now - self._last_save >= opts.checkpoint_every_s)
        if stop:
            self._save(module, [self.latest])
            self._vote.barrier()  # no rank leaves before rank 0 has saved
            raise ck.Preempted(f"checkpointed at step {module.step_count} on request")
        periodic = due or (opts.checkpoint_every_steps and module.step_count % opts.checkpoint_every_steps == 0)
        if periodic and module.step_count < self.total_steps:
            self._save(module, [self.latest])
        if self.progress and module.global_rank == 0 and now - self._last_progress >= opts.progress_every_s:
            self._last_progress = now
            self.progress(module.step_count * module.tokens_per_step, module.last_tokens_per_s,
                          module.take_data_wait_share())
        # A skipped batch (models.stages.guard) moves the step counter without an optimizer step,
        # so Lightning's max_steps may not end the fit at the last step: this does.
        if module.step_count >= (self.total_steps if self.stop_at is None else min(self.stop_at, self.total_steps)):
            trainer.should_stop = True
