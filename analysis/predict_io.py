"""A study's runs for `analysis.predict` from the catalog, and a prediction with its backtest as
text (`vlmsweep predict`), JSON (`--json`) and markdown (the report's Predictions section).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from analysis import queries, scores
from analysis.backtest import backtest_largest
from analysis.predict import Backtest, Interval, Prediction, predict_scale
from analysis.store import connect

QUANTITY_LABELS = {"best_intro_fraction": "best intro_fraction", "best_image_ratio": "best image_ratio",
                   "vl_score": "VL stable score", "text_score": "text stable score",
                   "val_text_loss": "held-out text loss", "val_caption_loss": "held-out caption loss"}


@dataclass(frozen=True, kw_only=True, slots=True)
class PredictionReport:
    prediction: Prediction
    backtest: Backtest
    runs: pl.DataFrame  # what both were fitted to: one row per run
    fixed: dict[str, Any]  # the axes held at one value to get one run per (scale, f, ratio, seed)


def assemble_runs(steps: pl.DataFrame, losses: pl.DataFrame,
                  tokens: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, Any]]:
    """One row per final model (fine-tuned, else branch) with its scores, held-out losses and D, the
    axes other than scale, f, ratio and seed held at their most common values (also returned)."""
    rows, fixed = scores.fix_other_axes(scores.main_stage(steps), ["intro_fraction", "image_ratio", "scale", "seed"])
    return rows.join(losses, on="step_id", how="left").join(tokens, on="params", how="left"), fixed


def prediction_runs(con, study: str | None) -> tuple[pl.DataFrame, dict[str, Any]]:
    """`assemble_runs` of the study's catalog rows, scored by the study's stable-score definition."""
    task_scores = scores.centered(queries.load_stable_scores(con, study), queries.stable_definition(con, study))
    return assemble_runs(scores.step_scores(task_scores), queries.load_heldout_losses(con, study),
                         queries.trunk_tokens(con, study))


def run_prediction_on(runs: pl.DataFrame, *, params: float, tokens: float | None = None, bootstrap: int = 1000,
                      seed: int = 0, fixed: dict[str, Any] | None = None) -> PredictionReport:
    """The prediction at `params` from one row per run, and the backtest of the largest trained scale."""
    prediction = predict_scale(runs, params=params, tokens=tokens, bootstrap=bootstrap, seed=seed)
    return PredictionReport(prediction=prediction, backtest=backtest_largest(runs, bootstrap=bootstrap, seed=seed),
                            runs=runs, fixed=fixed or {})


def run_prediction(root: str | Path, study: str | None, *, params: float, tokens: float | None = None,
                   bootstrap: int = 1000, seed: int = 0) -> PredictionReport:
    """`run_prediction_on` the study's final models in the catalog under root."""
    with connect(root) as con:
        name = queries.resolve_study(con, study)
        runs, fixed = prediction_runs(con, name)
    return run_prediction_on(runs, params=params, tokens=tokens, bootstrap=bootstrap, seed=seed, fixed=fixed)


def _num(v: float | None, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}g}"


def _interval_text(i: Interval) -> str:
    return f"{_num(i.estimate)}  [{_num(i.lo)}, {_num(i.hi)}]" if i.lo is not None else _num(i.estimate)


def _predicted(p: Prediction) -> dict[str, Interval]:
    return {"best_intro_fraction": p.best_intro_fraction, "best_image_ratio": p.best_image_ratio, **p.values}


