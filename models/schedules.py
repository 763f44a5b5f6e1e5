"""Learning-rate schedules for every stage, as pure functions of the optimizer step (no torch).

One shape covers them all: linear warmup to `peak_lr`, then cosine to `floor_lr` at `total_steps`
(or constant). Trunk: warmup + cosine over T. Branch `continue`: no warmup, cosine from the trunk's
LR at f·T (its peak if the trunk was still warming up) to the floor over the image stage; `rewarm`:
fresh warmup (capped at 10% of the stage) to the peak, then cosine. Finetune: short warmup (3% of
the steps, at least one) to a constant LR — LLaVA-style fine-tuning of a small model on few epochs
gains nothing from decay, and a constant LR keeps epochs comparable across E.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from models.config import TrainDefaults


@dataclass(frozen=True, kw_only=True, slots=True)
class Schedule:
    peak_lr: float  # LR at the end of warmup (continue: where the cosine starts)
    floor_lr: float  # LR at total_steps (the cosine's end)
    warmup_steps: int  # linear warmup from peak/warmup to peak
    total_steps: int  # optimizer steps in the stage
    constant: bool = False  # hold peak_lr after warmup instead of decaying

    def __post_init__(self) -> None:
        if self.total_steps < 0 or self.warmup_steps < 0:
            raise ValueError("schedule steps must be >= 0")

    def lr_at(self, step: int) -> float:
        """LR for 0-based optimizer step `step`; steps at or past total_steps get the floor."""
        if step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        if self.constant:
            return self.peak_lr
        span = self.total_steps - self.warmup_steps
        progress = 1.0 if span <= 0 else min(1.0, (step - self.warmup_steps) / span)
        return self.floor_lr + (self.peak_lr - self.floor_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def steps_for(tokens: int, batch_size: int, seq_len: int) -> int:
    """Optimizer steps that cover `tokens`: ceil(tokens / (batch_size · seq_len))."""
    return -(-tokens // (batch_size * seq_len))


def trunk_schedule(train: TrainDefaults, total_steps: int) -> Schedule:
    return Schedule(peak_lr=train.lr, floor_lr=train.floor_lr,
                    warmup_steps=min(train.warmup_steps, total_steps), total_steps=total_steps)


def branch_schedule(policy: str, train: TrainDefaults, stage_steps: int,
                    trunk: Schedule | None = None, trunk_step: int = 0) -> Schedule:
    """The image stage's schedule; `continue` needs the trunk's schedule and the step it left at."""
    floor = train.floor_lr
    if policy == "rewarm":
        warmup = min(train.warmup_steps, int(0.1 * stage_steps))
        return Schedule(peak_lr=train.lr, floor_lr=floor, warmup_steps=warmup, total_steps=stage_steps)
    if policy == "continue":
        if trunk is None:
            raise ValueError("schedule policy 'continue' needs the trunk's schedule")
        start = trunk.peak_lr if trunk_step < trunk.warmup_steps else trunk.lr_at(trunk_step)
        # At f = 1 the trunk sits at its floor: the branch stays there rather than rising to ours.
        return Schedule(peak_lr=start, floor_lr=min(floor, start), warmup_steps=0,
                        total_steps=stage_steps)
    raise ValueError(f"unknown schedule policy {policy!r} (expected continue or rewarm)")


def finetune_schedule(lr: float, total_steps: int) -> Schedule:
    """LLaVA-1.5's fine-tune schedule: 3% linear warmup, then cosine to zero."""
    warmup = min(total_steps, max(1, math.ceil(0.03 * total_steps)))
    return Schedule(peak_lr=lr, floor_lr=0.0, warmup_steps=warmup, total_steps=total_steps)
