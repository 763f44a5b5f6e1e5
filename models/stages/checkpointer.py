"""`Checkpointer`: the Lightning callback that saves a stage's fraction checkpoints, its periodic
and requested (preemption) checkpoints, and reports progress.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import lightning as L

from models import checkpoint as ck
from models.config import RunOptions
from models.stages.module import StageModule


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

    def _save(self, module: StageModule, paths: list[Path]) -> None:
        if module.global_rank == 0:
            state = module.full_state()
            for path in paths:
                ck.save_torch(path, state)
        self._last_save = time.monotonic()

    def on_train_start(self, trainer: L.Trainer, module: StageModule) -> None:
        self._save_fractions(module)

    def _save_fractions(self, module: StageModule) -> None:
        todo = [p for p in self.fraction_paths.get(module.step_count, []) if not p.exists()]
        if todo:
            self._save(module, todo)

    def on_train_batch_end(self, trainer: L.Trainer, module: StageModule, *args: Any) -> None:
        self._save_fractions(module)
        opts, now = self.options, time.monotonic()
        if ck.checkpoint_requested():
            self._save(module, [self.latest])
            raise ck.Preempted(f"checkpointed at step {module.step_count} on request")
        periodic = ((opts.checkpoint_every_steps and module.step_count % opts.checkpoint_every_steps == 0)
                    or now - self._last_save >= opts.checkpoint_every_s)
        if periodic and module.step_count < self.total_steps:
            self._save(module, [self.latest])
        if self.progress and module.global_rank == 0 and now - self._last_progress >= opts.progress_every_s:
            self._last_progress = now
            self.progress(module.step_count * module.tokens_per_step, module.last_tokens_per_s)
        if self.stop_at is not None and module.step_count >= self.stop_at:
            trainer.should_stop = True
