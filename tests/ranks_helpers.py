"""Picklable step jobs for tests that run a step on several local ranks (`sweep.launch.ranks`):
each rank unpickles its own copy, so the data provider is chosen inside the job."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import models.synthetic as syn
from models import stepfiles as sf
from models.checkpoint import Preempted
from models.distributed import ranks_from_env
from models.run import run_step
from models.steps import Step


class SyntheticJob:
    """`run_step` on the synthetic provider; rank `signal_rank` alone sends itself SIGUSR2 before
    batch `at` (a signal reaching one rank), so the ranks must agree to stop."""

    def __init__(self, step: Step, root: Path, *, signal_rank: int | None = None, at: int = 0):
        self.step, self.root, self.signal_rank, self.at = step, root, signal_rank, at

    def __call__(self) -> dict[str, Any]:
        from tests.models_helpers import interrupting

        signals = self.signal_rank is not None and ranks_from_env().rank == self.signal_rank
        return run_step(self.step, self.root, data=interrupting(self.at) if signals else syn)

    def is_preempted(self, error: BaseException) -> bool:
        return isinstance(error, Preempted)


class DeviceProbeJob:
    """A stand-in step that records, per rank, the CUDA_VISIBLE_DEVICES it ran with and when; rank
    0 then writes result.json. It sleeps so that concurrent steps overlap."""

    def __init__(self, step: Step, root: str | Path, seconds: float = 1.5):
        self.step, self.root, self.seconds = step, str(root), seconds

    def __call__(self) -> dict[str, Any]:
        began = time.time()
        time.sleep(self.seconds)
        ranks = ranks_from_env()
        record = {"devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "rank": ranks.rank,
                  "world": ranks.world, "began": began, "ended": time.time()}
        paths = sf.paths_of(self.root, self.step)
        paths.dir.mkdir(parents=True, exist_ok=True)
        sf.write_json(paths.dir / f"probe-rank{ranks.rank}.json", record)
        if ranks.writes_files:
            for fraction in self.step.meta.get("checkpoint_fractions", ()):  # what branches resume
                sf.write_json(paths.fraction(float(fraction)), {})
            sf.write_result(paths.dir, {"step_id": self.step.step_id, "kind": self.step.kind,
                                        "status": "done"})
        return record

    def is_preempted(self, error: BaseException) -> bool:
        return False


class NanLossJob(SyntheticJob):
    """`run_step` where rank `nan_rank` alone adds a NaN constant to its loss at optimizer step
    `at`: its loss is NaN while every rank's gradients stay finite, so only a flag the ranks
    reduce makes them agree (models.stages.guard)."""

    def __init__(self, step: Step, root: Path, *, nan_rank: int, at: int):
        super().__init__(step, root)
        self.nan_rank, self.nan_at = nan_rank, at

    def __call__(self) -> dict[str, Any]:
        from models.stages import lm

        if ranks_from_env().rank == self.nan_rank:
            original, at = lm.LMStage.loss_sum, self.nan_at

            def loss_sum(module, batch):
                total, parts = original(module, batch)
                return (total + float("nan")) if module.step_count + 1 == at else total, parts
            lm.LMStage.loss_sum = loss_sum
        return run_step(self.step, self.root, data=syn)
