"""Stable scores and their aggregates: per task, per eval step, and per configuration over seeds.

Stable score = the task's primary metric − its chance level (DESIGN §1; `difference`), or DCLM's
centered accuracy (score − chance) / (1 − chance) when the study says `[eval] stable_score =
"centered"`; the evals rows mark which of a task's metrics is primary (`primary_metric`). Per step:
the VL average, the text average and a configurable k-task average (the paper's 6-task average),
each over benchmarks: the splits of a folded suite (POPE) count as one task, their mean. Per
configuration: mean, standard error and run count over seeds. Nothing is dropped silently: counts
travel with means.
"""

from __future__ import annotations

from typing import Any, Sequence

import polars as pl

from analysis.errors import AnalysisInputError
from analysis.schema import AXES, FOLDED_SUITES, LOSS_METRIC
from models.stepfiles import STABLE_DEFINITIONS

SCORES = ("vl_score", "text_score", "avg_score")  # per-step aggregates, in display order
CONFIG_AXES = tuple(a for a in AXES if a != "seed")  # the axes a configuration sets: all but the seed
# What tells configurations apart: those axes and config_id (analysis.configid: every other
# result-changing field), so an edited study's old and new runs are never averaged as seeds.
CONFIG_KEYS = (*CONFIG_AXES, "config_id")
# How each definition (models.stepfiles.STABLE_DEFINITIONS) is written in axis titles and legends.
STABLE_FORMULAS = {"difference": "score − chance", "centered": "(score − chance) / (1 − chance)"}
_SCORE_TITLES = {"vl_score": "VL stable score", "text_score": "text stable score",
                 "avg_score": "k-task average stable score"}


def stable_title(definition: str = "difference") -> str:
    """'stable score (<its formula>)' under the study's definition."""
    return f"stable score ({STABLE_FORMULAS[definition]})"


def score_label(score: str, definition: str = "difference") -> str:
    """A per-step score's title under the study's definition ('VL stable score (score − chance)');
    any other name as it is."""
    return f"{_SCORE_TITLES[score]} ({STABLE_FORMULAS[definition]})" if score in _SCORE_TITLES else score


def stable_scores(evals: pl.DataFrame) -> pl.DataFrame:
    """The primary rows of eval rows (columns task, group, value, chance; `primary_metric` where a
    task reports several metrics) with `stable_score` = value − chance; held-out loss rows are no
    task's score, whatever their primary_metric says."""
    for col in ("task", "group", "value", "chance"):
        if col not in evals.columns:
            raise AnalysisInputError(f"eval rows: missing column {col!r}")
    if "primary_metric" in evals.columns:
        evals = evals.filter(pl.col("primary_metric"))
    if "metric" in evals.columns:
        evals = evals.filter(pl.col("metric") != LOSS_METRIC)
    return evals.with_columns((pl.col("value") - pl.col("chance")).alias("stable_score"))


def centered(scores: pl.DataFrame, definition: str = "difference") -> pl.DataFrame:
    """Stable scores under `definition`: `difference` leaves them; `centered` divides each by
    1 − chance (DCLM's centered accuracy; null where chance is 1, which leaves nothing to score).
    `stable_scale` is the factor on score − chance (1, or 1/(1 − chance)): what an item bootstrap
    redrawing accuracies multiplies by to stay on the same scale."""
    if definition not in STABLE_DEFINITIONS:
        raise AnalysisInputError(f"stable score definition {definition!r}; known: {', '.join(STABLE_DEFINITIONS)}")
    if "stable_score" not in scores.columns:
        scores = stable_scores(scores)
    if definition == "difference":
        return scores.with_columns(pl.lit(1.0).alias("stable_scale"))
    scale = pl.when(pl.col("chance") < 1).then(1 / (1 - pl.col("chance"))).otherwise(None)
    return scores.with_columns(scale.alias("stable_scale")).with_columns(
        (pl.col("stable_score") * pl.col("stable_scale")).alias("stable_score"))


def benchmark(task: str) -> str:
    """The benchmark a task counts as in the averages: `pope_random` → `pope`, else itself."""
    return next((suite for suite in FOLDED_SUITES if task.startswith(suite + "_")), task)


def benchmark_expr() -> pl.Expr:
    """`benchmark` of the `task` column, as a polars expression (aliased `benchmark`)."""
    expr = pl.col("task")
    for suite in FOLDED_SUITES:
        expr = pl.when(pl.col("task").str.starts_with(suite + "_")).then(pl.lit(suite)).otherwise(expr)
    return expr.alias("benchmark")


