"""Progress of a foreground run: steps done / total, the running steps' tokens/s, and an ETA.

Each running step writes `<step_dir>/progress.json` ({"tokens", "total_tokens", "tokens_per_s",
"updated_at"}) every ~2 s; the inline and local backends call `ProgressLine.show` as they poll and
it prints one line (redrawn in place on a terminal, at most every `interval_s` otherwise).

The ETA prices each waiting step by its planned training FLOPs at the seconds per FLOP that finished
steps of its kind and scale took (else the LM steps of its scale, else its kind, else any LM step:
a small model trains fewer FLOPs per second than a larger one); evals at the mean time of finished
evals, and as free until one has finished. A mean over all finished steps priced the demo's thirty
2-second evals like its 130-second trunks: half-way it said 8 minutes were left with 4 to go.

Given `expected` seconds per step (measured on this machine before the run, `sweep.estimate`), the
ETA is known from the start: each step costs its expected seconds, scaled by how long the finished
steps of its kind took against theirs, and the rest of the DAG is scheduled over the workers
(`sweep.estimate.project`), so the last chain's idle workers are counted too.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, TextIO

from models import stepfiles as sf
from models.steps import Step
from sweep.estimate import project
from sweep.plan import step_cost


def read_progress(root: str | Path, step: Step) -> dict[str, Any] | None:
    return sf.read_json_or_none(sf.paths_of(root, step).progress)


def _human(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def step_remaining_s(progress: dict[str, Any] | None) -> float | None:
    if not progress:
        return None
    try:
        left = float(progress["total_tokens"]) - float(progress["tokens"])
        rate = float(progress["tokens_per_s"])
    except (KeyError, TypeError, ValueError):
        return None
    return max(left, 0.0) / rate if rate > 0 else None


def expected_step_s(step: Step, finished: list[tuple[Step, float]]) -> float | None:
    """Seconds `step` should take, judged by the finished (step, seconds); None if it cannot be
    priced yet. Encoders train another model (a ViT and a caption tower) than the LM steps do, so
    each is priced only by its own kind of model."""
    flops, scale = _flops(step), step.meta.get("scale")
    same_model = lambda s: (s.kind == "encoder") == (step.kind == "encoder")
    kind_groups = [[(s, t) for s, t in finished if s.kind == step.kind and s.meta.get("scale") == scale],
                   [(s, t) for s, t in finished if s.kind == step.kind]]
    if not flops:  # an eval, or training of unknown size: the mean of finished steps of its kind
        group = next((g for g in kind_groups if g), None)
        if group:
            return sum(t for _, t in group) / len(group)
        return 0.0 if flops == 0 else None  # evals are cheap next to training until one is timed
    model_groups = [[(s, t) for s, t in finished if same_model(s) and s.meta.get("scale") == scale],
                    [(s, t) for s, t in finished if same_model(s)]]
    for group in (kind_groups[0], model_groups[0], kind_groups[1], model_groups[1]):
        priced = [(_flops(s), t) for s, t in group if _flops(s)]
        if priced:
            return flops * sum(t for _, t in priced) / sum(f for f, _ in priced)
    return None


_FLOPS: dict[str, int | None] = {}


def _flops(step: Step) -> int | None:
    """Planned training FLOPs: 0 for evals, None where unknown; computed once per step."""
    if step.step_id not in _FLOPS:
        _FLOPS[step.step_id] = step_cost(step).flops
    return _FLOPS[step.step_id]


def estimate_eta(running: list[tuple[Step, dict[str, Any] | None]], waiting: list[Step],
                 finished: list[tuple[Step, float]], workers: int,
                 expected: Mapping[str, float] | None = None) -> float | None:
    """Seconds left: the slowest running step, plus the waiting steps' expected time spread over the
    workers (with `expected`: the DAG scheduled over the workers); None while some step cannot be
    priced yet."""
    if expected:
        return _scheduled_eta(running, waiting, finished, workers, expected)
    head = 0.0
    for step, progress in running:
        left = step_remaining_s(progress)
        if left is None:
            left = expected_step_s(step, finished)
        if left is None:
            return None
        head = max(head, left)
    rest = [expected_step_s(s, finished) for s in waiting]
    if any(r is None for r in rest):
        return None
    return head + sum(rest) / max(workers, 1)


def _scheduled_eta(running: list[tuple[Step, dict[str, Any] | None]], waiting: list[Step],
                   finished: list[tuple[Step, float]], workers: int, expected: Mapping[str, float]) -> float | None:
    """The ETA from measured expectations, corrected by how the finished steps compare with theirs."""
    def ratio(kind: str | None) -> float:
        pairs = [(t, expected[s.step_id]) for s, t in finished if s.step_id in expected
                 and (kind is None or s.kind == kind) and expected[s.step_id] > 0]
        return sum(t for t, _ in pairs) / sum(e for _, e in pairs) if pairs else 1.0

    def seconds(step: Step) -> float | None:
        if step.step_id in expected:
            kind = step.kind if any(s.kind == step.kind and s.step_id in expected for s, _ in finished) else None
            return expected[step.step_id] * ratio(kind)
        return expected_step_s(step, finished)

    busy = {}
    for step, progress in running:
        left = step_remaining_s(progress)
        busy[step.step_id] = left if left is not None else seconds(step)
    rest = {s.step_id: seconds(s) for s in waiting}
    if any(v is None for v in [*busy.values(), *rest.values()]):
        return None
    return project(waiting, rest, workers, busy)


@dataclass(kw_only=True, slots=True)
class ProgressLine:
    root: Path
    total: int
    workers: int = 1
    # looked up when the line is made, not when this module was imported (tests swap sys.stderr)
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    interval_s: float = 10.0  # between lines when the stream is not a terminal
    started: float = 0.0
    expected: dict[str, float] = field(default_factory=dict)  # step id → seconds measured up front
    _last: float = 0.0

    def render(self, failed: int, running: list[Step], finished: list[tuple[Step, float]],
               waiting: list[Step]) -> str:
        progress = [read_progress(self.root, s) for s in running]
        parts = [f"[{len(finished)}/{self.total} done" + (f", {failed} failed" if failed else "") + "]"]
        for step, p in zip(running, progress):
            if p and p.get("total_tokens"):
                share = 100.0 * float(p.get("tokens", 0)) / float(p["total_tokens"])
                parts.append(f"{step.kind} {step.step_id} {share:.0f}% "
                             f"{_human(float(p.get('tokens_per_s', 0)))} tok/s")
            else:
                parts.append(f"{step.kind} {step.step_id} starting")
        eta = estimate_eta(list(zip(running, progress)), waiting, finished, self.workers, self.expected)
        parts.append(f"ETA {_clock(eta)}" if eta is not None else "ETA ?")
        return " | ".join(parts)

    def show(self, failed: int, running: list[Step], finished: list[tuple[Step, float]],
             waiting: list[Step], *, final: bool = False) -> None:
        """One line; `finished` holds (step, seconds) of the steps done in this run, `waiting` those
        still to start (a step blocked by a failure leaves it)."""
        now = time.monotonic()
        tty = self.stream.isatty()
        if not final and now - self._last < (1.0 if tty else self.interval_s):
            return
        self._last = now
        line = self.render(failed, running, finished, waiting)
        end = "\n" if final or not tty else ""
        self.stream.write(("\r\033[K" if tty else "") + line + end)
        self.stream.flush()

    def note(self, text: str) -> None:
        """A line of its own (a failed step) above the progress line, which is redrawn after it."""
        self.stream.write(("\r\033[K" if self.stream.isatty() else "") + text + "\n")
        self.stream.flush()
        self._last = 0.0


def failure_line(root: str | Path, step: Step, log: str = "") -> str:
    """One line on a failed step: its failure.json summary and where its log is."""
    failure = sf.failure_or_none(sf.paths_of(root, step).dir)
    what = failure.summary if failure is not None else "ended without a result"
    return f"failed: {step.kind} {step.step_id}: {what}" + (f"  (log: {log})" if log else "")
