"""On a real two-scale run (tests/data/real_two_scales: the debug and 170k presets trained, fine-tuned
and evaluated on CPU): every eval wrote its held-out losses, they stay out of the stable scores,
and `vlmsweep predict` says plainly that two scales are one too few."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest

from analysis import queries, scores
from analysis.store import connect, ingest
from sweep.cli import main

DATA = Path(__file__).parent / "data" / "real_two_scales"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """The run as `vlmsweep run two.toml` left it: two.toml beside its results root runs/."""
    study = tmp_path_factory.mktemp("real")
    shutil.copy(DATA / "two.toml", study / "two.toml")
    shutil.copytree(DATA, study / "runs", ignore=shutil.ignore_patterns("README.md", "*.toml"))
    ingest(study / "runs")
    return study / "runs"


def test_every_real_eval_wrote_its_held_out_losses() -> None:
    for path in sorted((DATA / "steps" / "eval").glob("*/evals.parquet")):
        evals = pl.read_parquet(path)
        rows = evals.filter(pl.col("metric") == "val_loss")
        tasks = dict(zip(rows["task"], rows["value"]))
        has_images = evals.filter((pl.col("metric") == "accuracy") & (pl.col("group") == "vl")).height > 0
        assert "heldout_text" in tasks and ("heldout_caption" in tasks) == has_images, path
        assert all(0 < v < 10 for v in tasks.values()), (path, tasks)


def test_held_out_losses_stay_out_of_the_stable_scores(root: Path) -> None:
    with connect(root) as con:
        task_scores = queries.load_stable_scores(con)
        losses = queries.load_heldout_losses(con)
    assert "val_loss" not in task_scores["metric"].to_list()
    steps = scores.step_scores(task_scores)
    finetuned = scores.main_stage(steps)
    assert len(finetuned) == 4 and finetuned["vl_score"].is_not_null().all()
    joined = finetuned.join(losses, on="step_id")
    assert joined["val_text_loss"].is_not_null().all() and joined["val_caption_loss"].is_not_null().all()
    # the bigger model's held-out text loss is the lower one, at each intro fraction
    by = joined.sort("params").group_by("intro_fraction").agg(pl.col("val_text_loss"))
    assert all(a > b for a, b in by["val_text_loss"].to_list())


def test_predict_on_two_real_scales_needs_a_third(root: Path, capsys) -> None:
    # the results folder (its study file would plan today's step ids, which later changes to the
    # eval config move away from these files' ids)
    assert main(["predict", str(root), "--scale", "1m"]) == 2
    err = capsys.readouterr().err
    assert "prediction needs at least 3 scales with evaluated runs (has 2: debug, 170k)" in err


def test_predict_on_one_real_scale_needs_three(tmp_path, capsys) -> None:
    shutil.copytree(Path(__file__).parent / "data" / "real_tiny_run", tmp_path / "tiny")
    assert main(["predict", str(tmp_path / "tiny"), "--params", "1e6"]) == 2
    assert "(has 1: debug)" in capsys.readouterr().err
