"""Response surface of a score over (intro_fraction, image_ratio) per scale: the best f and ratio
with bootstrap intervals, and how the best f moves with scale.

The surface is a quadratic in f and log(ratio) fitted by least squares to every run; an axis with
fewer than three values enters linearly (two values) or not at all (one). The best point is the
argmax over the observed ranges; bootstrap resamples runs within the scale and refits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # axis -> (lo, hi)
    n_runs: int = 0
    terms: tuple[str, ...] = ()  # the polynomial's terms, e.g. ("1", "f", "f^2", "u", ...)
    coefficients: tuple[float, ...] = ()
    grid: pl.DataFrame = field(default_factory=pl.DataFrame)  # intro_fraction, image_ratio, predicted


def _design(f: np.ndarray, u: np.ndarray, nf: int, nu: int) -> tuple[np.ndarray, list[str]]:
    cols, names = [np.ones_like(f)], ["1"]
    if nf >= 2:
        cols, names = cols + [f], names + ["f"]
    if nf >= 3:
        cols, names = cols + [f * f], names + ["f^2"]
    if nu >= 2:
        cols, names = cols + [u], names + ["u"]
    if nu >= 3:
        cols, names = cols + [u * u], names + ["u^2"]
    if nf >= 2 and nu >= 2:
        cols, names = cols + [f * u], names + ["f*u"]
    return np.column_stack(cols), names


def _fit_argmax(f, u, s, nf, nu, gf, gu) -> tuple[np.ndarray, float, float, float, np.ndarray]:
    x, _ = _design(f, u, nf, nu)
    coef, *_ = np.linalg.lstsq(x, s, rcond=None)
    pred = _design(gf, gu, nf, nu)[0] @ coef
    k = int(np.argmax(pred))
    return coef, float(gf[k]), float(gu[k]), float(pred[k]), pred


def fit_response_surface(steps: pl.DataFrame, *, score: str = "vl_score", bootstrap: int = 200,
                         seed: int = 0, confidence: float = 0.95, grid_size: int = 101) -> list[SurfaceFit]:
    """One SurfaceFit per scale from per-run rows with intro_fraction, image_ratio and `score`."""
    need = ("scale", "intro_fraction", "image_ratio", score)
    for col in need:
        if col not in steps.columns:
            raise AnalysisInputError(f"response surface: no column {col!r}")
    runs = steps.drop_nulls(list(need)).filter(pl.col("image_ratio") > 0)
    if len(runs) == 0:
        raise AnalysisInputError(f"response surface: no runs with intro_fraction, image_ratio and {score}")
    rng = np.random.default_rng(seed)
    fits = []
    for scale in runs["scale"].unique(maintain_order=True).to_list():
        fits.append(_fit_scale(runs.filter(pl.col("scale") == scale), scale, score, bootstrap, rng,
                               confidence, grid_size))
    return sorted(fits, key=lambda fit: (fit.params or 0, fit.scale))


def _fit_scale(runs: pl.DataFrame, scale: str, score: str, n_boot: int, rng: np.random.Generator,
               confidence: float, grid_size: int) -> SurfaceFit:
    f, ratio, s = (runs[c].to_numpy().astype(float) for c in ("intro_fraction", "image_ratio", score))
    u = np.log(ratio)
    nf, nu = len(np.unique(f)), len(np.unique(u))
    gf1 = np.linspace(f.min(), f.max(), grid_size if nf > 1 else 1)
    gu1 = np.linspace(u.min(), u.max(), grid_size if nu > 1 else 1)
    gf, gu = (a.ravel() for a in np.meshgrid(gf1, gu1, indexing="ij"))
    coef, bf, bu, bs, pred = _fit_argmax(f, u, s, nf, nu, gf, gu)
    draws = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(s), len(s))
        _, df_, du, _, _ = _fit_argmax(f[pick], u[pick], s[pick], nf, nu, gf, gu)
        draws.append((df_, np.exp(du)))
    intervals = {}
    if draws:
        tail = (1 - confidence) / 2 * 100
        arr = np.array(draws)
        lo, hi = np.percentile(arr, [tail, 100 - tail], axis=0)
        intervals = {"intro_fraction": (float(lo[0]), float(hi[0])), "image_ratio": (float(lo[1]), float(hi[1]))}
    params = runs["params"][0] if "params" in runs.columns else None
    return SurfaceFit(scale=scale, params=None if params is None else int(params), score=score,
                      best_intro_fraction=bf, best_image_ratio=float(np.exp(bu)), best_score=bs,
                      intervals=intervals, n_runs=len(s), terms=tuple(_design(f[:1], u[:1], nf, nu)[1]),
                      coefficients=tuple(map(float, coef)),
                      grid=pl.DataFrame({"intro_fraction": gf, "image_ratio": np.exp(gu), "predicted": pred}))


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
