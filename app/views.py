"""What each page plots: an options dataclass and a `build_*` function per figure, shared by the
page that shows it and the Export page that writes it.

A builder takes the catalog version, the sidebar filters and its options, and returns the figure
with notes on what was aggregated or left out (aggregates never drop runs silently).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import plotly.graph_objects as go
import polars as pl

from analysis import browse_figures as bfig
from analysis import figures as afig
from analysis import scores
from analysis.errors import AnalysisInputError
from analysis.filters import Filters, format_value
from analysis.predict import MIN_SCALES, next_scale
from analysis.predict_figures import predicted_frontier_figure, prediction_figure
from analysis.predict_io import backtest_table, report_text
from analysis.surface import best_by_scale, fit_response_surface
from app import loaders
from app.catalog import CatalogVersion

SCORE_AXES = ("intro_fraction", "image_ratio", "instruction_share", "finetune_epochs")


class NothingToPlot(ValueError):
    """The filtered catalog has no rows this figure can use; the message says what is missing."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Built:
    figure: go.Figure
    notes: tuple[str, ...] = ()  # what was fixed, aggregated or left out, shown under the figure
    table: pl.DataFrame = field(default_factory=pl.DataFrame)  # the aggregate behind the figure


@dataclass(frozen=True, kw_only=True, slots=True)
class CoverageOptions:
    rows: str = "scale"  # axis down the heatmap
    cols: str = "intro_fraction"  # axis across it
    kinds: tuple[str, ...] = ("eval",)  # evals are the grid's cells; trunk/branch show training coverage


@dataclass(frozen=True, kw_only=True, slots=True)
class CurvesOptions:
    metrics: tuple[str, ...] = ("train_loss",)
    kinds: tuple[str, ...] = ("trunk", "branch")
    color: str = "scale"
    facet: str | None = "name"  # one panel per metric by default; None = a single panel
    smoothing: float = 0.0  # EMA weight in [0, 1)
    x: str = "tokens"  # tokens | step
    log_x: bool = False
    log_y: bool = False
    points: int = 200  # per curve, after server-side downsampling


@dataclass(frozen=True, kw_only=True, slots=True)
class ScoresOptions:
    axis: str = "intro_fraction"
    scores: tuple[str, ...] = ("vl_score", "text_score")
    per_task: bool = False  # one panel per task instead of the aggregates
    color: str = "scale"


@dataclass(frozen=True, kw_only=True, slots=True)
class TradeoffOptions:
    color: str = "scale"
    bootstrap: int = 200  # resamples of each configuration's seeds for the frontier band


@dataclass(frozen=True, kw_only=True, slots=True)
class ScalingOptions:
    metric: str = "text_loss"
    kinds: tuple[str, ...] = ("trunk",)
    points_per_run: int = 12
    skip_fraction: float = 0.2  # drop each curve's first share of tokens (warm-up)
    bootstrap: int = 10  # refits for the parameters' intervals
    full_grid: bool = False  # all 4,500 starts instead of analysis.scaling.coarse_grid() (~10x slower)


def build_coverage(version: CatalogVersion, filters: Filters, opts: CoverageOptions) -> Built:
    cells = loaders.coverage(version, filters, opts.kinds)
    if cells.is_empty():
        raise NothingToPlot(f"no {'/'.join(opts.kinds)} steps are planned or ingested under these filters")
    counts = cells.group_by("status").len().sort("status")
    notes = (", ".join(f"{n} {s}" for s, n in counts.iter_rows()) + f" of {len(cells)} steps",)
    table = cells.select(*dict.fromkeys(("step_id", "kind", opts.rows, opts.cols, "status", "failure_reason")))
    return Built(figure=bfig.coverage_figure(cells, rows=opts.rows, cols=opts.cols), notes=notes, table=table)


