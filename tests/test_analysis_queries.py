"""The browsing queries of `analysis.queries` on a real synthetic results set: coverage, totals,
downsampled curves (pre-cut by ingest and live), the curves tables, the runs table and the launch
journal's log paths."""

from __future__ import annotations

import json
import shutil

import polars as pl
import pytest

from analysis import queries
from analysis.filters import Filters
from analysis.schema import CURVE_BUCKETS
from analysis.store import connect, ingest
from analysis.synthetic import SyntheticSpec, write_synthetic_study

SPEC = SyntheticSpec(scales=("79m", "411m"), intro_fractions=(0.0, 0.8, 1.0), image_ratios=(0.1, 0.5),
                     finetune_epochs=(1,), seeds=(0, 1), metric_rows=300, unfinished=2, failed=3)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    study = write_synthetic_study(root, SPEC)
    # One planned eval never started: its folder is gone, so it is missing, not running.
    gone = study.step_ids["eval"][0]
    shutil.rmtree(root / "steps" / "eval" / gone)
    ingest(root)
    con = connect(root)
    yield root, con, study, gone
    con.close()


def test_coverage_statuses(catalog):
    root, con, study, gone = catalog
    cells = queries.coverage(con, root, Filters(study="synthetic"))
    assert len(cells) == len(study.step_ids["eval"])
    counts = dict(cells.group_by("status").len().iter_rows())
    assert counts == {"done": len(study.step_ids["eval"]) - 6, "running": 2, "failed": 3, "missing": 1}
    assert cells.filter(pl.col("step_id") == gone)["status"].to_list() == ["missing"]
    assert set(cells.filter(pl.col("status") == "failed")["failure_reason"].to_list()) == {"oom"}


def test_coverage_follows_filters(catalog):
    root, con, _, _ = catalog
    cells = queries.coverage(con, root, Filters(selections=(("scale", ("79m",)), ("intro_fraction", (0.8,)))))
    assert set(cells["scale"].to_list()) == {"79m"}
    assert set(cells["intro_fraction"].to_list()) <= {0.8, None}  # trunk evals have no fraction
    assert cells["intro_fraction"].is_not_null().sum() == 2 * 2  # 2 ratios x 2 seeds


def test_totals_match_the_steps_table(catalog):
    _, con, _, _ = catalog
    steps = con.sql("SELECT * FROM steps").pl()
    totals = queries.totals(con, Filters())
    assert totals["done"].sum() == (steps["status"] == "done").sum()
    assert totals["failed"].sum() == 3
    assert totals["tokens"].sum() == pytest.approx(steps.filter(pl.col("status") == "done")["tokens"].sum())
    assert totals["accelerator_hours"].sum() == pytest.approx(steps["wall_time_s"].sum() / 3600)


@pytest.mark.parametrize("points", [50, 250])  # from the pre-cut table, and live (> CURVE_BUCKETS)
def test_curves_are_downsampled_without_dropping_a_run(catalog, points):
    _, con, _, _ = catalog
    raw = con.sql("SELECT m.* FROM metrics m JOIN steps s USING (step_id) "
                  "WHERE name = 'train_loss' AND kind IN ('trunk', 'branch')").pl()
    pts = queries.curve_points(con, Filters(), names=["train_loss"], kinds=["trunk", "branch"], points=points)
    assert set(pts["step_id"].to_list()) == set(raw["step_id"].to_list())
    per_curve = pts.group_by("step_id").agg(pl.len().alias("n"), pl.col("rows").sum())
    assert per_curve["n"].max() == points
    assert per_curve["rows"].sum() == len(raw)  # every logged row is in exactly one bucket
    if points == 250:
        return  # 300 rows in 250 buckets: the first bucket holds 2 rows, not 6
    first = raw.sort("step").group_by("step_id", maintain_order=True).head(6)  # 300 rows / 50 buckets
    expected = first.group_by("step_id").agg(pl.col("value").mean()).sort("step_id")
    got = pts.filter(pl.col("bucket") == 0).sort("step_id")
    assert got["value"].to_list() == pytest.approx(expected["value"].to_list())


def test_short_curves_keep_every_row(catalog):
    _, con, _, _ = catalog
    pts = queries.curve_points(con, Filters(), names=["lr"], kinds=["finetune"], points=500)
    raw = con.sql("SELECT count(*) FROM metrics m JOIN steps s USING (step_id) "
                  "WHERE name = 'lr' AND kind = 'finetune'").fetchall()[0][0]
    assert len(pts) == raw and pts["rows"].max() == 1
    with pytest.raises(ValueError, match="at least 2"):
        queries.curve_points(con, Filters(), names=["lr"], points=1)


def test_axis_options_and_metric_names(catalog):
    _, con, _, _ = catalog
    options = queries.axis_options(con, "synthetic")
    assert options["scale"] == ["79m", "411m"] and options["intro_fraction"] == [0.0, 0.8, 1.0]
    assert options["seed"] == [0, 1]
    assert {"train_loss", "text_loss", "caption_loss", "lr"} <= set(queries.metric_names(con))


