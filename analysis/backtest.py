"""The backtest printed with every prediction: hold out the largest trained scale, predict it from
the smaller ones exactly as `analysis.predict` predicts the next scale, and score the prediction.

Observed values come from the held-out scale's own response surface (`analysis.surface`, fitted to
its runs alone): its best f and ratio, and each target's surface at the predicted best point.
Per target also the RMSE of the predicted grid cells against their observed means, and the
decision accuracy: the share of pairs of the scale's grid cells whose order the prediction gets
right (DataDecide's measure; pairs whose observed means tie are left out).
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import polars as pl

from analysis.crossscale import LOSS_FOR_SCORE, fit_target
from analysis.errors import AnalysisInputError
from analysis.predict import MIN_SCALES, Backtest, Prediction, choose_forms, predict_scale, runs_arrays
from analysis.surface import fit_response_surface, surface_value

QUANTITIES = ("best_intro_fraction", "best_image_ratio")


def backtest_largest(frame: pl.DataFrame, *, bootstrap: int = 1000, seed: int = 0) -> Backtest:
    """Predict the largest scale of one-row-per-run `frame` from its smaller scales."""
    runs, scales = runs_arrays(frame)
    if len(scales) < MIN_SCALES:
        raise AnalysisInputError(f"a backtest needs at least {MIN_SCALES} scales (has {len(scales)})")
    name, params = scales[-1]
    held = frame.filter(pl.col("params") == params)
    smaller = frame.filter(pl.col("params") < params)
    # With two smaller scales there is no leave-one-scale-out choice: use the full study's forms.
    forms = None if len(scales) > MIN_SCALES else choose_forms(runs, _targets(runs))[0]
    tokens = held["tokens"].drop_nulls().median() if "tokens" in held.columns else None
    prediction = predict_scale(smaller, params=float(params), tokens=tokens, bootstrap=bootstrap, seed=seed,
                               forms=forms, min_scales=2)
    observed, observed_intervals = _observed(held, prediction, bootstrap, seed)
    predicted = {"best_intro_fraction": prediction.best_intro_fraction,
                 "best_image_ratio": prediction.best_image_ratio, **prediction.values}
    within = {q: _meets(predicted[q], v, observed_intervals.get(q)) for q, v in observed.items()}
    rmse, accuracy, pairs = _cells(held, smaller, prediction, float(params))
    return Backtest(scale=name, params=int(params), prediction=prediction, observed=observed,
                    observed_intervals=observed_intervals, cell_rmse=rmse, decision_accuracy=accuracy,
                    n_pairs=pairs, within=within)


def _meets(predicted, value: float, own: tuple[float, float] | None) -> bool:
    """The observed value, or its own interval where it has one, meets the predicted interval."""
    if predicted.lo is None:
        return False
    lo, hi = own if own is not None else (value, value)
    return lo <= predicted.hi and predicted.lo <= hi


def _targets(runs) -> list[str]:
    return [t for t, v in runs.values.items() if np.isfinite(v).any()]


def _observed(held: pl.DataFrame, prediction: Prediction, bootstrap: int,
              seed: int) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """The held-out scale's own surfaces: best f and ratio (VL, with their own bootstrap intervals,
    as noisy as any single scale's), and each target at the predicted best point."""
    f, r = prediction.best_intro_fraction.estimate, prediction.best_image_ratio.estimate
    vl = fit_response_surface(held, score="vl_score", bootstrap=min(bootstrap, 200), seed=seed)[0]
    out = {"best_intro_fraction": vl.best_intro_fraction, "best_image_ratio": vl.best_image_ratio}
    for target in prediction.values:
        if target in held.columns and held[target].drop_nulls().len():
            surface = fit_response_surface(held, score=target, bootstrap=0)[0]
            out[target] = float(surface_value(surface, f, r)[0])
    return out, {"best_intro_fraction": vl.intervals["intro_fraction"],
                 "best_image_ratio": vl.intervals["image_ratio"]} if vl.intervals else {}


def _cells(held: pl.DataFrame, smaller: pl.DataFrame, prediction: Prediction,
           params: float) -> tuple[dict[str, float], dict[str, float], int]:
    """Per target: RMSE over the held-out scale's cells, and the decision accuracy over their pairs
    (the point estimate refitted to the smaller scales, at the cells' own f and ratio)."""
    runs, _ = runs_arrays(smaller)
    cells = held.group_by("intro_fraction", "image_ratio").agg(
        [pl.col(t).mean() for t in prediction.values]).sort("intro_fraction", "image_ratio")
    f, u = cells["intro_fraction"].to_numpy().astype(float), np.log(cells["image_ratio"].to_numpy().astype(float))
    d = prediction.tokens
    rmse, accuracy, n_pairs = {}, {}, 0
    for target, form in prediction.forms.items():
        fit = fit_target(form, target, runs, np.ones((1, len(runs.n))),
                         loss_form=prediction.forms.get(LOSS_FOR_SCORE.get(target), "moving_optimum"))
        pred = fit.predict(np.full(len(f), params), np.full(len(f), d), f, u)[0]
        obs = cells[target].cast(pl.Float64).fill_null(np.nan).to_numpy()
        ok = np.isfinite(obs)
        rmse[target] = float(np.sqrt(np.mean((pred[ok] - obs[ok]) ** 2))) if ok.any() else float("nan")
        accuracy[target], pairs = decision_accuracy(pred[ok], obs[ok])
        n_pairs = max(n_pairs, pairs)
    return rmse, accuracy, n_pairs


def decision_accuracy(predicted: np.ndarray, observed: np.ndarray) -> tuple[float, int]:
    """Share of pairs whose predicted order matches their observed order (observed ties left out)."""
    agree = total = 0
    for i, j in combinations(range(len(observed)), 2):
        if observed[i] == observed[j]:
            continue
        total += 1
        agree += (predicted[i] - predicted[j]) * (observed[i] - observed[j]) > 0
    return (agree / total if total else float("nan")), total