def build_curves(version: CatalogVersion, filters: Filters, opts: CurvesOptions) -> Built:
    if not opts.metrics:
        raise NothingToPlot("choose at least one metric")
    pts = loaders.curves(version, filters, opts.metrics, opts.kinds, opts.points)
    if pts.is_empty():
        raise NothingToPlot(f"no {', '.join(opts.metrics)} rows for {', '.join(opts.kinds)} steps under these filters")
    pts = bfig.smooth(pts, opts.smoothing)
    runs = pts["step_id"].n_unique()
    longest = int(pts.group_by("step_id", "name").agg(pl.col("rows").sum())["rows"].max())
    notes = (f"{runs} runs; each curve cut server-side to ≤ {opts.points} bucket means "
             f"(longest curve: {longest} logged rows)",)
    events = loaders.training_events(version, filters, opts.kinds)
    fig = bfig.curves_figure(pts, color=opts.color, facet=opts.facet, x=opts.x, log_x=opts.log_x,
                                log_y=opts.log_y, events=events)
    if not events.is_empty():
        counts = events.group_by("name").len().sort("name")
        notes += (", ".join(f"{n} {name}" for name, n in counts.iter_rows())
                  + " event(s), marked on the train_loss curves",)
    return Built(figure=fig, notes=notes)


def _final_models(version: CatalogVersion, filters: Filters) -> pl.DataFrame:
    final = scores.main_stage(loaders.step_scores(version, filters))
    if final.is_empty():
        raise NothingToPlot("no evaluated models under these filters")
    return final


def _fix(final: pl.DataFrame, vary: list[str]) -> tuple[pl.DataFrame, list[str]]:
    kept, fixed = scores.fix_other_axes(final, vary)
    notes = [f"{len(kept)} of {len(final)} evaluated runs shown"]
    if fixed:
        notes.append("other axes fixed at their most common value: "
                     + ", ".join(f"{a} = {format_value(v)}" for a, v in fixed.items()))
    return kept, notes


def build_scores(version: CatalogVersion, filters: Filters, opts: ScoresOptions) -> Built:
    final = _final_models(version, filters)
    if opts.axis not in final.columns or final[opts.axis].drop_nulls().n_unique() < 1:
        raise NothingToPlot(f"{opts.axis} has no values among the evaluated runs")
    kept, notes = _fix(final, [opts.axis, opts.color])
    definition = loaders.stable_definition(version, filters)
    if opts.per_task:
        tasks = loaders.task_scores(version, filters).filter(pl.col("step_id").is_in(kept["step_id"].to_list()))
        agg = scores.aggregate_over_seeds(tasks, scores=("stable_score",),
                                          by=(*scores.CONFIG_KEYS, "task", "group"))
        fig = afig.per_task_figure(agg, opts.axis, color=opts.color, definition=definition)
    else:
        agg = scores.aggregate_over_seeds(kept)
        fig = afig.score_vs_axis_figure(agg, opts.axis, scores=opts.scores, color=opts.color, definition=definition)
    notes.append("error bars: standard error over seeds; n per point in the hover")
    return Built(figure=fig, notes=tuple(notes), table=agg.drop("seeds", strict=False))


def build_tradeoff(version: CatalogVersion, filters: Filters, opts: TradeoffOptions) -> Built:
    final = _final_models(version, filters)
    if final["vl_score"].is_null().all():
        raise NothingToPlot("no VL scores among the evaluated runs")
    fit = loaders.frontier(version, filters, opts.bootstrap)
    if opts.color not in fit.points.columns:
        # fit_frontier keeps only axes that vary; a constant one is put back for colour and hover.
        values = final[opts.color].drop_nulls().unique().to_list() if opts.color in final.columns else []
        fit = replace(fit, points=fit.points.with_columns(pl.lit(values[0] if len(values) == 1 else None)
                                                          .alias(opts.color)))
    fig = afig.tradeoff_figure(fit, color=opts.color,  # its hover names each point's configuration
                               definition=loaders.stable_definition(version, filters))
    curve = f"; fitted frontier: the least-squares {fit.shape} curve through them" if fit.shape else ""
    notes = (f"{len(fit.points)} configurations (means over seeds), {int(fit.points['on_frontier'].sum())} "
             f"on the frontier{curve}",)
    return Built(figure=fig, notes=notes, table=fit.points)