def test_runs_table_names_files_and_latest_log(catalog, tmp_path):
    root, con, study, _ = catalog
    trunk = study.step_ids["trunk"][0]
    journal = root / "launch" / "jobs.jsonl"
    journal.parent.mkdir(exist_ok=True)
    journal.write_text("\n".join([
        json.dumps({"step_id": trunk, "log": "/logs/1/err", "submitted_at": 1.0}),
        "{half a line",
        json.dumps({"step_id": trunk, "log": "/logs/2/err", "submitted_at": 2.0})]) + "\n")
    try:
        table = queries.runs_table(con, root, Filters(study="synthetic"))
    finally:
        shutil.rmtree(root / "launch")
    row = table.filter(pl.col("step_id") == trunk).row(0, named=True)
    assert row["log"] == "/logs/2/err"
    assert row["step_dir"] == str(root / "steps" / "trunk" / trunk)
    assert (root / "steps" / "trunk" / trunk / "config.json").is_file()


def test_curves_table_summarises_every_logged_curve(catalog):
    _, con, _, _ = catalog
    summary = con.sql("SELECT * FROM curves ORDER BY step_id, name").pl()
    expected = con.sql("SELECT step_id, name, min(step) AS first_step, max(step) AS last_step, count(*) AS rows "
                       "FROM metrics GROUP BY ALL ORDER BY step_id, name").pl()
    assert summary.equals(expected) and len(summary) > 0


def test_curve_points_follow_filters_and_study(catalog):
    _, con, _, _ = catalog
    some = queries.curve_points(con, Filters(study="synthetic", selections=(("scale", ("79m",)),)),
                                names=["train_loss"], kinds=["trunk"], points=10)
    scales = con.sql("SELECT step_id, scale FROM steps").pl()
    assert set(some.join(scales, on="step_id")["scale"].to_list()) == {"79m"}
    assert some["bucket"].min() == 0 and some["bucket"].max() == 9
    assert queries.curve_points(con, Filters(study="nope"), names=["train_loss"]).is_empty()


def live(con, points: int, names=("train_loss", "lr"), kinds=queries.TRAINING_KINDS) -> pl.DataFrame:
    """The live query at any budget (the public function reads the pre-cut table up to CURVE_BUCKETS)."""
    chosen = ("SELECT c.* FROM curves c JOIN steps s USING (step_id) "
              "WHERE list_contains($names, c.name) AND list_contains($kinds, s.kind)")
    return con.sql(queries._live_points(chosen),
                   params={"names": list(names), "kinds": list(kinds), "points": points}).pl()


@pytest.mark.parametrize("points", [CURVE_BUCKETS, 40, 2])  # divisors of CURVE_BUCKETS: exact boundaries
def test_precut_points_equal_the_live_query(catalog, points):
    _, con, _, _ = catalog
    pre = queries.curve_points(con, Filters(), names=["train_loss", "lr"], points=points)
    want = live(con, points)
    assert pre.schema == want.schema and len(pre) == len(want) > 0
    exact = ["step_id", "name", "bucket", "first_step", "last_step", "value_min", "value_max", "rows"]
    assert pre.select(exact).equals(want.select(exact))
    for col in ("step", "tokens", "value"):
        assert pre[col].to_list() == pytest.approx(want[col].to_list(), rel=1e-12), col


def test_precut_points_at_other_budgets_keep_every_row_in_contiguous_buckets(catalog):
    _, con, _, _ = catalog
    pts = queries.curve_points(con, Filters(), names=["train_loss"], points=7)
    curves = con.sql("SELECT * FROM curves WHERE name = 'train_loss'").pl()
    per_curve = pts.group_by("step_id").agg(pl.len().alias("n"), pl.col("rows").sum(),
                                            pl.col("first_step").min(), pl.col("last_step").max())
    joined = per_curve.join(curves, on="step_id", suffix="_curve")
    assert len(joined) == len(curves) and (joined["n"] == 7).all()
    assert joined["rows"].equals(joined["rows_curve"])  # no logged row lost or counted twice
    assert joined["first_step"].equals(joined["first_step_curve"])
    assert joined["last_step"].equals(joined["last_step_curve"])
    ordered = pts.sort("step_id", "bucket")
    same = ordered["step_id"] == ordered["step_id"].shift(1)
    gaps = ordered.filter(same)["first_step"] - ordered["last_step"].shift(1).filter(same)
    assert (gaps == 1).all()  # buckets tile each curve's steps without overlap (steps 0, 1, 2, ...)
    # each boundary is within one pre-cut bucket of the live query's
    want = live(con, 7, names=("train_loss",)).sort("step_id", "bucket")
    span = ordered["last_step"].max() + 1
    assert (ordered["first_step"] - want["first_step"]).abs().max() <= span / CURVE_BUCKETS + 1
