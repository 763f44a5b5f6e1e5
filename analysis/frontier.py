"""The VL-vs-text trade-off: the Pareto frontier of configurations, with bootstrap uncertainty and a
fitted frontier curve with a bootstrap band.

A Pareto frontier never rises as text rises, so the curve keeps that shape. From three points it is
the least-squares concave non-increasing curve y = a − b·(x − x₀) − Σₖ cₖ·(x − tₖ)₊ (b, cₖ ≥ 0, knots
tₖ at the frontier's points, by non-negative least squares) where the data allow it: when that
curve misses a point by more than the tolerance (the points' own error, at least 5% of the
frontier's VL range), the points are not concave and the curve is the non-increasing line through
them instead. Two points give a line. Either way the curve stays within the frontier's x range and,
unlike a polynomial, never arcs above the points it is fitted to.

Bootstrap resamples each configuration's runs (seeds) with replacement, so a configuration that is
on the frontier only by noise gets a low `frontier_probability`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import polars as pl
from scipy.optimize import nnls

from analysis.errors import AnalysisInputError
from analysis.scores import CONFIG_KEYS

MAX_KNOTS = 12  # interior knots of the frontier curve (quantiles of the frontier's x when more)


@dataclass(frozen=True, kw_only=True, slots=True)
class FrontierFit:
    x: str  # score on the x axis (text by default)
    y: str  # score on the y axis (VL by default)
    points: pl.DataFrame  # per configuration: axes, x_mean, y_mean, n_runs, on_frontier, frontier_probability
    curve: pl.DataFrame  # x, y, y_lo, y_hi over the frontier's x range
    shape: str  # what the curve is: CONCAVE, THROUGH_POINTS, LINE or "" (no curve)
    bootstrap: int  # resamples actually drawn (0 when every configuration has a single run)
    notes: tuple[str, ...] = ()  # what could not be estimated, and why


def pareto_mask(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """True for points no other point beats on both axes (higher is better on both)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    dominated = ((x[None, :] >= x[:, None]) & (y[None, :] >= y[:, None])
                 & ((x[None, :] > x[:, None]) | (y[None, :] > y[:, None]))).any(axis=1)
    return ~dominated & np.isfinite(x) & np.isfinite(y)


def pareto_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """`pareto_mask` of every row of (R, G) arrays at once, by a sort instead of all pairs.

    Walking each row from the largest x down, a point is on the frontier when its y beats every y
    seen before it (ties in x are broken by y, so only the best of equal x survives).
    """
    order = np.lexsort((-y, -x), axis=1)
    ys = np.take_along_axis(y, order, axis=1)
    before = np.maximum.accumulate(np.concatenate([np.full((len(y), 1), -np.inf), ys[:, :-1]], axis=1), axis=1)
    mask = np.zeros(x.shape, bool)
    np.put_along_axis(mask, order, ys > before, axis=1)
    return mask & np.isfinite(x) & np.isfinite(y)


CONCAVE, THROUGH_POINTS, LINE = "non-increasing, concave", "non-increasing, through the points (not concave)", \
    "non-increasing line"