def step_scores(scores: pl.DataFrame, *, average_tasks: Sequence[str] | None = None) -> pl.DataFrame:
    """One row per eval step: its axes, vl_score, text_score, avg_score and the task counts behind them.

    Each average is over benchmarks: a folded suite's splits (POPE's) are averaged into one task
    first, and the counts count benchmarks. avg_score is the mean over `average_tasks` (benchmarks,
    or tasks of them; every benchmark of the step when None); a step that lacks one of the listed
    benchmarks gets a null avg_score, and n_avg_tasks says how many it had.
    """
    if "stable_score" not in scores.columns:
        scores = stable_scores(scores)
    axes = [a for a in (*AXES, "config_id") if a in scores.columns]
    scores = scores.with_columns(benchmark_expr()).group_by(
        ["step_id", *axes, "group", "benchmark"], maintain_order=True).agg(pl.col("stable_score").mean())
    listed = None if average_tasks is None else sorted({benchmark(t) for t in average_tasks})
    in_avg = pl.lit(True) if listed is None else pl.col("benchmark").is_in(listed)
    wanted = None if listed is None else len(listed)
    out = scores.group_by(["step_id", *axes], maintain_order=True).agg(
        pl.col("stable_score").filter(pl.col("group") == "vl").mean().alias("vl_score"),
        pl.col("stable_score").filter(pl.col("group") == "text").mean().alias("text_score"),
        pl.col("stable_score").filter(in_avg).mean().alias("avg_score"),
        (pl.col("group") == "vl").sum().alias("n_vl_tasks"),
        (pl.col("group") == "text").sum().alias("n_text_tasks"),
        in_avg.sum().alias("n_avg_tasks") if average_tasks is not None else pl.len().alias("n_avg_tasks"),
    )
    if wanted is not None:
        out = out.with_columns(pl.when(pl.col("n_avg_tasks") == wanted).then(pl.col("avg_score"))
                               .otherwise(None).alias("avg_score"))
    return out


def aggregate_over_seeds(steps: pl.DataFrame, *, scores: Sequence[str] = SCORES,
                         by: Sequence[str] = CONFIG_KEYS) -> pl.DataFrame:
    """Per configuration: `<score>_mean`, `<score>_stderr` (null with one run), `<score>_n`, and n_runs."""
    keys = [a for a in by if a in steps.columns]
    aggs: list[pl.Expr] = [pl.len().alias("n_runs")]
    if "seed" in steps.columns:
        aggs.append(pl.col("seed").unique().sort().alias("seeds"))
    for s in scores:
        n = pl.col(s).count()
        aggs += [pl.col(s).mean().alias(f"{s}_mean"),
                 pl.when(n > 1).then(pl.col(s).std() / n.sqrt()).otherwise(None).alias(f"{s}_stderr"),
                 n.alias(f"{s}_n")]
    return steps.group_by(keys, maintain_order=True).agg(aggs).sort(keys, nulls_last=True)


def varied_axes(steps: pl.DataFrame, axes: Sequence[str] = CONFIG_AXES) -> list[str]:
    """The axes that take more than one value in these rows."""
    return [a for a in axes if a in steps.columns and steps[a].n_unique() > 1]


def mode_value(column: pl.Series) -> Any:
    """The value most rows have (ties: the smallest), null included as a value."""
    counts = column.value_counts(sort=False).sort(["count", column.name], descending=[True, False],
                                                 nulls_last=True)
    return counts[column.name][0]


def fix_other_axes(steps: pl.DataFrame, vary: Sequence[str], *, axes: Sequence[str] = CONFIG_AXES
                   ) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The slice where every axis not in `vary` is at its most common value; also returns those values.

    An axis determined by the varied ones (params by scale, schedule_policy by intro_fraction under
    the paper's schedule) is left alone: fixing it would throw away the varied axis's values.
    """
    fixed: dict[str, Any] = {}
    keys = [v for v in vary if v in steps.columns]
    for axis in axes:
        if axis in vary or axis not in steps.columns or steps[axis].n_unique() <= 1:
            continue
        if keys and steps.group_by(keys).agg(pl.col(axis).n_unique())[axis].max() <= 1:
            continue
        value = mode_value(steps[axis])
        fixed[axis] = value
        steps = steps.filter(pl.col(axis).is_null() if value is None else pl.col(axis) == value)
    return steps, fixed


def main_stage(steps: pl.DataFrame) -> pl.DataFrame:
    """The evaluations of the final models: fine-tuned if the study fine-tunes, else the branches."""
    for stage in ("finetune", "branch"):
        chosen = steps.filter(pl.col("stage") == stage)
        if len(chosen):
            return chosen
    return steps.filter(pl.col("stage").is_null() | (pl.col("stage") != "trunk"))


def text_only_baseline(steps: pl.DataFrame) -> pl.DataFrame:
    """Text score of each scale's fully trained text-only trunk: mean, stderr, n over seeds.

    `vlmsweep run` evaluates the trunk at each intro fraction's checkpoint; the fully trained one
    is checkpoint 1.0 (null: an evaluation of the trunk's final weights written without one).
    """
    trunks = steps.filter((pl.col("stage") == "trunk")
                          & (pl.col("checkpoint").is_null() | (pl.col("checkpoint") >= 1.0)))
    return aggregate_over_seeds(trunks, scores=("text_score",), by=("scale", "params"))
