"""The VL-vs-text trade-off: the Pareto frontier of configurations, with bootstrap uncertainty and a
fitted frontier curve with a bootstrap band.

A Pareto frontier never rises as text rises, so the curve is a least-squares fit under that shape:
non-increasing, and concave where the frontier has three or more points (two give a non-increasing
line): y = a − b·(x − x₀) − Σₖ cₖ·(x − tₖ)₊ with b, cₖ ≥ 0, knots tₖ at the frontier's interior
points, by non-negative least squares. It stays within the frontier's x range and, unlike a
polynomial, cannot arc above the points it is fitted to.

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
from analysis.scores import CONFIG_AXES

MAX_KNOTS = 12  # interior knots of the frontier curve (quantiles of the frontier's x when more)


@dataclass(frozen=True, kw_only=True, slots=True)
class FrontierFit:
    x: str  # score on the x axis (text by default)
    y: str  # score on the y axis (VL by default)
    points: pl.DataFrame  # per configuration: axes, x_mean, y_mean, n_runs, on_frontier, frontier_probability
    curve: pl.DataFrame  # x, y, y_lo, y_hi over the frontier's x range
    shape: str  # what the curve is: "non-increasing, concave", "non-increasing line" or "" (no curve)
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


def curve_shape(x: np.ndarray) -> str:
    n = len(np.unique(x))
    return "non-increasing, concave" if n >= 3 else "non-increasing line" if n == 2 else ""


def fit_frontier_curve(x: np.ndarray, y: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The least-squares non-increasing (concave from three points) curve through frontier points,
    on `grid`; NaN outside the points' x range, and everywhere with fewer than two distinct x."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    xs = np.unique(x)
    out = np.full(len(grid), np.nan)
    if len(xs) < 2:
        return out
    inner = xs[1:-1]
    if len(inner) > MAX_KNOTS:
        inner = inner[np.linspace(0, len(inner) - 1, MAX_KNOTS).round().astype(int)]
    knots = np.concatenate([[xs[0]], inner])

    def basis(v: np.ndarray) -> np.ndarray:  # every coefficient >= 0: a = a+ - a-, slopes negated
        return np.concatenate([np.ones((len(v), 1)), -np.ones((len(v), 1)),
                               -np.maximum(v[:, None] - knots[None, :], 0.0)], axis=1)
    coef, _ = nnls(basis(x), y)
    inside = (grid >= xs[0]) & (grid <= xs[-1])
    out[inside] = basis(grid[inside]) @ coef
    return out


def frontier_band(x_rows: np.ndarray, y_rows: np.ndarray, *, confidence: float = 0.95,
                  size: int = 50) -> pl.DataFrame:
    """A frontier curve and its band from (R, G) predicted points: row 0 the estimate, the rest draws.

    Columns x, y, y_lo, y_hi (named for the caller: text and VL scores in a prediction).
    """
    on = pareto_rows(x_rows, y_rows)
    front_x = x_rows[0][on[0]]
    grid = np.linspace(front_x.min(), front_x.max(), size) if len(front_x) else np.zeros(0)
    curves = np.array([fit_frontier_curve(x_rows[r][on[r]], y_rows[r][on[r]], grid) for r in range(len(on))])
    lo = hi = np.full(len(grid), np.nan)
    if len(on) > 1 and np.isfinite(curves[1:]).any():
        tail = (1 - confidence) / 2 * 100
        with np.errstate(all="ignore"):
            lo, hi = np.nanpercentile(curves[1:], [tail, 100 - tail], axis=0)
    schema = {c: pl.Float64 for c in ("x", "y", "y_lo", "y_hi")}
    return pl.DataFrame({"x": grid, "y": curves[0] if len(curves) else grid, "y_lo": lo, "y_hi": hi}, schema=schema)


def fit_frontier(steps: pl.DataFrame, *, x: str = "text_score", y: str = "vl_score",
                 by: Sequence[str] = CONFIG_AXES, bootstrap: int = 200, seed: int = 0,
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
    curve = frontier_band(np.vstack([x_obs, means_x]), np.vstack([y_obs, means_y]), confidence=confidence,
                          size=grid_size)
    points = configs.with_columns(pl.Series("on_frontier", on),
                                  pl.Series("frontier_probability", counts / max(bootstrap, 1) if bootstrap
                                            else on.astype(float))).drop("_cfg")
    return FrontierFit(x=x, y=y, points=points, curve=curve, shape=curve_shape(x_obs[on]),
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
