"""What a training stage does when its numbers go bad: a non-finite loss or gradient norm, and
loss spikes (docs/divergence.md).

A non-finite loss or gradient norm is found before the optimizer step, so it never reaches the
weights or the optimizer state (the ranks agree on it: a max over the world). The study's
allowance (`[train] on_nonfinite`, default none) decides what happens: skip the batch (no update,
the step counter and schedule move on), else rewind the weights and optimizer state to the step's
last checkpoint and carry on with the batches after the bad one (PaLM's recipe: the batches since
the checkpoint are not replayed), else end the step with `Diverged` (failure reason `diverged`).
Both are metrics rows at the step they happened, and so is a loss spike: a training loss above
`spike_factor` × the median of the `spike_window` losses before it (recorded, never acted on).
"""

from __future__ import annotations

import math
import statistics
import sys
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

from models.config import RunOptions
from models.stepfiles import REWIND_METRIC, SKIPPED_METRIC, SPIKE_METRIC

Row = tuple[int, int, str, float]


class Diverged(RuntimeError):
    """A step's numbers are not finite: its failure.json says where (reason `diverged`)."""

    def __init__(self, message: str, *, optimizer_step: int | None = None, loss: str = "",
                 grad_norm: str = "", last_finite_loss: float | None = None) -> None:
        super().__init__(message)
        self.optimizer_step, self.loss, self.grad_norm = optimizer_step, loss, grad_norm
        self.last_finite_loss = last_finite_loss


@dataclass(kw_only=True)
class Guard:
    """A stage's allowance for non-finite steps, its spike rule, and how to rewind."""

    skip_batches: int = 0  # batches a step may skip (no update) for a non-finite loss or norm
    rewinds: int = 0  # times a step may rewind its weights to its last checkpoint
    spike_factor: float = 2.0  # loss > factor × running median is a spike
    spike_window: int = 50  # losses the running median is taken over (a spike needs a full window)
    # Loads the step's furthest checkpoint into the module's weights and optimizer state and
    # returns its optimizer step, or None when there is none to load.
    restore: Callable[[], int | None] | None = None

    @classmethod
    def from_options(cls, options: RunOptions, restore: Callable[[], int | None] | None = None) -> "Guard":
        return cls(skip_batches=options.nonfinite_skip_batches, rewinds=options.nonfinite_rewinds,
                   spike_factor=options.spike_factor, spike_window=options.spike_window, restore=restore)


def nonfinite(loss: torch.Tensor, grad_norm: torch.Tensor, world: int, group: Any = None) -> bool:
    """Whether any rank's loss or gradient norm is NaN or infinite (one host read of one flag)."""
    bad = (~torch.isfinite(loss.detach()).all() | ~torch.isfinite(grad_norm.detach()).all())
    bad = bad.to(torch.int32).reshape(1)
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(bad, op=dist.ReduceOp.MAX, group=group)
    return bool(bad.item())


def number_text(value: float) -> str:
    """A value as failure.json keeps it: "nan", "inf", "-inf" or the number (JSON has no NaN)."""
    return repr(float(value)) if math.isfinite(value) else str(float(value))


def _short(text: str) -> str:
    """A number_text for a message: four significant digits."""
    return text if text in ("nan", "inf", "-inf") else f"{float(text):.4g}"


def last_loss(rows: Iterable[Row]) -> float | None:
    """The last training loss of a stage's rows (all finite: a non-finite one is never a row)."""
    values = [v for _, _, name, v in rows if name == "train_loss"]
    return values[-1] if values else None


def handle_nonfinite(module: Any, loss: torch.Tensor, grad_norm: torch.Tensor, data_state: Any) -> None:
    """Skip the batch, rewind, or raise Diverged: the optimizer step for this batch is not taken."""
    guard: Guard = module.guard
    rows = module.rows  # read back: the counts and the last finite loss are in them
    step = module.step_count + 1  # the optimizer step this batch was for
    done = Counter(name for _, _, name, _ in rows)
    loss_text, norm_text = number_text(float(loss.detach().float().mean())), number_text(float(grad_norm))
    said = f"(loss {_short(loss_text)}, gradient norm {_short(norm_text)})"
    event = None
    if done[SKIPPED_METRIC] < guard.skip_batches:
        event = (SKIPPED_METRIC, 1.0)
    elif done[REWIND_METRIC] < guard.rewinds and guard.restore is not None:
        to = guard.restore()
        event = None if to is None else (REWIND_METRIC, float(to))
    if event is not None:
        module.step_count, module.data_state = step, data_state
        rows.append((step, step * module.tokens_per_step, *event))
        what = "skipped the batch" if event[0] == SKIPPED_METRIC else f"rewound to step {int(event[1])}"
        print(f"vlmsweep: non-finite loss or gradient norm at optimizer step {step} {said}: {what}",
              file=sys.stderr, flush=True)
        return
    last = last_loss(rows)
    used = (f"; after {done[SKIPPED_METRIC]} skipped batch(es) and {done[REWIND_METRIC]} rewind(s)"
            if guard.skip_batches or guard.rewinds else "")
    no_ckpt = ("; no checkpoint to rewind to" if guard.rewinds and done[REWIND_METRIC] < guard.rewinds
               else "")
    last_text = "none" if last is None else f"{last:.4g}"
    raise Diverged(f"non-finite loss or gradient norm at optimizer step {step} {said}; last finite loss "
                   f"{last_text}{used}{no_ckpt}; lower the learning rate, or allow skipped batches or rewinds with "
                   "[train] on_nonfinite", optimizer_step=step, loss=loss_text, grad_norm=norm_text,
                   last_finite_loss=last)


def spike_window(rows: Iterable[Row], guard: Guard) -> deque:
    """The losses a spike is measured against, rebuilt from a stage's rows (on resume too)."""
    return deque((v for _, _, name, v in rows if name == "train_loss"), maxlen=guard.spike_window)


def spike_row(step: int, tokens: int, loss: float, window: deque, guard: Guard) -> Row | None:
    """The `loss_spike` row of a step whose loss is a spike against `window` (then appended)."""
    row = None
    if len(window) == window.maxlen and math.isfinite(loss):
        median = statistics.median(window)
        if median > 0 and loss > guard.spike_factor * median:
            row = (step, tokens, SPIKE_METRIC, loss / median)
    if math.isfinite(loss):
        window.append(loss)
    return row
