"""The VL-vs-text trade-off: the Pareto frontier of configurations, with bootstrap uncertainty and a
fitted frontier curve (quadratic through the frontier points, with a bootstrap band).

Bootstrap resamples each configuration's runs (seeds) with replacement, so a configuration that is
on the frontier only by noise gets a low `frontier_probability`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import polars as pl

from analysis.errors import AnalysisInputError
from analysis.scores import CONFIG_AXES


@dataclass(frozen=True, kw_only=True, slots=True)
class FrontierFit:
    x: str  # score on the x axis (text by default)
    y: str  # score on the y axis (VL by default)
    points: pl.DataFrame  # per configuration: axes, x_mean, y_mean, n_runs, on_frontier, frontier_probability
    curve: pl.DataFrame  # x, y, y_lo, y_hi over the frontier's x range
    coefficients: tuple[float, ...]  # y = c0 + c1·x + c2·x² (shorter when there are too few points)
    bootstrap: int  # resamples actually drawn (0 when every configuration has a single run)
    notes: tuple[str, ...] = ()  # what could not be estimated, and why


def pareto_mask(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """True for points no other point beats on both axes (higher is better on both)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    dominated = ((x[None, :] >= x[:, None]) & (y[None, :] >= y[:, None])
                 & ((x[None, :] > x[:, None]) | (y[None, :] > y[:, None]))).any(axis=1)
    return ~dominated & np.isfinite(x) & np.isfinite(y)


def _curve_coefficients(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    degree = min(2, len(np.unique(x)) - 1)
    return np.polyfit(x, y, degree)[::-1] if degree >= 0 and len(x) else np.array([np.nan])


def _evaluate(coef: np.ndarray, x: np.ndarray) -> np.ndarray:
    return sum(c * x ** k for k, c in enumerate(coef))


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
    on = pareto_mask(configs["x_mean"].to_numpy(), configs["y_mean"].to_numpy())
    if on.sum() < 2:
        notes.append(f"{int(on.sum())} configuration on the frontier: no curve fitted")
    coef = _curve_coefficients(configs["x_mean"].to_numpy()[on], configs["y_mean"].to_numpy()[on])
    counts, curves = _bootstrap(runs, x, y, len(configs), bootstrap, seed, configs.filter(pl.Series(on)), grid_size)
    grid = _grid(configs.filter(pl.Series(on))["x_mean"].to_numpy(), grid_size)
    tail = (1 - confidence) / 2 * 100
    lo, hi = (np.nanpercentile(curves, [tail, 100 - tail], axis=0) if bootstrap and np.isfinite(curves).any()
              else (np.full(len(grid), np.nan), np.full(len(grid), np.nan)))
    points = configs.with_columns(pl.Series("on_frontier", on),
                                  pl.Series("frontier_probability", counts / max(bootstrap, 1) if bootstrap
                                            else on.astype(float))).drop("_cfg")
    curve = pl.DataFrame({"x": grid, "y": _evaluate(coef, grid), "y_lo": lo, "y_hi": hi},
                         schema={"x": pl.Float64, "y": pl.Float64, "y_lo": pl.Float64, "y_hi": pl.Float64})
    return FrontierFit(x=x, y=y, points=points, curve=curve, coefficients=tuple(map(float, coef)),
                       bootstrap=bootstrap, notes=tuple(notes))


def _grid(xs: np.ndarray, size: int) -> np.ndarray:
    return np.linspace(xs.min(), xs.max(), size) if len(xs) else np.zeros(0)


def _bootstrap(runs: pl.DataFrame, x: str, y: str, n_cfg: int, n_boot: int, seed: int,
               frontier: pl.DataFrame, grid_size: int) -> tuple[np.ndarray, np.ndarray]:
    """How often each configuration is on the resampled frontier, and the resampled curves on a grid."""
    counts = np.zeros(n_cfg)
    grid = _grid(frontier["x_mean"].to_numpy(), grid_size)
    curves = np.full((n_boot, len(grid)), np.nan)
    if n_boot <= 0:
        return counts, curves
    rng = np.random.default_rng(seed)
    order = np.argsort(runs["_cfg"].to_numpy(), kind="stable")
    cfg = runs["_cfg"].to_numpy()[order]
    xs, ys = runs[x].to_numpy()[order], runs[y].to_numpy()[order]
    sizes = np.bincount(cfg, minlength=n_cfg)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    # Every resample at once: each run slot draws a run of its own configuration (with replacement),
    # and a configuration's resampled mean is the mean of its slots' draws.
    picks = starts[cfg] + (rng.random((n_boot, len(cfg))) * sizes[cfg]).astype(np.int64)
    means_x = np.add.reduceat(xs[picks], starts, axis=1) / sizes
    means_y = np.add.reduceat(ys[picks], starts, axis=1) / sizes
    for b in range(n_boot):
        bx, by_ = means_x[b], means_y[b]
        on = pareto_mask(bx, by_)
        counts += on
        if on.sum() >= 1:
            curves[b] = _evaluate(_curve_coefficients(bx[on], by_[on]), grid)
    return counts, curves
