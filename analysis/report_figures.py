"""Which figures and fits a study's results support, for `analysis.report`: each builder appends
what it can draw to a `Built` and says why it skipped the rest (one scale, one seed, one ratio, no
evaluated VL runs, ...), so the report never fails on a thin study.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import plotly.graph_objects as go
import polars as pl

from analysis import figures, scores
from analysis.errors import AnalysisInputError
from analysis.frontier import fit_frontier
from analysis.predict import MIN_SCALES, next_scale
from analysis.predict_figures import predicted_frontier_figure, prediction_figure
from analysis.predict_io import run_prediction_on
from analysis.scaling import fit_scaling_law
from analysis.surface import best_by_scale, fit_response_surface

NO_VL_RUNS = "no branch or fine-tuned model has an evaluation"


@dataclass(frozen=True, kw_only=True, slots=True)
class StudyData:
    """Everything the report draws from, loaded once."""

    task_scores: pl.DataFrame  # per task per eval step (stable_score)
    steps: pl.DataFrame  # per eval step: vl/text/avg scores
    main: pl.DataFrame  # evaluations of the final models (fine-tuned, else branches)
    lr: pl.DataFrame  # lr metric of trunks and branches
    losses: pl.DataFrame  # train_loss and text_loss of trunks and branches
    missing: pl.DataFrame  # planned evaluations with no result
    core: pl.DataFrame  # per scale and task: whether it is a core task (analysis.findings.core_tasks)
    prediction_runs: pl.DataFrame  # one row per final model with held-out losses and D (analysis.predict)
    events: pl.DataFrame  # loss spikes, skipped batches, rewinds (analysis.queries.training_events)
    diverged: pl.DataFrame  # steps failed with reason diverged (analysis.queries.diverged_steps)
    definition: str = "difference"  # the study's stable score (models.stepfiles.STABLE_DEFINITIONS)


@dataclass(kw_only=True, slots=True)
class Built:
    """What the builders produced: figures in order, skipped figures with reasons, fits, notes."""

    bootstrap: int
    seed: int
    figures: list[tuple[str, go.Figure]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fits: dict = field(default_factory=lambda: {"surfaces": {}, "fixed": {}, "prediction": None})


def axis_figures(data: StudyData, built: Built) -> None:
    """Scores vs each varied axis (Figs. 4, 7, 8), per task for intro_fraction."""
    varied = scores.varied_axes(data.main)
    for axis, name in (("intro_fraction", "scores_vs_intro_fraction"),
                       ("instruction_share", "scores_vs_instruction_share"),
                       ("finetune_epochs", "scores_vs_finetune_epochs")):
        if not len(data.main):
            built.skipped.append((name, NO_VL_RUNS))
            continue
        if axis not in varied:
            built.skipped.append((name, f"the study did not vary {axis}"))
            continue
        rows, fixed = scores.fix_other_axes(data.main, [axis, "scale", "seed"])
        note = ", ".join(f"{k} = {v}" for k, v in fixed.items())
        built.figures.append((name, figures.score_vs_axis_figure(
            scores.aggregate_over_seeds(rows), axis, scores=scores.SCORES,
            title=f"Scores vs {axis}" + (f" ({note})" if note else ""), definition=data.definition)))
        if axis == "intro_fraction":
            tasks = data.task_scores.join(rows.select("step_id"), on="step_id")
            agg = scores.aggregate_over_seeds(tasks, scores=("stable_score",),
                                              by=(*scores.CONFIG_KEYS, "task", "group"))
            built.figures.append(("scores_vs_intro_fraction_per_task",
                                  figures.per_task_figure(agg, axis, definition=data.definition)))


def ratio_figure(data: StudyData, built: Built) -> None:
    """Figs. 5-6: scores vs image ratio from a trunk checkpoint and from scratch."""
    name = "scores_vs_image_ratio"
    if not len(data.main):
        built.skipped.append((name, NO_VL_RUNS))
        return
    if "image_ratio" not in scores.varied_axes(data.main):
        built.skipped.append((name, "the study did not vary image_ratio"))
        return
    rows, _ = scores.fix_other_axes(data.main, ["image_ratio", "intro_fraction", "scale", "seed"])
    fractions = [f for f in rows["intro_fraction"].drop_nulls().unique().to_list() if f > 0]
    if not fractions:
        built.skipped.append((name, "no branch introduced images after f = 0"))
        return
    # the paper's headline fraction, among those where the ratio actually varies
    varied_at = [f for f in fractions if rows.filter(pl.col("intro_fraction") == f)["image_ratio"].n_unique() > 1]
    checkpoint = min(varied_at or fractions, key=lambda f: abs(f - 0.8))
    built.figures.append((name, figures.ratio_origin_figure(
        scores.aggregate_over_seeds(rows), checkpoint_fraction=checkpoint, scores=scores.SCORES,
        definition=data.definition)))


def curve_figures(data: StudyData, built: Built) -> None:
    """Fig. 3 (LR schedules of one trunk and its branches) and training-loss curves."""
    trunks, branches = data.lr.filter(pl.col("kind") == "trunk"), data.lr.filter(pl.col("kind") == "branch")
    if len(trunks) and len(branches.filter(pl.col("parent_id").is_in(trunks["step_id"].unique().implode()))):
        with_branches = trunks.filter(pl.col("step_id").is_in(branches["parent_id"].unique().implode()))
        first = with_branches.sort("params", "seed")["step_id"][0]  # one trunk and its branches, as Fig. 3
        chain = data.lr.filter((pl.col("step_id") == first) | (pl.col("parent_id") == first))
        ratios = chain.filter(pl.col("kind") == "branch")["image_ratio"]
        if ratios.n_unique() > 1:  # one ratio, so there is one branch per fraction
            keep = scores.mode_value(ratios)
            chain = chain.filter((pl.col("kind") == "trunk") | (pl.col("image_ratio") == keep))
        built.figures.append(("lr_schedules", figures.lr_schedule_figure(chain)))
    else:
        built.skipped.append(("lr_schedules", "no lr metrics of a trunk together with its branches"))
    _branch_loss_figures(data, built)
    trunk_loss = data.losses.filter((pl.col("kind") == "trunk") & (pl.col("name") == "train_loss"))
    if len(trunk_loss):
        built.figures.append(("training_loss_by_scale", figures.loss_curves_figure(
            trunk_loss, color="scale", x_title="trunk tokens", title="Trunk (text-only) training loss by scale")))
    else:
        built.skipped.append(("training_loss_by_scale", "no train_loss metrics of a trunk"))


def _branch_loss_figures(data: StudyData, built: Built) -> None:
    """Branch training loss by intro_fraction and by image_ratio at the largest scale, others fixed."""
    loss = data.losses.filter((pl.col("kind") == "branch") & (pl.col("name") == "train_loss"))
    per_step = loss.select("step_id", *[a for a in scores.CONFIG_AXES if a in loss.columns], "seed").unique()
    for axis in ("intro_fraction", "image_ratio"):
        name = f"training_loss_by_{axis}"
        if not len(per_step) or per_step[axis].n_unique() < 2:
            built.skipped.append((name, f"no branch training curves at two or more values of {axis}"))
            continue
        top = per_step["params"].max()
        largest = per_step if top is None else per_step.filter(pl.col("params") == top)
        chosen, fixed = scores.fix_other_axes(largest, [axis, "scale", "seed"])
        rows = loss.join(chosen.select("step_id"), on="step_id")
        note = ", ".join(f"{k} = {v}" for k, v in {"scale": largest["scale"][0], **fixed}.items())
        fig = figures.loss_curves_figure(rows, color=axis, x_title="image-stage tokens (from the branch's start)",
                                         title=f"Branch training loss by {axis} ({note})")
        built.figures.append((name, fig))


def fit_figures(data: StudyData, built: Built) -> None:
    """The trade-off frontier, the response surfaces and the trunks' scaling law."""
    if not len(data.main):
        for name in ("vl_vs_text_tradeoff", "response_surface"):
            built.skipped.append((name, NO_VL_RUNS))
    else:
        _tradeoff(data, built)
        _surfaces(data, built)
    try:
        _scaling_figure(data, built)
    except AnalysisInputError as exc:
        built.skipped.append(("scaling_law_text_loss", str(exc)))