def build_scaling(version: CatalogVersion, filters: Filters, opts: ScalingOptions) -> Built:
    try:
        pts, fit = loaders.scaling(version, filters, opts.metric, opts.kinds, opts.points_per_run,
                                   opts.skip_fraction, opts.bootstrap, opts.full_grid)
    except ValueError as exc:  # too few points, non-positive values: say so on the page
        raise NothingToPlot(f"cannot fit {opts.metric}: {exc}") from exc
    fig = afig.scaling_fit_figure(pts["params"].to_numpy().astype(float), pts["tokens"].to_numpy(),
                                  pts["value"].to_numpy(), fit, title=f"Scaling law fit of {opts.metric}")
    rows = [{"parameter": p, "estimate": getattr(fit, p), "lo": fit.intervals.get(p, (None, None))[0],
             "hi": fit.intervals.get(p, (None, None))[1]} for p in ("E", "A", "B", "alpha", "beta")]
    notes = (f"{fit.n_points} points from {pts['step_id'].n_unique()} runs of {pts['scale'].n_unique()} scales; "
             f"95% intervals from {fit.bootstrap} bootstrap refits; best of {fit.n_starts} L-BFGS starts"
             + ("" if opts.full_grid else " (a coarse grid: 'Refine' fits from the full 4,500-start grid)"),)
    if pts["params"].n_unique() < 3:
        notes += ("fewer than 3 model sizes: the parameter term (A, α) is not identified",)
    schema = {"parameter": pl.String, "estimate": pl.Float64, "lo": pl.Float64, "hi": pl.Float64}
    return Built(figure=fig, notes=notes, table=pl.DataFrame(rows, schema=schema))


@dataclass(frozen=True, kw_only=True, slots=True)
class PredictionOptions:
    params: float | None = None  # the target's LM parameters; None: the study's next rung
    bootstrap: int = 200  # resamples of the runs within each scale


def prediction_target(version: CatalogVersion, filters: Filters, opts: PredictionOptions) -> float:
    sizes = loaders.trained_sizes(version, filters)
    if len(sizes) < MIN_SCALES:
        raise NothingToPlot(f"prediction needs at least {MIN_SCALES} scales with evaluated runs "
                            f"(these filters leave {len(sizes)})")
    return opts.params or next_scale(sizes)


def build_prediction(version: CatalogVersion, filters: Filters, opts: PredictionOptions) -> Built:
    try:
        report = loaders.prediction(version, filters, prediction_target(version, filters, opts), opts.bootstrap)
    except AnalysisInputError as exc:  # a target inside the trained range, too few runs: say so
        raise NothingToPlot(str(exc)) from exc
    observed = best_by_scale(fit_response_surface(report.runs, score="vl_score", bootstrap=opts.bootstrap))
    fig = prediction_figure(report.prediction, observed)
    return Built(figure=fig, notes=tuple(report_text(report).splitlines()), table=backtest_table(report.backtest))


def build_predicted_frontier(version: CatalogVersion, filters: Filters, opts: PredictionOptions) -> Built:
    report = loaders.prediction(version, filters, prediction_target(version, filters, opts), opts.bootstrap)
    figure = predicted_frontier_figure(report.prediction, definition=loaders.stable_definition(version, filters))
    return Built(figure=figure, notes=(
        f"the VL/text frontier the models predict at {report.prediction.params:.3g} parameters; band: "
        f"{report.prediction.bootstrap} bootstrap refits",))


# name -> (builder, default options); the Export page lists these, pages store their last options.
FIGURES: dict[str, tuple[Callable, object]] = {
    "coverage": (build_coverage, CoverageOptions()),
    "curves": (build_curves, CurvesOptions()),
    "scores": (build_scores, ScoresOptions()),
    "tradeoff": (build_tradeoff, TradeoffOptions()),
    "scaling": (build_scaling, ScalingOptions()),
    "prediction": (build_prediction, PredictionOptions()),
    "prediction_frontier": (build_predicted_frontier, PredictionOptions()),
}
