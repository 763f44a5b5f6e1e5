"""The model stages on the real data layer (`models.data`, the built-in world): a debug-preset
chain encoder → trunk → branch (with instruction data) → finetune → eval runs, and a branch and a
finetune interrupted by SIGUSR2 resume to the bit on the world's real streams."""

from __future__ import annotations

import shutil

import polars as pl

import models.data as data
from models.config import ProjectorConfig
from models.presets import get_preset
from models.run import run_step
from models.stepfiles import LOSS_METRIC, step_dir
from models.steps import (
    BranchConfig,
    DataSource,
    EncoderConfig,
    EvalConfig,
    FinetuneConfig,
    Step,
    TrunkConfig,
)
from tests.models_helpers import (
    assert_same_run,
    one_thread,  # noqa: F401  (autouse: one torch thread)
    run_interrupted,
)

WORLD = DataSource(name="world", kind="world")
DEBUG = get_preset("debug")


def world_chain() -> dict[str, Step]:
    vision = DEBUG.model.vision
    enc = Step(kind="encoder", config=EncoderConfig(
        vision=vision, data=WORLD, text_width=32, text_layers=1, vocab_size=512, samples=64,
        batch_size=16, lr=1e-3, seed=0))
    trunk = Step(kind="trunk", config=TrunkConfig(lm=DEBUG.model.lm, train=DEBUG.train, data=WORLD,
                                                 tokens=12 * 4 * 32, seed=0),
                 meta={"checkpoint_fractions": [0.5]})
    branch = Step(kind="branch", config=BranchConfig(
        intro_fraction=0.5, schedule="continue", image_data=WORLD, instruction_data=WORLD,
        image_ratio=0.5, instruction_share=0.25, tokens=6 * 4 * 32, vision=vision,
        projector=ProjectorConfig(), train=DEBUG.train),
        parents=(("trunk", trunk.step_id), ("encoder", enc.step_id)))
    finetune = Step(kind="finetune", config=FinetuneConfig(
        data=WORLD, epochs=2, lr=1e-3, batch_size=4, max_samples=12, seed=0),
        parents=(("branch", branch.step_id),))
    evaluation = Step(kind="eval", config=EvalConfig(
        data=(WORLD,), tasks=(), groups=("vl", "text"), n_per_task=3),
        parents=(("finetune", finetune.step_id),))
    return {"encoder": enc, "trunk": trunk, "branch": branch, "finetune": finetune,
            "eval": evaluation}


def test_world_chain_runs_and_resumes_to_the_bit(tmp_path) -> None:
    steps = world_chain()
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    for step in steps.values():
        run_step(step, clean, data=data)
    rows = pl.read_parquet(step_dir(clean, "eval", steps["eval"].step_id) / "evals.parquet")
    evals, losses = rows.filter(pl.col("primary_metric")), rows.filter(pl.col("metric") == LOSS_METRIC)
    assert set(evals["group"]) == {"vl", "text"} and (evals["n"] == 3).all()
    assert set(evals["task"]) == set(rows.filter(pl.col("metric") != LOSS_METRIC)["task"])  # one primary each
    assert not losses["primary_metric"].any()
    assert ((evals["value"] >= 0) & (evals["value"] <= 1)).all()
    assert losses["task"].to_list() == ["heldout_text", "heldout_caption"] and (losses["value"] > 0).all()
    branch_names = set(pl.read_parquet(step_dir(clean, "branch", steps["branch"].step_id)
                                       / "metrics.parquet")["name"])
    assert {"text_loss", "caption_loss", "instruction_loss"} <= branch_names
    for kind in ("encoder", "trunk"):
        shutil.copytree(step_dir(clean, kind, steps[kind].step_id),
                        step_dir(resumed, kind, steps[kind].step_id))
    run_interrupted(steps["branch"], resumed, at=2, provider=data)
    assert_same_run(clean, resumed, steps["branch"])
    run_interrupted(steps["finetune"], resumed, at=1, provider=data)
    assert_same_run(clean, resumed, steps["finetune"])
