"""Progress of a foreground run: steps done / total, the running steps' tokens/s, and an ETA.

Each running step writes `<step_dir>/progress.json` ({"tokens", "total_tokens", "tokens_per_s",
"updated_at"}) every ~2 s; the inline and local backends call `ProgressLine.show` as they poll and
it prints one line (redrawn in place on a terminal, at most every `interval_s` otherwise).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from models.steps import Step, step_dir


def read_progress(root: str | Path, step: Step) -> dict[str, Any] | None:
    try:
        value = json.loads((step_dir(root, step.kind, step.step_id) / "progress.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


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


def estimate_eta(running: list[dict[str, Any] | None], waiting: int, mean_step_s: float | None,
                 workers: int) -> float | None:
    """Seconds left: the slowest running step, plus the waiting steps spread over the workers."""
    current = [r for r in (step_remaining_s(p) for p in running) if r is not None]
    if waiting and mean_step_s is None:
        return None
    if len(current) < len(running) and mean_step_s is None:
        return None
    head = max(current, default=0.0)
    return head + (waiting * (mean_step_s or 0.0)) / max(workers, 1)


@dataclass(kw_only=True, slots=True)
class ProgressLine:
    root: Path
    total: int
    workers: int = 1
    stream: TextIO = sys.stderr
    interval_s: float = 10.0  # between lines when the stream is not a terminal
    started: float = 0.0
    _last: float = 0.0

    def render(self, done: int, failed: int, running: list[Step], finished_s: list[float]) -> str:
        progress = [read_progress(self.root, s) for s in running]
        parts = [f"[{done}/{self.total} done" + (f", {failed} failed" if failed else "") + "]"]
        for step, p in zip(running, progress):
            if p and p.get("total_tokens"):
                share = 100.0 * float(p.get("tokens", 0)) / float(p["total_tokens"])
                parts.append(f"{step.kind} {step.step_id} {share:.0f}% "
                             f"{_human(float(p.get('tokens_per_s', 0)))} tok/s")
            else:
                parts.append(f"{step.kind} {step.step_id} starting")
        waiting = self.total - done - failed - len(running)
        mean = sum(finished_s) / len(finished_s) if finished_s else None
        eta = estimate_eta(progress, waiting, mean, self.workers)
        parts.append(f"ETA {_clock(eta)}" if eta is not None else "ETA ?")
        return " | ".join(parts)

    def show(self, done: int, failed: int, running: list[Step], finished_s: list[float],
             *, final: bool = False) -> None:
        now = time.monotonic()
        tty = self.stream.isatty()
        if not final and now - self._last < (1.0 if tty else self.interval_s):
            return
        self._last = now
        line = self.render(done, failed, running, finished_s)
        end = "\n" if final or not tty else ""
        self.stream.write(("\r\033[K" if tty else "") + line + end)
        self.stream.flush()
