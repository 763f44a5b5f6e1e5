"""A stand-in step for launch tests and the submission benchmark: it trains nothing.

`NoopStepJob` goes through the same worker machinery as `StepJob` (done-check, signal handover,
checkpoint and requeue, failure records) but its `run` only ticks for `seconds`, saving its tick
count as a checkpoint and writing progress.json and result.json like a real step. It is reached
only by passing it as the job factory of a backend; `vlmsweep run` never uses it.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from models import stepfiles as sf
from models.steps import Step
from sweep.launch.worker import StepJob

TICK_S = 0.1
TOKENS_PER_TICK = 1000


class NoopPreempted(Exception):
    """The noop step saved its tick count after a checkpoint request."""


class NoopFailure(RuntimeError):
    """The failure a noop step asked to fail raises."""


class NoopStepJob(StepJob):
    def __init__(self, step: Step, root: str | Path, *, seconds: float = 0.0,
                 fail_ids: frozenset[str] = frozenset(), slow: tuple[tuple[str, float], ...] = ()):
        super().__init__(step, root)
        self.seconds = dict(slow).get(step.step_id, seconds)  # `slow`: (step id, seconds) overrides
        self.fail_ids = frozenset(fail_ids)
        self._stop = False

    def request_checkpoint(self) -> None:
        self._stop = True

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        delayed = super().checkpoint(*args, **kwargs)
        self._stop = False  # the requeued copy must tick on, not stop at once
        return delayed

    def is_preempted(self, error: BaseException) -> bool:
        return isinstance(error, NoopPreempted)

    def failure_reason(self, error: BaseException) -> str:
        return "exception"  # without importing models.run (torch) in a step that trains nothing

    def run(self) -> dict[str, Any]:
        # Like models.run.run_step: SIGTERM and SIGUSR2 ask for a checkpoint while the step runs.
        old = {sig: signal.signal(sig, lambda *_: self.request_checkpoint())
               for sig in (signal.SIGTERM, signal.SIGUSR2)}
        try:
            return self._ticks()
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def _ticks(self) -> dict[str, Any]:
        paths = sf.paths_of(self.root, self.step)
        sf.write_json(paths.config, self.step.to_json())  # as run_step does: ingest reads it
        ckpt = paths.ckpt / "noop.json"
        start = sf.read_json(ckpt)["tick"] if ckpt.exists() else 0
        total = round(self.seconds / TICK_S)
        began, last_progress = time.time(), 0.0
        for tick in range(start, total):
            if self._stop:
                sf.write_json(ckpt, {"tick": tick})
                raise NoopPreempted(f"checkpointed at tick {tick} of {total}")
            time.sleep(TICK_S)
            sf.write_json(ckpt, {"tick": tick + 1})  # a periodic checkpoint, as a trunk saves
            if time.time() - last_progress >= 1.0:
                last_progress = time.time()
                done = (tick + 1 - start) * TOKENS_PER_TICK
                sf.write_json(paths.progress, {
                    "tokens": (tick + 1) * TOKENS_PER_TICK, "total_tokens": total * TOKENS_PER_TICK,
                    "tokens_per_s": done / max(time.time() - began, 1e-9), "updated_at": time.time()})
        if self.step.step_id in self.fail_ids:
            raise NoopFailure(f"noop step {self.step.step_id} was asked to fail")
        for fraction in self.step.meta.get("checkpoint_fractions", ()):  # what branches resume
            sf.write_json(paths.fraction(float(fraction)), {})
        result = {"step_id": self.step.step_id, "kind": self.step.kind, "noop": True,
                  "resumed_from_tick": start, "ticks": total, "finished_at": sf.now_iso()}
        sf.write_result(paths.dir, result)
        return result
