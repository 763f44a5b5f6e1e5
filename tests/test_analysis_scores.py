"""Stable-score arithmetic, aggregation over seeds, missing cells, the Pareto frontier and the
response surface — on hand-built frames with known answers and on a synthetic study."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from analysis import queries
from analysis.frontier import fit_frontier, pareto_mask
from analysis.scores import aggregate_over_seeds, fix_other_axes, main_stage, step_scores
from analysis.store import connect, ingest
from analysis.surface import best_by_scale, best_fraction_trend, fit_response_surface
from analysis.synthetic import SyntheticSpec, write_synthetic_study


def evals(rows):
    return pl.DataFrame(rows, schema=["step_id", "seed", "task", "group", "value", "chance"], orient="row")


def test_stable_scores_and_k_task_average() -> None:
    frame = evals([("a", 0, "vqa", "vl", 0.60, 0.0), ("a", 0, "pope", "vl", 0.80, 0.5),
                   ("a", 0, "arc", "text", 0.50, 0.25), ("a", 0, "piqa", "text", 0.70, 0.5),
                   ("b", 1, "vqa", "vl", 0.40, 0.0), ("b", 1, "arc", "text", 0.45, 0.25)])
    out = step_scores(frame, average_tasks=["vqa", "arc", "piqa"]).sort("step_id")
    a, b = out.row(0, named=True), out.row(1, named=True)
    assert a["vl_score"] == pytest.approx((0.60 + 0.30) / 2)
    assert a["text_score"] == pytest.approx((0.25 + 0.20) / 2)
    assert a["avg_score"] == pytest.approx((0.60 + 0.25 + 0.20) / 3) and a["n_avg_tasks"] == 3
    # b lacks piqa: its k-task average is missing, not a mean over fewer tasks, and says why
    assert b["avg_score"] is None and b["n_avg_tasks"] == 2
    assert (b["vl_score"], b["n_vl_tasks"]) == (pytest.approx(0.40), 1)
    every = step_scores(frame).sort("step_id")
    assert every["avg_score"][0] == pytest.approx((0.60 + 0.30 + 0.25 + 0.20) / 4)


def test_aggregate_over_seeds_counts_every_run() -> None:
    steps = pl.DataFrame({"scale": ["s"] * 3 + ["t"], "seed": [0, 1, 2, 0],
                          "vl_score": [0.1, 0.2, 0.6, 0.5], "text_score": [0.3, None, 0.5, 0.1]})
    agg = aggregate_over_seeds(steps, scores=("vl_score", "text_score"), by=("scale",))
    s, t = agg.row(0, named=True), agg.row(1, named=True)
    assert s["n_runs"] == 3 and s["seeds"] == [0, 1, 2]
    assert s["vl_score_mean"] == pytest.approx(0.3)
    assert s["vl_score_stderr"] == pytest.approx(np.std([0.1, 0.2, 0.6], ddof=1) / math.sqrt(3))
    assert s["text_score_n"] == 2 and s["text_score_mean"] == pytest.approx(0.4)
    assert t["n_runs"] == 1 and t["vl_score_stderr"] is None


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scores")
    write_synthetic_study(root, SyntheticSpec(finetune_epochs=(1,), metric_rows=5, unfinished=1, failed=2))
    ingest(root)
    return root


def test_missing_cells_are_reported(study: Path) -> None:
    with connect(study) as con:
        missing = queries.missing_cells(con, "synthetic")
        scores = step_scores(queries.load_stable_scores(con, "synthetic"))
    assert sorted(missing["status"].to_list()) == ["failed", "failed", "no result"]
    assert missing["intro_fraction"].is_not_null().all()
    planned_evals = 2 * 2 * 6 * 2 + 4  # scale x seed x f x ratio finetunes + one eval per trunk
    assert len(scores) + len(missing) == planned_evals


def test_fixing_other_axes_keeps_axes_the_varied_ones_determine(study: Path) -> None:
    with connect(study) as con:
        main = main_stage(step_scores(queries.load_stable_scores(con)))
    rows, fixed = fix_other_axes(main, ["intro_fraction", "scale", "seed"])
    assert fixed == {"image_ratio": 0.1}  # params (by scale) and schedule_policy (by f) are kept
    assert set(rows["schedule_policy"]) == {"rewarm", "continue"}
    assert rows["intro_fraction"].n_unique() == 6 and rows["scale"].n_unique() == 2


def test_pareto_mask_by_hand() -> None:
    x = np.array([1.0, 2.0, 3.0, 2.0, 1.0])
    y = np.array([3.0, 2.0, 1.0, 1.0, 3.0])
    assert pareto_mask(x, y).tolist() == [True, True, True, False, True]


def test_frontier_with_bootstrap(study: Path) -> None:
    with connect(study) as con:
        main = main_stage(step_scores(queries.load_stable_scores(con)))
    fit = fit_frontier(main, bootstrap=50, seed=3)
    pts = fit.points
    front = pts.filter("on_frontier")
    assert len(front) >= 1 and pts["n_runs"].sum() == len(main)
    for row in front.iter_rows(named=True):  # nobody beats a frontier point on both axes
        assert not ((pts["x_mean"] > row["x_mean"]) & (pts["y_mean"] > row["y_mean"])).any()
    assert pts["frontier_probability"].is_between(0, 1).all()
    assert front["frontier_probability"].mean() > pts.filter(~pl.col("on_frontier"))["frontier_probability"].mean()
    again = fit_frontier(main, bootstrap=50, seed=3)
    assert again.points.equals(pts) and again.curve.equals(fit.curve)
    assert (fit.curve["y_lo"] <= fit.curve["y_hi"]).all()


def test_response_surface_recovers_a_known_optimum() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for scale, params, best_f in (("small", 10**8, 0.5), ("large", 10**9, 0.8)):
        for f in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
            for ratio in (0.05, 0.1, 0.2, 0.4):
                for seed in (0, 1):
                    score = 0.5 - (f - best_f) ** 2 - 0.1 * np.log(ratio / 0.15) ** 2 + rng.normal(0, 0.003)
                    rows.append((scale, params, f, ratio, seed, score))
    frame = pl.DataFrame(rows, schema=["scale", "params", "intro_fraction", "image_ratio", "seed", "vl_score"],
                         orient="row")
    fits = fit_response_surface(frame, bootstrap=60, seed=1)
    assert [f.scale for f in fits] == ["small", "large"]
    for fit, best_f in zip(fits, (0.5, 0.8)):
        assert fit.best_intro_fraction == pytest.approx(best_f, abs=0.03)
        assert fit.best_image_ratio == pytest.approx(0.15, rel=0.15)
        lo, hi = fit.intervals["intro_fraction"]
        assert lo <= best_f + 0.03 and best_f - 0.03 <= hi
    table = best_by_scale(fits)
    assert table["best_intro_fraction"].to_list() == [fits[0].best_intro_fraction, fits[1].best_intro_fraction]
    assert best_fraction_trend(fits) == pytest.approx(0.3, abs=0.05)  # +0.3 in f per decade of N


def test_response_surface_intervals_depend_on_the_runs_only() -> None:
    """Not on the order rows arrive in (step ids, which change with CODE_SALT) nor on which other
    scales are fitted: the same results give the same report."""
    rng = np.random.default_rng(2)
    rows = [(scale, params, f, ratio, float(rng.normal(0.2 - (f - 0.6) ** 2, 0.08)))
            for scale, params in (("a", 10**6), ("b", 10**7))
            for f in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0) for ratio in (0.05, 0.2, 0.5)]
    frame = pl.DataFrame(rows, schema=["scale", "params", "intro_fraction", "image_ratio", "vl_score"],
                         orient="row")
    fits = fit_response_surface(frame, bootstrap=100, seed=0)
    assert all(f.intervals["intro_fraction"][0] < f.intervals["intro_fraction"][1] for f in fits)
    for shuffle_seed in range(3):
        shuffled = frame.sample(fraction=1.0, shuffle=True, seed=shuffle_seed)
        assert [f.intervals for f in fit_response_surface(shuffled, bootstrap=100, seed=0)] == \
            [f.intervals for f in fits]
    alone = fit_response_surface(frame.filter(pl.col("scale") == "b"), bootstrap=100, seed=0)
    assert alone[0].intervals == fits[1].intervals


def test_sql_views_agree_with_the_polars_aggregates(study: Path) -> None:
    with connect(study) as con:
        steps = step_scores(queries.load_stable_scores(con))
        view = con.sql("SELECT * FROM config_scores").pl()
    mine = aggregate_over_seeds(steps).drop("seeds")
    keys = [c for c in mine.columns if not c.startswith(("vl_", "text_", "avg_", "n_runs"))]
    joined = mine.join(view, on=keys, nulls_equal=True, suffix="_sql")
    assert len(joined) == len(mine) == len(view)
    for col in ("n_runs", "vl_score_mean", "vl_score_stderr", "text_score_mean", "avg_score_n"):
        a, b = joined[col].to_numpy().astype(float), joined[f"{col}_sql"].to_numpy().astype(float)
        np.testing.assert_allclose(a, b, rtol=1e-9, equal_nan=True)
