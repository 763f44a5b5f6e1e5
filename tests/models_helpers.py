"""Shared builders for the model tests: tiny trunk/branch/finetune/eval steps on the synthetic
data provider, a provider that interrupts itself with SIGUSR2, and run comparisons."""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest
import torch

import models.synthetic as syn
from models import checkpoint as ck
from models.config import ProjectorConfig, VisionConfig
from models.presets import get_preset
from models.run import run_step
from models.stepfiles import TIMING_METRICS, step_dir
from models.steps import BranchConfig, DataSource, EvalConfig, FinetuneConfig, Step, TrunkConfig

SRC = DataSource(name="synthetic", kind="world")
PRESET = get_preset("debug")
LM = dataclasses.replace(PRESET.model.lm, vocab_size=syn.VOCAB)
VISION = VisionConfig(kind="vit", image_size=16, patch_size=8, width=32, n_layers=1, n_heads=2,
                      frozen=False, pretrain=False)
TIMING = set(TIMING_METRICS)  # wall-clock rows can never repeat exactly


def trunk_step(steps: int = 12, fractions=(0.0, 0.5, 1.0)) -> Step:
    cfg = TrunkConfig(lm=LM, train=PRESET.train, data=SRC, seed=0,
                      tokens=steps * PRESET.train.batch_size * PRESET.train.seq_len)
    return Step(kind="trunk", config=cfg, meta={"checkpoint_fractions": list(fractions)})


def branch_step(trunk: Step, fraction: float = 0.5, schedule: str = "continue") -> Step:
    cfg = BranchConfig(intro_fraction=fraction, schedule=schedule, image_data=SRC,
                       instruction_data=None, image_ratio=0.5, instruction_share=0.0,
                       tokens=8 * 4 * 32, vision=VISION, projector=ProjectorConfig(),
                       train=PRESET.train)
    return Step(kind="branch", config=cfg, parents=(("trunk", trunk.step_id),))


def finetune_step(branch: Step) -> Step:
    cfg = FinetuneConfig(data=SRC, epochs=2, lr=1e-3, batch_size=4, max_samples=16, seed=1)
    return Step(kind="finetune", config=cfg, parents=(("branch", branch.step_id),))


def eval_step(parent: Step) -> Step:
    cfg = EvalConfig(data=(SRC,), tasks=(), groups=("vl", "text"), n_per_task=6)
    return Step(kind="eval", config=cfg, parents=((parent.kind, parent.step_id),))


class _Interrupting:
    """A BatchStream proxy that sends this process SIGUSR2 before producing batch number `at`."""

    def __init__(self, stream, at: int, signum: int = signal.SIGUSR2) -> None:
        self.stream, self.at, self.produced, self.signum = stream, at, 0, signum

    def __iter__(self):
        return self

    def __next__(self):
        if self.produced == self.at:
            os.kill(os.getpid(), self.signum)
        self.produced += 1
        return next(self.stream) if hasattr(self.stream, "__next__") else next(iter(self.stream))

    def __len__(self) -> int:
        return len(self.stream)

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)


def interrupting(at: int, provider=syn, signum: int = signal.SIGUSR2) -> SimpleNamespace:
    """`provider` (synthetic or models.data) whose training streams interrupt at batch `at`."""
    def wrap(factory):
        return lambda *args, **kwargs: _Interrupting(factory(*args, **kwargs), at, signum)
    names = ("text_stream", "mixed_stream", "finetune_epochs", "caption_pairs")
    ns = {n: getattr(provider, n) for n in ("get_tokenizer", "eval_tasks")}
    ns.update({n: wrap(getattr(provider, n)) for n in names})
    return SimpleNamespace(**ns)


def metrics(root: Path, step: Step) -> pl.DataFrame:
    df = pl.read_parquet(step_dir(root, step.kind, step.step_id) / "metrics.parquet")
    return df.filter(~pl.col("name").is_in(list(TIMING))).sort("step", "name")


def weights(root: Path, step: Step) -> dict:
    return ck.load_torch(step_dir(root, step.kind, step.step_id) / "model.pt")["model"]


def assert_same_run(a: Path, b: Path, step: Step) -> None:
    ma, mb = metrics(a, step), metrics(b, step)
    assert ma.select("step", "tokens", "name").equals(mb.select("step", "tokens", "name"))
    torch.testing.assert_close(torch.tensor(ma["value"].to_numpy()),
                               torch.tensor(mb["value"].to_numpy()), rtol=0, atol=1e-6,
                               equal_nan=True)
    wa, wb = weights(a, step), weights(b, step)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6)


def run_interrupted(step: Step, root: Path, at: int, provider=syn,
                    signum: int = signal.SIGUSR2) -> None:
    with pytest.raises(ck.Preempted):
        run_step(step, root, data=interrupting(at, provider, signum))
    failure = (step_dir(root, step.kind, step.step_id) / "failure.json").read_text()
    assert '"reason": "preempted"' in failure
    assert not (step_dir(root, step.kind, step.step_id) / "result.json").exists()
    run_step(step, root, data=provider)


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One torch thread per test process (and for run_step, via $VLMSWEEP_THREADS): the CI box has
    2 shared cores, where 2 spinning intra-op threads make tiny models ~100× slower. Session-wide,
    so module-scoped runs and the tests comparing against them use the same thread count (a
    different count changes float reduction order at the 1e-6 level)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLMSWEEP_THREADS", "1")
        old = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(old)
