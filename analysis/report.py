"""`vlmsweep report`: every figure a study's results support (PNG, SVG, PDF and the CSV of the
plotted data), booktabs LaTeX tables of the main results, and findings.md.

A figure whose axis the study did not vary is skipped, and the reason is listed in the summary
and in findings.md; so are planned evaluations with no result (missing_cells.csv).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import plotly.graph_objects as go
import polars as pl

from analysis import figures, queries, scores, tables
from analysis.errors import AnalysisInputError
from analysis.export import export_figures
from analysis.frontier import fit_frontier
from analysis.scaling import fit_scaling_law
from analysis.store import connect
from analysis.surface import best_fraction_trend, fit_response_surface


@dataclass(frozen=True, kw_only=True, slots=True)
class ReportSummary:
    out_dir: Path
    study: str | None
    written: tuple[Path, ...]  # every file written
    skipped: tuple[tuple[str, str], ...]  # (figure, why it was not drawn)

    def __str__(self) -> str:
        lines = [f"report for {self.study or 'all studies'} in {self.out_dir}: {len(self.written)} files"]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped]
        return "\n".join(lines)


@dataclass(frozen=True, kw_only=True, slots=True)
class StudyData:
    """Everything the report draws from, loaded once."""

    task_scores: pl.DataFrame  # per task per eval step (stable_score)
    steps: pl.DataFrame  # per eval step: vl/text/avg scores
    main: pl.DataFrame  # evaluations of the final models (fine-tuned, else branches)
    lr: pl.DataFrame  # lr metric of trunks and branches
    losses: pl.DataFrame  # train_loss and text_loss of trunks and branches
    missing: pl.DataFrame  # planned evaluations with no result


def load_study(con, study: str | None, average_tasks: Sequence[str] | None = None) -> StudyData:
    task_scores = queries.load_stable_scores(con, study)
    steps = scores.step_scores(task_scores, average_tasks=average_tasks)
    return StudyData(task_scores=task_scores, steps=steps, main=scores.main_stage(steps),
                     lr=queries.load_metrics(con, ["lr"], study, kinds=("trunk", "branch")),
                     losses=queries.load_metrics(con, ["train_loss", "text_loss"], study, kinds=("trunk", "branch")),
                     missing=queries.missing_cells(con, study))


FigureList = list[tuple[str, go.Figure]]
Skipped = list[tuple[str, str]]


def _axis_figures(data: StudyData, out: FigureList, skipped: Skipped) -> None:
    """Scores vs each varied axis (Figs. 4, 7, 8), per task for intro_fraction."""
    varied = scores.varied_axes(data.main)
    for axis, name in (("intro_fraction", "scores_vs_intro_fraction"),
                       ("instruction_share", "scores_vs_instruction_share"),
                       ("finetune_epochs", "scores_vs_finetune_epochs")):
        if axis not in varied:
            skipped.append((name, f"the study did not vary {axis}"))
            continue
        rows, fixed = scores.fix_other_axes(data.main, [axis, "scale", "seed"])
        note = ", ".join(f"{k} = {v}" for k, v in fixed.items())
        out.append((name, figures.score_vs_axis_figure(scores.aggregate_over_seeds(rows), axis,
                                                       scores=scores.SCORES,
                                                       title=f"Scores vs {axis}" + (f" ({note})" if note else ""))))
        if axis == "intro_fraction":
            tasks = data.task_scores.join(rows.select("step_id"), on="step_id")
            agg = scores.aggregate_over_seeds(tasks, scores=("stable_score",),
                                              by=(*scores.CONFIG_AXES, "task", "group"))
            out.append(("scores_vs_intro_fraction_per_task", figures.per_task_figure(agg, axis)))


def _ratio_figure(data: StudyData, out: FigureList, skipped: Skipped) -> None:
    """Figs. 5-6: scores vs image ratio from a trunk checkpoint and from scratch."""
    if "image_ratio" not in scores.varied_axes(data.main):
        skipped.append(("scores_vs_image_ratio", "the study did not vary image_ratio"))
        return
    rows, _ = scores.fix_other_axes(data.main, ["image_ratio", "intro_fraction", "scale", "seed"])
    fractions = [f for f in rows["intro_fraction"].drop_nulls().unique().to_list() if f > 0]
    if not fractions:
        skipped.append(("scores_vs_image_ratio", "no branch introduced images after f = 0"))
        return
    checkpoint = min(fractions, key=lambda f: abs(f - 0.8))  # the paper's headline fraction
    out.append(("scores_vs_image_ratio", figures.ratio_origin_figure(
        scores.aggregate_over_seeds(rows), checkpoint_fraction=checkpoint, scores=scores.SCORES)))


def _curve_figures(data: StudyData, out: FigureList, skipped: Skipped) -> None:
    trunks, branches = data.lr.filter(pl.col("kind") == "trunk"), data.lr.filter(pl.col("kind") == "branch")
    if len(trunks) and len(branches):
        first = trunks.sort("params", "seed")["step_id"][0]  # one trunk and its branches, as Fig. 3
        chain = data.lr.filter((pl.col("step_id") == first) | (pl.col("parent_id") == first))
        ratios = chain.filter(pl.col("kind") == "branch")["image_ratio"]
        if ratios.n_unique() > 1:  # one ratio, so there is one branch per fraction
            keep = scores.mode_value(ratios)
            chain = chain.filter((pl.col("kind") == "trunk") | (pl.col("image_ratio") == keep))
        out.append(("lr_schedules", figures.lr_schedule_figure(chain)))
    else:
        skipped.append(("lr_schedules", "no lr metrics of a trunk and its branches"))
    branch_loss = data.losses.filter((pl.col("kind") == "branch") & (pl.col("name") == "train_loss"))
    for axis in ("intro_fraction", "image_ratio"):
        if branch_loss[axis].n_unique() > 1:
            rows, _ = scores.fix_other_axes(branch_loss, [axis, "step_id", "step", "tokens", "name", "value"])
            rows = rows.filter(pl.col("params") == rows["params"].max())
            out.append((f"training_loss_by_{axis}", figures.loss_curves_figure(rows, color=axis)))
    trunk_loss = data.losses.filter(pl.col("kind") == "trunk")
    if trunk_loss["scale"].n_unique() > 1:
        out.append(("training_loss_by_scale", figures.loss_curves_figure(trunk_loss, color="scale")))


def _fit_figures(data: StudyData, out: FigureList, skipped: Skipped, bootstrap: int, seed: int) -> dict:
    fits: dict = {"surfaces": {}, "trend": {}, "fixed": {}}
    try:
        out.append(("vl_vs_text_tradeoff", figures.tradeoff_figure(
            fit_frontier(data.main, bootstrap=bootstrap, seed=seed))))
    except ValueError as exc:
        skipped.append(("vl_vs_text_tradeoff", str(exc)))
    varied = scores.varied_axes(data.main)
    if "intro_fraction" in varied or "image_ratio" in varied:
        rows, fits["fixed"] = scores.fix_other_axes(data.main, ["intro_fraction", "image_ratio", "scale", "seed"])
        for score in ("vl_score", "avg_score"):
            try:
                surface = fit_response_surface(rows, score=score, bootstrap=bootstrap, seed=seed)
            except AnalysisInputError as exc:
                skipped.append((f"response_surface ({score})", str(exc)))
                continue
            fits["surfaces"][score], fits["trend"][score] = surface, best_fraction_trend(surface)
        if {"intro_fraction", "image_ratio"} <= set(varied) and "vl_score" in fits["surfaces"]:
            for fit in fits["surfaces"]["vl_score"]:
                out.append((f"response_surface_{fit.scale}", figures.response_surface_figure(
                    fit.grid, scale=fit.scale, score=fit.score)))
    else:
        skipped.append(("response_surface", "the study varied neither intro_fraction nor image_ratio"))
    try:
        _scaling_figure(data, out, skipped)
    except AnalysisInputError as exc:
        skipped.append(("scaling_law_text_loss", str(exc)))
    return fits


def _scaling_figure(data: StudyData, out: FigureList, skipped: Skipped) -> None:
    """Approach 3 over the trunks' text loss, sampled along each trunk past its first 10%."""
    loss = data.losses.filter((pl.col("kind") == "trunk") & (pl.col("name") == "text_loss")
                              & (pl.col("tokens") > 0.1 * pl.col("tokens").max().over("step_id")))
    loss = loss.drop_nulls(["params", "tokens", "value"])
    if loss["params"].n_unique() < 2 or len(loss) < 10:
        skipped.append(("scaling_law_text_loss", "needs trunks at two or more scales"))
        return
    picks = loss.group_by("step_id").agg(pl.all().gather_every(max(1, loss.height // loss["step_id"].n_unique() // 10)))
    points = picks.explode(pl.exclude("step_id"))
    n, d, l_ = (points[c].to_numpy().astype(float) for c in ("params", "tokens", "value"))
    fit = fit_scaling_law(n, d, l_)
    out.append(("scaling_law_text_loss", figures.scaling_fit_figure(n, d, l_, fit, title="Trunk text loss")))


def _comparisons(data: StudyData) -> tuple[pl.DataFrame | None, pl.DataFrame | None]:
    """(80% vs 100% per scale and ratio, text cost per scale) from per-configuration means."""
    rows, _ = scores.fix_other_axes(data.main, ["intro_fraction", "image_ratio", "scale", "seed"])
    agg = scores.aggregate_over_seeds(rows)
    at = {f: agg.filter(pl.col("intro_fraction") == f) for f in (0.8, 1.0)}
    late = None
    if len(at[0.8]) and len(at[1.0]):
        both = at[0.8].join(at[1.0], on=["scale", "image_ratio"], suffix="_full")
        late = both.select("scale", "image_ratio", *[
            e for s in scores.SCORES for e in (
                (pl.col(f"{s}_mean") - pl.col(f"{s}_mean_full")).alias(f"{s}_diff"),
                (pl.col(f"{s}_stderr") ** 2 + pl.col(f"{s}_stderr_full") ** 2).sqrt().alias(f"{s}_diff_stderr"))])
    base = scores.text_only_baseline(data.steps)
    cost = None
    if len(base) and len(agg):
        best = agg.sort("vl_score_mean", descending=True, nulls_last=True).group_by("scale", maintain_order=True).first()
        cost = base.join(best, on="scale", suffix="_vl").select(
            "scale", pl.col("text_score_mean").alias("text_only"), pl.col("text_score_mean_vl").alias("text_at_best_vl"),
            "intro_fraction", "image_ratio",
            (pl.col("text_score_mean") - pl.col("text_score_mean_vl")).alias("text_cost"))
    return late, cost


def write_report(root, out_dir, *, study: str | None = None, average_tasks: Sequence[str] | None = None,
                 bootstrap: int = 200, seed: int = 0) -> ReportSummary:
    """Write the study's report into out_dir (figures/, tables/, findings.md, missing_cells.csv)."""
    out = Path(out_dir)
    with connect(root) as con:
        name = queries.resolve_study(con, study)
        data = load_study(con, name, average_tasks)
    if len(data.main) == 0:
        raise AnalysisInputError(f"{root}: study {name or '(all)'} has no evaluated runs to report")
    figs: FigureList = []
    skipped: Skipped = []
    builders: list[Callable] = [_axis_figures, _ratio_figure, _curve_figures]
    for build in builders:
        build(data, figs, skipped)
    fits = _fit_figures(data, figs, skipped, bootstrap, seed)
    written = export_figures(figs, out / "figures")
    written += _write_texts(out, data, fits, name, skipped, bootstrap)
    return ReportSummary(out_dir=out, study=name, written=tuple(written), skipped=tuple(skipped))


def _write_texts(out: Path, data: StudyData, fits: dict, name: str | None, skipped: Skipped,
                 bootstrap: int) -> list[Path]:
    (out / "tables").mkdir(parents=True, exist_ok=True)
    agg = scores.aggregate_over_seeds(data.main)
    cols = [(a, a.replace("_", " ")) for a in ("scale", *scores.varied_axes(data.main)) if a != "params"]
    texts = {out / "tables" / "main_results.tex": tables.latex_table(
        agg, [*dict.fromkeys(cols), ("n_runs", "runs")], scores=scores.SCORES, label="tab:main-results",
        caption="Stable scores (accuracy minus chance), mean ± standard error over seeds.")}
    late, cost = _comparisons(data)
    for fname, frame in (("late_vs_full.tex", late), ("text_cost.tex", cost)):
        if frame is not None and len(frame):
            texts[out / "tables" / fname] = tables.latex_table(
                frame, [(c, c.replace("_", " ")) for c in frame.columns], label=f"tab:{fname[:-4]}",
                caption=fname[:-4].replace("_", " "))
    texts[out / "findings.md"] = tables.findings_markdown(
        study=name, n_runs=len(data.main), missing=data.missing, fits=fits["surfaces"], trend=fits["trend"],
        late_vs_full=late, text_cost=cost, fixed=fits["fixed"], skipped=skipped, bootstrap=bootstrap)
    for path, text in texts.items():
        path.write_text(text)
    agg.drop("seeds").write_csv(out / "tables" / "main_results.csv")
    data.missing.write_csv(out / "missing_cells.csv")
    return [*texts, out / "tables" / "main_results.csv", out / "missing_cells.csv"]
