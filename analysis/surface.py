"""Response surface of a score over (intro_fraction, image_ratio) per scale: the best f and ratio
with bootstrap intervals, and how the best f moves with scale.

The surface is a quadratic in f and log(ratio) fitted by least squares to every run, keeping only
the terms the runs identify (an axis with two values enters linearly, with one not at all; no f·u
term when the ratio varies at a single f). The best point is the
argmax over the observed ranges; bootstrap resamples runs within the scale and refits. The
resampling depends only on the runs' values and the seed: not on the order rows arrive in (step
ids decide it, and change with CODE_SALT) nor on which other scales are fitted.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import polars as pl

from analysis.errors import AnalysisInputError


@dataclass(frozen=True, kw_only=True, slots=True)
class SurfaceFit:
    scale: str
    params: int | None
    score: str
    best_intro_fraction: float
    best_image_ratio: float
    best_score: float  # the surface's value at the best point
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # axis -> (lo, hi); {} when
    # there are no more runs than terms (nothing to resample)
    n_runs: int = 0
    terms: tuple[str, ...] = ()  # the polynomial's terms, e.g. ("1", "f", "f^2", "u", ...)
    coefficients: tuple[float, ...] = ()
    grid: pl.DataFrame = field(default_factory=pl.DataFrame)  # intro_fraction, image_ratio, predicted


_TERMS = {"1": lambda f, u: np.ones_like(f), "f": lambda f, u: f, "f^2": lambda f, u: f * f,
          "u": lambda f, u: u, "u^2": lambda f, u: u * u, "f*u": lambda f, u: f * u}


def _design(f: np.ndarray, u: np.ndarray, terms: Sequence[str]) -> np.ndarray:
    return np.column_stack([_TERMS[t](f, u) for t in terms])


def identifiable_terms(f: np.ndarray, u: np.ndarray) -> tuple[str, ...]:
    """The quadratic's terms the runs pin down, lowest order first.

    A term is kept only if it raises the design's rank: with one value of an axis its terms drop,
    with two its square drops, and when the ratio varies at a single f (a cross-shaped grid, as
    the paper's) the f·u interaction drops instead of being extrapolated from nothing.
    """
    kept: list[str] = []
    for term in _TERMS:
        trial = [*kept, term]
        if np.linalg.matrix_rank(_design(f, u, trial)) == len(trial):
            kept = trial
    return tuple(kept)


def _fit_argmax(f, u, s, terms, gf, gu) -> tuple[np.ndarray, float, float, float, np.ndarray]:
    coef, *_ = np.linalg.lstsq(_design(f, u, terms), s, rcond=None)
    pred = _design(gf, gu, terms) @ coef
    k = int(np.argmax(pred))
    return coef, float(gf[k]), float(gu[k]), float(pred[k]), pred


def fit_response_surface(steps: pl.DataFrame, *, score: str = "vl_score", bootstrap: int = 200,
                         seed: int = 0, confidence: float = 0.95, grid_size: int = 101) -> list[SurfaceFit]:
    """One SurfaceFit per scale from per-run rows with intro_fraction, image_ratio and `score`."""
    need = ("scale", "intro_fraction", "image_ratio", score)
    for col in need:
        if col not in steps.columns:
            raise AnalysisInputError(f"response surface: no column {col!r}")
    runs = steps.drop_nulls(list(need)).filter(pl.col("image_ratio") > 0).sort(list(need))
    if len(runs) == 0:
        raise AnalysisInputError(f"response surface: no runs with intro_fraction, image_ratio and {score}")
    fits = []
    for scale in runs["scale"].unique(maintain_order=True).to_list():
        rng = np.random.default_rng([seed, zlib.crc32(str(scale).encode())])
        fits.append(_fit_scale(runs.filter(pl.col("scale") == scale), scale, score, bootstrap, rng,
                               confidence, grid_size))
    return sorted(fits, key=lambda fit: (fit.params or 0, fit.scale))


def _fit_scale(runs: pl.DataFrame, scale: str, score: str, n_boot: int, rng: np.random.Generator,
               confidence: float, grid_size: int) -> SurfaceFit:
    f, ratio, s = (runs[c].to_numpy().astype(float) for c in ("intro_fraction", "image_ratio", score))
    u = np.log(ratio)
    terms = identifiable_terms(f, u)
    gf1 = np.linspace(f.min(), f.max(), grid_size if len(np.unique(f)) > 1 else 1)
    gu1 = np.linspace(u.min(), u.max(), grid_size if len(np.unique(u)) > 1 else 1)
    gf, gu = (a.ravel() for a in np.meshgrid(gf1, gu1, indexing="ij"))
    coef, bf, bu, bs, pred = _fit_argmax(f, u, s, terms, gf, gu)
    # With no more runs than terms the surface interpolates every run: resampling says nothing.
    draws = [_fit_argmax(f[p], u[p], s[p], terms, gf, gu)[1:3]
             for p in (rng.integers(0, len(s), len(s)) for _ in range(n_boot if len(s) > len(terms) else 0))]
    intervals = {}
    if draws:
        tail = (1 - confidence) / 2 * 100
        arr = np.array([(df_, np.exp(du)) for df_, du in draws])
        lo, hi = np.percentile(arr, [tail, 100 - tail], axis=0)
        intervals = {"intro_fraction": (float(lo[0]), float(hi[0])), "image_ratio": (float(lo[1]), float(hi[1]))}
    params = runs["params"][0] if "params" in runs.columns else None
    return SurfaceFit(scale=scale, params=None if params is None else int(params), score=score,
                      best_intro_fraction=bf, best_image_ratio=float(np.exp(bu)), best_score=bs,
                      intervals=intervals, n_runs=len(s), terms=terms, coefficients=tuple(map(float, coef)),
                      grid=pl.DataFrame({"intro_fraction": gf, "image_ratio": np.exp(gu), "predicted": pred}))


def surface_value(fit: SurfaceFit, intro_fraction, image_ratio) -> np.ndarray:
    """The fitted surface at given points: a scale's smoothed observation of the score there."""
    f = np.atleast_1d(np.asarray(intro_fraction, dtype=float))
    u = np.log(np.atleast_1d(np.asarray(image_ratio, dtype=float)))
    return _design(f, u, fit.terms) @ np.asarray(fit.coefficients)


def best_by_scale(fits: list[SurfaceFit]) -> pl.DataFrame:
    """The best f and ratio per scale with intervals, ordered by parameters: how the best f moves."""
    rows = []
    for fit in fits:
        f_lo, f_hi = fit.intervals.get("intro_fraction", (None, None))
        r_lo, r_hi = fit.intervals.get("image_ratio", (None, None))
        rows.append({"scale": fit.scale, "params": fit.params, "score": fit.score, "n_runs": fit.n_runs,
                     "best_intro_fraction": fit.best_intro_fraction, "intro_fraction_lo": f_lo,
                     "intro_fraction_hi": f_hi, "best_image_ratio": fit.best_image_ratio,
                     "image_ratio_lo": r_lo, "image_ratio_hi": r_hi, "best_score": fit.best_score})
    return pl.DataFrame(rows, schema_overrides={"params": pl.Int64, "intro_fraction_lo": pl.Float64,
                                                "intro_fraction_hi": pl.Float64, "image_ratio_lo": pl.Float64,
                                                "image_ratio_hi": pl.Float64})


def best_fraction_trend(fits: list[SurfaceFit]) -> float | None:
    """Slope of the best intro_fraction per decade of parameters (None with fewer than two scales)."""
    pts = [(np.log10(fit.params), fit.best_intro_fraction) for fit in fits if fit.params]
    if len({p for p, _ in pts}) < 2:
        return None
    return float(np.polyfit(*zip(*pts), 1)[0])
