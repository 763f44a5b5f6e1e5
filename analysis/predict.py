"""Predict the next scale: from the scales a study trained, the best intro_fraction and image_ratio
at a larger one, the VL and text scores and held-out losses there and the VL/text frontier, each
with a bootstrap interval, and the backtest that says how far to trust it.

Each target's form (`analysis.crossscale`) is the one with the least leave-one-scale-out error.
The bootstrap resamples runs (every seed of every cell is a run) within each scale and refits every
target under the same resample, so the best point and the values there move together. The best
point maximises the predicted VL score over the swept ranges of f and ratio (never beyond them).
The backtest holds out the largest trained scale, predicts it from the smaller ones the same way,
and scores the prediction against that scale's own response surface, with the decision accuracy
over pairs of its grid cells (DataDecide's measure: how often the prediction orders two cells as
their observed means do).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from analysis.crossscale import FORMS, LOSS_FOR_SCORE, Runs, TargetFit, best_mix, fit_target
from analysis.errors import AnalysisInputError
from analysis.frontier import frontier_band

TARGETS = ("vl_score", "text_score", "val_text_loss", "val_caption_loss")
MIN_SCALES = 3
WARN_FACTOR = 10.0  # a target this many times the largest trained scale gets a warning
UNRESOLVED_SHARE = 0.75  # an interval covering this share of the swept range: no preferred value
GRID = (41, 25)  # points over the swept f and log-ratio ranges that the predicted frontier is drawn from
CONFIDENCE = 0.95
Z_95 = 1.959964  # the normal quantile of CONFIDENCE's upper tail, for the form's error


@dataclass(frozen=True, kw_only=True, slots=True)
class Interval:
    estimate: float
    lo: float | None = None  # None: no bootstrap
    hi: float | None = None

    def covers(self, value: float) -> bool:
        return self.lo is not None and self.lo <= value <= self.hi


@dataclass(frozen=True, kw_only=True, slots=True)
class Prediction:
    params: float
    tokens: float
    fitted_scales: tuple[tuple[str, int], ...]  # (scale, params), smallest first
    extrapolation: float  # target params / the largest fitted scale's
    forms: dict[str, str]  # target -> chosen form
    loso_rmse: dict[str, dict[str, float]]  # target -> form -> leave-one-scale-out RMSE
    form_error: dict[str, float]  # target -> the chosen form's error between scales beyond noise
    best_intro_fraction: Interval
    best_image_ratio: Interval
    fraction_resolved: bool  # False: the interval covers most of the swept range (no preferred f)
    ratio_resolved: bool
    values: dict[str, Interval]  # target -> predicted value at the best point
    frontier: pl.DataFrame  # x (text score), y (VL score), y_lo, y_hi: the predicted VL/text frontier
    trend: pl.DataFrame  # params, best f and ratio with intervals, from the smallest scale to the target
    bootstrap: int
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class Backtest:
    scale: str  # the held-out (largest) scale
    params: int
    prediction: Prediction  # of it, from the smaller scales
    observed: dict[str, float]  # quantity -> that scale's own response surface (best f, ratio, values)
    observed_intervals: dict[str, tuple[float, float]]  # the best f and ratio's own intervals at that scale
    cell_rmse: dict[str, float]  # target -> RMSE of the predicted cells against their observed means
    decision_accuracy: dict[str, float]  # target -> share of cell pairs ordered right
    n_pairs: int
    within: dict[str, bool] = field(default_factory=dict)  # quantity -> observed (or its interval) meets it

    @property
    def errors(self) -> dict[str, float]:
        p = self.prediction
        pred = {"best_intro_fraction": p.best_intro_fraction.estimate,
                "best_image_ratio": p.best_image_ratio.estimate,
                **{t: v.estimate for t, v in p.values.items()}}
        return {q: pred[q] - v for q, v in self.observed.items() if q in pred}


def runs_arrays(frame: pl.DataFrame) -> tuple[Runs, list[tuple[str, int]]]:
    """Runs (sorted, so that results depend on the runs and not on row order) and the scales."""
    for col in ("scale", "params", "intro_fraction", "image_ratio", "vl_score"):
        if col not in frame.columns:
            raise AnalysisInputError(f"prediction: the runs have no column {col!r}")
    rows = frame.filter(pl.col("vl_score").is_not_null() & pl.col("params").is_not_null()
                        & pl.col("intro_fraction").is_not_null() & (pl.col("image_ratio") > 0))
    rows = rows.sort([c for c in ("params", "intro_fraction", "image_ratio", "seed") if c in rows.columns])
    scales = rows.select("scale", "params").unique("params", keep="first").sort("params")
    index = {p: i for i, p in enumerate(scales["params"].to_list())}
    n = rows["params"].cast(pl.Float64).to_numpy()
    d = rows["tokens"].cast(pl.Float64).to_numpy() if "tokens" in rows.columns else n.copy()
    values = {t: (rows[t].cast(pl.Float64).fill_null(np.nan).to_numpy() if t in rows.columns
                  else np.full(len(rows), np.nan)) for t in TARGETS}
    runs = Runs(n=n, d=np.where(np.isfinite(d) & (d > 0), d, n), f=rows["intro_fraction"].to_numpy().astype(float),
                u=np.log(rows["image_ratio"].to_numpy().astype(float)),
                scale=np.array([index[p] for p in rows["params"].to_list()]), values=values)
    return runs, list(zip(scales["scale"].to_list(), scales["params"].to_list()))


def _fold_errors(form: str, target: str, runs: Runs, loss_form: str) -> np.ndarray:
    """Per scale, the squared errors of predicting its runs from the other scales (one fold each;
    every fold is one row of the weight matrix, all fitted at once)."""
    k = runs.n_scales
    folds = (runs.scale[None, :] != np.arange(k)[:, None]).astype(float)
    fit = fit_target(form, target, runs, folds, loss_form=loss_form)
    return (fit.predict(runs.n, runs.d, runs.f, runs.u)[runs.scale, np.arange(len(runs.n))] - runs.values[target]) ** 2


def choose_forms(runs: Runs, targets: list[str]
                 ) -> tuple[dict[str, str], dict[str, dict[str, float]], dict[str, float]]:
    """Per target: the form with the least leave-one-scale-out RMSE (losses first: two_step needs
    theirs), the RMSE of every form, and the chosen form's RMSE on the largest scale's fold (its
    error when it extrapolates up, the interval's allowance for the form)."""
    forms: dict[str, str] = {}
    rmse: dict[str, dict[str, float]] = {}
    upward: dict[str, float] = {}
    largest = runs.scale == runs.scale.max()
    for target in sorted(targets, key=lambda t: t in LOSS_FOR_SCORE):
        loss = LOSS_FOR_SCORE.get(target)
        errors = {f: _fold_errors(f, target, runs, forms.get(loss, "moving_optimum"))
                  for f in FORMS if f != "two_step" or loss in forms}
        rmse[target] = {f: float(np.sqrt(np.nanmean(e))) if np.isfinite(e).any() else float("nan")
                        for f, e in errors.items()}
        finite = {f: e for f, e in rmse[target].items() if np.isfinite(e)}
        forms[target] = min(finite, key=finite.get) if finite else "fixed_optimum"
        upward[target] = float(np.sqrt(np.nanmean(errors[forms[target]][largest])))
    return forms, rmse, upward


def bootstrap_weights(scale: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) multiplicities: each scale's runs resampled with replacement within the scale."""
    weights = np.zeros((n_boot, len(scale)))
    for s in np.unique(scale):
        idx = np.flatnonzero(scale == s)
        draws = rng.integers(0, len(idx), (n_boot, len(idx))) + np.arange(n_boot)[:, None] * len(idx)
        weights[:, idx] = np.bincount(draws.ravel(), minlength=n_boot * len(idx)).reshape(n_boot, len(idx))
    return weights


def _grid(runs: Runs) -> tuple[np.ndarray, np.ndarray]:
    gf = np.linspace(runs.f.min(), runs.f.max(), GRID[0] if np.ptp(runs.f) > 0 else 1)
    gu = np.linspace(runs.u.min(), runs.u.max(), GRID[1] if np.ptp(runs.u) > 0 else 1)
    f, u = np.meshgrid(gf, gu, indexing="ij")
    return f.ravel(), u.ravel()


def _interval(draws: np.ndarray, form_error: float = 0.0) -> Interval:
    """Row 0 is the full-data fit, the rest bootstrap refits; the percentile interval is widened in
    quadrature by the form's own error between scales (0: none)."""
    if len(draws) < 2:
        return Interval(estimate=float(draws[0]))
    tail = (1 - CONFIDENCE) / 2 * 100
    lo, hi = np.nanpercentile(draws[1:], [tail, 100 - tail])
    est, extra = float(draws[0]), (Z_95 * form_error) ** 2
    return Interval(estimate=est, lo=est - float(np.sqrt((est - lo) ** 2 + extra)),
                    hi=est + float(np.sqrt((hi - est) ** 2 + extra)))


def _form_error(fit: TargetFit, runs: Runs, target: str, upward: float | None) -> float:
    """The out-of-scale error the runs' noise does not explain: the largest scale's leave-one-out
    RMSE less (in quadrature) the in-sample residual RMSE of the full fit."""
    if upward is None or not np.isfinite(upward):
        return 0.0
    residual = fit.predict(runs.n, runs.d, runs.f, runs.u)[0] - runs.values[target]
    return float(np.sqrt(max(upward ** 2 - np.nanmean(residual ** 2), 0.0)))


def _resolved(interval: Interval, values: np.ndarray) -> bool:
    span = float(np.ptp(values))
    return span > 0 and interval.lo is not None and (interval.hi - interval.lo) < UNRESOLVED_SHARE * span


def next_scale(params: list[int]) -> float:
    """The study's next rung: the largest scale times its mean step between scales (at most 10x)."""
    step = (max(params) / min(params)) ** (1 / (len(params) - 1))
    return float(max(params) * min(step, 10.0))


def check_target(params: float, scales: list[tuple[str, int]], *, min_scales: int = MIN_SCALES) -> list[str]:
    """Refuse what cannot be predicted (too few scales, a target inside the range); warn when far out."""
    names = ", ".join(s for s, _ in scales)
    if len(scales) < min_scales:
        raise AnalysisInputError(f"prediction needs at least {min_scales} scales with evaluated runs "
                                 f"(has {len(scales)}: {names or 'none'}); train more scales to predict the next one")
    if not np.isfinite(params) or params <= 0:
        raise AnalysisInputError(f"target parameters must be a positive number, got {params!r}")
    smallest, largest = scales[0][1], scales[-1][1]
    if params <= largest:
        raise AnalysisInputError(
            f"target {params:.4g} parameters is not beyond the fitted range ({scales[0][0]} {smallest:.4g} – "
            f"{scales[-1][0]} {largest:.4g}): predict extrapolates to a scale larger than every trained one; "
            "a trained scale's best mix is its response surface in `vlmsweep report`")
    factor = params / largest
    if factor >= WARN_FACTOR:
        return [f"the target is {factor:.0f}x the largest trained scale ({scales[-1][0]}, {largest:.4g} "
                "parameters): that far out the prediction rests on the fitted trend alone"]
    return []


def predict_scale(frame: pl.DataFrame, *, params: float, tokens: float | None = None, bootstrap: int = 1000,
                  seed: int = 0, forms: dict[str, str] | None = None, min_scales: int = MIN_SCALES) -> Prediction:
    """Predict the best mix and what it scores at `params` (and `tokens`) from one row per run.

    `forms` skips the choice by leave-one-scale-out error (a backtest left with two scales).
    """
    runs, scales = runs_arrays(frame)
    warnings = check_target(params, scales, min_scales=min_scales)
    tokens, notes = _target_tokens(runs, params, tokens)
    targets = [t for t in TARGETS if np.isfinite(runs.values[t]).any()]
    notes += [f"{t}: no run has it (results written before held-out losses were evaluated); not predicted"
              for t in TARGETS if t not in targets]
    loso: dict[str, dict[str, float]] = {}
    upward: dict[str, float] = {}
    if forms is None:
        forms, loso, upward = choose_forms(runs, targets)
    else:
        notes.append("too few scales to choose forms by leave-one-scale-out error: the full study's forms, "
                     "and intervals from the bootstrap alone")
    weights = np.vstack([np.ones(len(runs.n)), bootstrap_weights(runs.scale, bootstrap, np.random.default_rng(seed))])
    fits = {t: fit_target(forms[t], t, runs, weights, loss_form=forms.get(LOSS_FOR_SCORE.get(t), "moving_optimum"))
            for t in targets}
    f_range, u_range = (runs.f.min(), runs.f.max()), (runs.u.min(), runs.u.max())
    f_best, u_best = best_mix(fits["vl_score"], params, tokens, f_range, u_range)
    errors = {t: _form_error(fit, runs, t, upward.get(t)) for t, fit in fits.items()}
    gf, gu = _grid(runs)
    grids = {t: fits[t].predict(np.full(len(gf), params), np.full(len(gf), tokens), gf, gu)
             for t in ("text_score", "vl_score") if t in fits}
    return Prediction(
        params=float(params), tokens=float(tokens), fitted_scales=tuple(scales),
        extrapolation=float(params / scales[-1][1]), forms=dict(forms), loso_rmse=loso, form_error=errors,
        best_intro_fraction=_interval(f_best), best_image_ratio=_interval(np.exp(u_best)),
        fraction_resolved=_resolved(_interval(f_best), runs.f), ratio_resolved=_resolved(_interval(u_best), runs.u),
        values={t: _interval(fit.predict_each(params, tokens, f_best, u_best), errors[t]) for t, fit in fits.items()},
        frontier=(frontier_band(grids["text_score"], grids["vl_score"], confidence=CONFIDENCE)
                  if "text_score" in grids else pl.DataFrame()),
        trend=_trend(fits["vl_score"], runs, scales, params, tokens / params),
        bootstrap=bootstrap, warnings=tuple(warnings), notes=tuple(notes))


def _target_tokens(runs: Runs, params: float, tokens: float | None) -> tuple[float, list[str]]:
    """D at the target: as given, or the study's tokens per parameter times N."""
    per_param = runs.d / runs.n
    typical = float(np.median(per_param))
    if tokens is not None and not (np.isfinite(tokens) and tokens > 0):
        raise AnalysisInputError(f"target tokens must be a positive number, got {tokens!r}")
    if tokens is None:
        return typical * params, []
    if per_param.max() <= 1.01 * per_param.min() and abs(tokens / params - typical) > 0.01 * typical:
        return typical * params, [f"every trained scale had {typical:.4g} tokens per parameter, so the runs cannot "
                                  f"separate D from N: --tokens is not used (predicted at {typical:.4g} per parameter)"]
    return float(tokens), []


def _trend(vl: TargetFit, runs: Runs, scales: list[tuple[str, int]], params: float,
           tokens_per_param: float, points: int = 16) -> pl.DataFrame:
    """The best f and ratio the VL model puts at each size from the smallest scale to the target."""
    f_range, u_range = (runs.f.min(), runs.f.max()), (runs.u.min(), runs.u.max())
    rows = []
    for n in np.geomspace(scales[0][1], params, points):
        f_best, u_best = best_mix(vl, n, n * tokens_per_param, f_range, u_range)
        f, r = _interval(f_best), _interval(np.exp(u_best))
        rows.append({"params": float(n), "best_intro_fraction": f.estimate, "intro_fraction_lo": f.lo,
                     "intro_fraction_hi": f.hi, "best_image_ratio": r.estimate, "image_ratio_lo": r.lo,
                     "image_ratio_hi": r.hi})
    return pl.DataFrame(rows, schema={c: pl.Float64 for c in rows[0]})