def prediction_lines(p: Prediction) -> list[str]:
    scales = ", ".join(s for s, _ in p.fitted_scales)
    lines = [f"prediction at {p.params:.4g} parameters ({p.tokens:.4g} trunk tokens), {p.extrapolation:.3g}x the "
             f"largest of {len(p.fitted_scales)} trained scales ({scales}); 95% intervals from {p.bootstrap} bootstrap "
             "resamples of the runs within each scale"]
    for q, interval in _predicted(p).items():
        form = p.forms.get(q)
        loso = p.loso_rmse.get(q, {})
        errors = ", ".join(f"{k} {_num(v)}" for k, v in loso.items())
        how = (f"   form {form}" + (f" (leave-one-scale-out RMSE: {errors})" if loso else "")) if form else ""
        lines.append(f"  {QUANTITY_LABELS[q]:22s} {_interval_text(interval)}{how}")
    if not p.fraction_resolved:
        lines.append("  no preferred intro_fraction: its interval covers most of the swept range")
    if not p.ratio_resolved:
        lines.append("  no preferred image_ratio: its interval covers most of the swept range (or one ratio was swept)")
    if len(p.frontier):
        picks = p.frontier.gather_every(max(1, len(p.frontier) // 5))
        lines.append("  predicted VL/text frontier (text → VL [band]): " + "; ".join(
            f"{_num(r['x'])} → {_num(r['y'])} [{_num(r['y_lo'])}, {_num(r['y_hi'])}]"
            for r in picks.iter_rows(named=True)))
    lines += [f"  note: {n}" for n in p.notes]
    return lines


def backtest_lines(b: Backtest) -> list[str]:
    p = b.prediction
    smaller = ", ".join(s for s, _ in p.fitted_scales)
    lines = [f"backtest: {b.scale} ({b.params:.4g} parameters) predicted from {smaller}, "
             "against its own response surface"]
    predicted, errors = _predicted(p), b.errors
    for q, observed in b.observed.items():
        own = b.observed_intervals.get(q)
        seen = _num(observed) + (f" [{_num(own[0])}, {_num(own[1])}]" if own else "")
        verdict = ("intervals overlap" if own else "inside the interval") if b.within.get(q) else "OUTSIDE the interval"
        lines.append(f"  {QUANTITY_LABELS[q]:22s} predicted {_interval_text(predicted[q])}  observed {seen}  "
                     f"error {errors[q]:+.3g}  ({verdict})")
    lines.append(f"  decision accuracy over {b.n_pairs} pairs of grid cells: "
                 + ", ".join(f"{QUANTITY_LABELS[t]} {_num(v, 2)}" for t, v in b.decision_accuracy.items()))
    lines.append("  RMSE over the grid cells: "
                 + ", ".join(f"{QUANTITY_LABELS[t]} {_num(v)}" for t, v in b.cell_rmse.items()))
    return lines


def backtest_table(b: Backtest) -> pl.DataFrame:
    """One row per backtested quantity: predicted with interval, observed, error, inside."""
    predicted, errors = _predicted(b.prediction), b.errors
    rows = [{"quantity": q, "predicted": predicted[q].estimate, "lo": predicted[q].lo, "hi": predicted[q].hi,
             "observed": v, "error": errors[q], "inside": b.within.get(q), "decision_accuracy":
             b.decision_accuracy.get(q)} for q, v in b.observed.items()]
    return pl.DataFrame(rows, schema={"quantity": pl.String, "predicted": pl.Float64, "lo": pl.Float64,
                                      "hi": pl.Float64, "observed": pl.Float64, "error": pl.Float64,
                                      "inside": pl.Boolean, "decision_accuracy": pl.Float64})


def report_text(r: PredictionReport) -> str:
    fixed = ", ".join(f"{k} = {v}" for k, v in r.fixed.items())
    head = [f"runs: final models{f' at {fixed}' if fixed else ''}"]
    warnings = [f"warning: {w}" for w in r.prediction.warnings]
    return "\n".join(warnings + head + prediction_lines(r.prediction) + [""] + backtest_lines(r.backtest))


def _interval_json(i: Interval) -> dict:
    return {"estimate": i.estimate, "lo": i.lo, "hi": i.hi}


def prediction_json(p: Prediction) -> dict:
    return {"params": p.params, "tokens": p.tokens, "extrapolation": p.extrapolation,
            "fitted_scales": [{"scale": s, "params": n} for s, n in p.fitted_scales],
            "bootstrap": p.bootstrap, "forms": p.forms, "loso_rmse": p.loso_rmse, "form_error": p.form_error,
            **{q: _interval_json(i) for q, i in _predicted(p).items()},
            "fraction_resolved": p.fraction_resolved, "ratio_resolved": p.ratio_resolved,
            "frontier": p.frontier.rename({"x": "text_score", "y": "vl_score", "y_lo": "vl_lo", "y_hi": "vl_hi"},
                                          strict=False).to_dicts(),
            "trend": p.trend.to_dicts(), "warnings": list(p.warnings), "notes": list(p.notes)}


def report_json(r: PredictionReport) -> dict:
    b = r.backtest
    return {"prediction": prediction_json(r.prediction), "fixed": r.fixed,
            "backtest": {"scale": b.scale, "params": b.params, "prediction": prediction_json(b.prediction),
                         "observed": b.observed, "observed_intervals": b.observed_intervals,
                         "errors": b.errors, "within": b.within,
                         "cell_rmse": b.cell_rmse, "decision_accuracy": b.decision_accuracy, "n_pairs": b.n_pairs}}


def findings_markdown(r: PredictionReport) -> list[str]:
    """The report's Predictions section."""
    return (["## Predictions", "", "```"] + prediction_lines(r.prediction) + [""] + backtest_lines(r.backtest)
            + ["```", ""])
