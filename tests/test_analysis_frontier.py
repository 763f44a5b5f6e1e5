"""The fitted VL/text frontier keeps a Pareto frontier's shape: it never rises as text rises and
never arcs above the runs (a quadratic through the demo's four frontier points reached VL 0.23
where no run was above 0.09); it is concave where the points allow, and its band brackets it."""

from __future__ import annotations

import numpy as np
import polars as pl

from analysis.frontier import CONCAVE, THROUGH_POINTS, fit_frontier, frontier_band, pareto_mask, pareto_rows

# Four frontier configurations shaped like the demo's (a steep drop, then flat) and two inside.
CONVEX = [(0.40, 0.09), (0.42, 0.03), (0.44, 0.02), (0.50, 0.0), (0.38, 0.01), (0.41, 0.0)]
CONCAVE_POINTS = [(0.40, 0.09), (0.45, 0.085), (0.50, 0.07), (0.55, 0.04), (0.42, 0.05)]


def runs(points, seeds=(0,), jitter=0.0) -> pl.DataFrame:
    rng = np.random.default_rng(0)
    return pl.DataFrame([{"scale": "1m", "intro_fraction": 0.1 * i, "seed": s,
                          "text_score": x + rng.normal(0, jitter), "vl_score": y + rng.normal(0, jitter)}
                         for i, (x, y) in enumerate(points) for s in seeds])


def test_the_frontier_curve_never_rises_and_never_arcs_above_the_runs() -> None:
    frame = runs(CONVEX)
    fit = fit_frontier(frame, bootstrap=0)
    y = fit.curve["y"].to_numpy()
    assert int(fit.points["on_frontier"].sum()) == 4
    assert (np.diff(y) <= 1e-12).all(), y
    assert y.max() <= frame["vl_score"].max() + 1e-12 and y.min() >= -1e-12
    assert fit.shape == THROUGH_POINTS  # a steep drop then flat is not concave: the curve says so


def test_a_concave_frontier_is_fitted_concave_with_a_band_around_it() -> None:
    frame = runs(CONCAVE_POINTS, seeds=(0, 1, 2), jitter=0.002)
    fit = fit_frontier(frame, bootstrap=100, seed=1)
    curve = fit.curve.drop_nans().drop_nulls()
    y = curve["y"].to_numpy()
    assert fit.shape == CONCAVE
    assert (np.diff(y) <= 1e-12).all() and (np.diff(y, 2) <= 1e-9).all()
    assert (curve["y_lo"] <= curve["y"] + 1e-9).mean() > 0.9 and (curve["y_hi"] >= curve["y"] - 1e-9).mean() > 0.9
    assert curve["y_hi"].max() <= frame["vl_score"].max() + 1e-12


def test_pareto_rows_agrees_with_the_pairwise_mask() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(20, 30)), rng.normal(size=(20, 30))
    fast = pareto_rows(x, y)
    for r in range(20):
        assert (fast[r] == pareto_mask(x[r], y[r])).all()


def test_a_predicted_frontier_band_is_monotone() -> None:
    rng = np.random.default_rng(4)
    f = np.linspace(0, 1, 30)
    text = 0.3 + 0.1 * f + rng.normal(0, 0.002, (50, 30))
    vl = 0.5 - 0.2 * f ** 2 + rng.normal(0, 0.002, (50, 30))
    band = frontier_band(text, vl)
    assert (np.diff(band["y"].to_numpy()) <= 1e-12).all()
    assert band["y_lo"].is_not_null().all() and (band["y_lo"] <= band["y_hi"]).all()