def _tradeoff(data: StudyData, built: Built) -> None:
    try:
        frontier = fit_frontier(data.main, bootstrap=built.bootstrap, seed=built.seed)
    except AnalysisInputError as exc:
        built.skipped.append(("vl_vs_text_tradeoff", str(exc)))
        return
    built.notes += [f"trade-off frontier: {n}" for n in frontier.notes]
    built.figures.append(("vl_vs_text_tradeoff", figures.tradeoff_figure(frontier, definition=data.definition)))


def _surfaces(data: StudyData, built: Built) -> None:
    varied = scores.varied_axes(data.main)
    if "intro_fraction" not in varied and "image_ratio" not in varied:
        built.skipped.append(("response_surface", "the study varied neither intro_fraction nor image_ratio"))
        return
    rows, built.fits["fixed"] = scores.fix_other_axes(data.main, ["intro_fraction", "image_ratio", "scale", "seed"])
    for score in ("vl_score", "avg_score"):
        try:
            surface = fit_response_surface(rows, score=score, bootstrap=built.bootstrap, seed=built.seed)
        except AnalysisInputError as exc:
            built.skipped.append((f"response_surface ({score})", str(exc)))
            continue
        built.fits["surfaces"][score] = surface
        if any(not fit.intervals for fit in surface):
            built.notes.append(f"response surface ({score}): no bootstrap interval where a scale has no "
                               "more runs than the surface has terms")
    if not {"intro_fraction", "image_ratio"} <= set(varied):
        built.skipped.append(("response_surface", "a heatmap needs both intro_fraction and image_ratio varied"))
    elif "vl_score" in built.fits["surfaces"]:
        for fit in built.fits["surfaces"]["vl_score"]:
            observed = rows.filter(pl.col("scale") == fit.scale)
            built.figures.append((f"response_surface_{fit.scale}", figures.response_surface_figure(
                fit.grid, scale=fit.scale, score=fit.score, observed=observed, definition=data.definition)))