def fit_frontier_curve(x: np.ndarray, y: np.ndarray, grid: np.ndarray, *,
                       tolerance: float = 0.0) -> tuple[np.ndarray, str]:
    """The frontier curve through points (x, y) on `grid` and its shape (module docstring); NaN
    outside the points' x range, and everywhere (shape "") with fewer than two distinct x."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    xs = np.unique(x)
    out = np.full(len(grid), np.nan)
    if len(xs) < 2:
        return out, ""
    inside = (grid >= xs[0]) & (grid <= xs[-1])
    knots = xs[:-1] if len(xs) <= MAX_KNOTS + 2 else xs[np.linspace(0, len(xs) - 2, MAX_KNOTS + 1).round().astype(int)]
    if len(xs) == 2:
        knots = xs[:1]

    def basis(v: np.ndarray) -> np.ndarray:  # every coefficient >= 0: a = a+ - a-, slopes negated
        return np.concatenate([np.ones((len(v), 1)), -np.ones((len(v), 1)),
                               -np.maximum(v[:, None] - knots[None, :], 0.0)], axis=1)
    coef, _ = nnls(basis(x), y)
    allowed = max(tolerance, 0.05 * float(np.ptp(y)))
    if len(xs) == 2 or np.abs(basis(x) @ coef - y).max() <= allowed + 1e-12:
        out[inside] = basis(grid[inside]) @ coef
        return out, LINE if len(xs) == 2 else CONCAVE
    order = np.argsort(x, kind="stable")
    out[inside] = np.interp(grid[inside], x[order], np.minimum.accumulate(y[order]))
    return out, THROUGH_POINTS


def frontier_band(x_rows: np.ndarray, y_rows: np.ndarray, *, confidence: float = 0.95,
                  size: int = 50, tolerance: float = 0.0) -> pl.DataFrame:
    """A frontier curve and its band from (R, G) predicted points: row 0 the estimate, the rest draws.

    Columns x, y, y_lo, y_hi (named for the caller: text and VL scores in a prediction).
    """
    on = pareto_rows(x_rows, y_rows)
    front_x = x_rows[0][on[0]]
    grid = np.linspace(front_x.min(), front_x.max(), size) if len(front_x) else np.zeros(0)
    curves = np.array([fit_frontier_curve(x_rows[r][on[r]], y_rows[r][on[r]], grid, tolerance=tolerance)[0]
                       for r in range(len(on))])
    lo = hi = np.full(len(grid), np.nan)
    if len(on) > 1 and np.isfinite(curves[1:]).any():
        tail = (1 - confidence) / 2 * 100
        with np.errstate(all="ignore"):
            lo, hi = np.nanpercentile(curves[1:], [tail, 100 - tail], axis=0)
    schema = {c: pl.Float64 for c in ("x", "y", "y_lo", "y_hi")}
    return pl.DataFrame({"x": grid, "y": curves[0] if len(curves) else grid, "y_lo": lo, "y_hi": hi}, schema=schema)


def fit_frontier(steps: pl.DataFrame, *, x: str = "text_score", y: str = "vl_score",
                 by: Sequence[str] = CONFIG_KEYS, bootstrap: int = 200, seed: int = 0,
                 confidence: float = 0.95, grid_size: int = 50) -> FrontierFit:
    """Frontier of per-configuration means of per-run scores `x` and `y` (rows: one per run)."""
    for col in (x, y):
        if col not in steps.columns:
            raise AnalysisInputError(f"frontier: no score column {col!r}")
    runs = steps.filter(pl.col(x).is_not_null() & pl.col(y).is_not_null())
    # scale always identifies a configuration's colour in the figure, even when it does not vary
    keys = list(dict.fromkeys([a for a in ("scale",) if a in runs.columns]
                              + [a for a in by if a in runs.columns and runs[a].n_unique() > 1]))
    if not keys:
        raise AnalysisInputError("frontier: the runs carry no configuration axes (not even scale)")
    runs = runs.with_columns(pl.struct(keys).rank("dense").cast(pl.Int64).alias("_cfg") - 1)
    configs = runs.group_by("_cfg", *keys).agg(pl.col(x).mean().alias("x_mean"), pl.col(y).mean().alias("y_mean"),
                                               pl.len().alias("n_runs")).sort("_cfg")
    if len(configs) == 0:
        raise AnalysisInputError(f"frontier: no runs with both {x} and {y}")
    notes = []
    if bootstrap and configs["n_runs"].max() < 2:
        # Resampling one run per configuration reproduces the data: no band, no probabilities.
        notes.append("one run per configuration (one seed): no bootstrap band or frontier probabilities")
        bootstrap = 0
    x_obs, y_obs = configs["x_mean"].to_numpy(), configs["y_mean"].to_numpy()
    on = pareto_mask(x_obs, y_obs)
    if on.sum() < 2:
        notes.append(f"{int(on.sum())} configuration on the frontier: no curve fitted")
    means_x, means_y = _resampled_means(runs, x, y, len(configs), bootstrap, seed)
    counts = pareto_rows(means_x, means_y).sum(axis=0) if bootstrap else on.astype(float)
    # concave where the frontier is concave within its points' standard errors (over seeds)
    stderr = runs.group_by("_cfg").agg(pl.col(y).std() / pl.len().sqrt()).sort("_cfg")[y].to_numpy()[on]
    tolerance = 2 * float(np.nanmedian(stderr)) if np.isfinite(stderr).any() else 0.0
    curve = frontier_band(np.vstack([x_obs, means_x]), np.vstack([y_obs, means_y]), confidence=confidence,
                          size=grid_size, tolerance=tolerance)
    shape = fit_frontier_curve(x_obs[on], y_obs[on], curve["x"].to_numpy(), tolerance=tolerance)[1]
    points = configs.with_columns(pl.Series("on_frontier", on),
                                  pl.Series("frontier_probability", counts / max(bootstrap, 1) if bootstrap
                                            else on.astype(float))).drop("_cfg")
    return FrontierFit(x=x, y=y, points=points, curve=curve, shape=shape,
                       bootstrap=bootstrap, notes=tuple(notes))


def _resampled_means(runs: pl.DataFrame, x: str, y: str, n_cfg: int, n_boot: int,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n_boot, n_cfg) per-configuration means of x and y under resampled runs."""
    if n_boot <= 0:
        return np.zeros((0, n_cfg)), np.zeros((0, n_cfg))
    rng = np.random.default_rng(seed)
    order = np.argsort(runs["_cfg"].to_numpy(), kind="stable")
    cfg = runs["_cfg"].to_numpy()[order]
    xs, ys = runs[x].to_numpy()[order], runs[y].to_numpy()[order]
    sizes = np.bincount(cfg, minlength=n_cfg)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    # Every resample at once: each run slot draws a run of its own configuration (with replacement),
    # and a configuration's resampled mean is the mean of its slots' draws.
    picks = starts[cfg] + (rng.random((n_boot, len(cfg))) * sizes[cfg]).astype(np.int64)
    return (np.add.reduceat(xs[picks], starts, axis=1) / sizes,
            np.add.reduceat(ys[picks], starts, axis=1) / sizes)