def _scaling_figure(data: StudyData, built: Built) -> None:
    """Approach 3 over the trunks' text loss, sampled along each trunk past its first 10%."""
    loss = data.losses.filter((pl.col("kind") == "trunk") & (pl.col("name") == "text_loss")
                              & (pl.col("tokens") > 0.1 * pl.col("tokens").max().over("step_id")))
    loss = loss.drop_nulls(["params", "tokens", "value"])
    sizes = loss["params"].n_unique()
    if sizes < 3 or len(loss) < 10:
        # E + A/N^α + B/D^β: two sizes give two asymptotes for three unknowns (E, A, α)
        built.skipped.append(("scaling_law_text_loss", f"needs trunks at three or more scales (has {sizes}): "
                              "E, A and alpha are not identifiable from fewer sizes"))
        return
    picks = loss.group_by("step_id").agg(pl.all().gather_every(max(1, loss.height // loss["step_id"].n_unique() // 10)))
    points = picks.explode(pl.exclude("step_id"))
    n, d, l_ = (points[c].to_numpy().astype(float) for c in ("params", "tokens", "value"))
    fit = fit_scaling_law(n, d, l_)
    built.figures.append(("scaling_law_text_loss", figures.scaling_fit_figure(n, d, l_, fit, title="Trunk text loss")))


def prediction_figures(data: StudyData, built: Built) -> None:
    """The Predictions section: the best f and ratio at the next rung, with the backtest."""
    sizes = data.prediction_runs.filter(pl.col("vl_score").is_not_null())["params"].drop_nulls().unique().to_list()
    try:
        if len(sizes) < MIN_SCALES:
            raise AnalysisInputError(f"prediction needs at least {MIN_SCALES} scales with evaluated runs "
                                     f"(has {len(sizes)})")
        report = run_prediction_on(data.prediction_runs, params=next_scale(sizes), bootstrap=built.bootstrap,
                                   seed=built.seed)
    except AnalysisInputError as exc:
        built.skipped += [(name, str(exc)) for name in ("prediction_best_mix", "prediction_frontier")]
        return
    built.fits["prediction"] = report
    observed = best_by_scale(fit_response_surface(report.runs, score="vl_score", bootstrap=built.bootstrap,
                                                  seed=built.seed))
    built.figures.append(("prediction_best_mix", prediction_figure(report.prediction, observed)))
    built.figures.append(("prediction_frontier",
                          predicted_frontier_figure(report.prediction, definition=data.definition)))
