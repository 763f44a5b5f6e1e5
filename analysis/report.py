"""`vlmsweep report`: every figure a study's results support (the CSV of the plotted data and an
interactive HTML page; PNG, SVG and PDF where a browser is found), booktabs LaTeX tables of the
main results, and findings.md (with the adaptive search's comparison with the grid when
`vlmsweep search --compare-grid` wrote one, and the paper's published numbers beside the cells they
describe: `analysis.paper`, also tables/against_paper.csv).

Real studies are often thin (one scale, one seed, a single ratio, failed steps, only trunk
evaluations): a figure the data cannot support is skipped and the reason is listed in the summary
and in findings.md, as are planned evaluations with no result (missing_cells.csv). A figure that
fails unexpectedly is skipped the same way (with a warning), so one bad figure never costs the report.
"""

from __future__ import annotations

import json
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import polars as pl

from analysis import findings, paper, queries, scores, tables
from analysis.errors import AnalysisInputError, AnalysisWarning
from analysis.export import FORMATS, export_figures
from analysis.filters import Filters
from analysis.predict_io import findings_markdown as prediction_markdown
from analysis.predict_io import prediction_runs, report_json
from analysis.report_figures import (
    Built,
    StudyData,
    axis_figures,
    curve_figures,
    fit_figures,
    prediction_figures,
    ratio_figure,
)
from analysis.search_findings import SearchComparison, load_comparisons, search_markdown
from analysis.stability import stability_markdown
from analysis.store import connect

CORE_SCORES = ("vl_core", "text_core")  # averages over the tasks each scale learns (analysis.findings)
ITEM_BOOTSTRAP = 1000  # resamples of the eval items behind every finding


@dataclass(frozen=True, kw_only=True, slots=True)
class ReportSummary:
    out_dir: Path
    study: str | None
    written: tuple[Path, ...]  # every file written
    skipped: tuple[tuple[str, str], ...]  # (figure, why it was not drawn)
    notes: tuple[str, ...] = ()  # limits of the data (one seed, no intervals, ...)
    export_note: str | None = None  # image formats skipped (no browser) and how to add them

    def __str__(self) -> str:
        lines = [f"report for {self.study or 'all studies'} in {self.out_dir}: {len(self.written)} files"]
        lines += [f"  note: {n}" for n in self.notes]
        if self.export_note:
            lines.append(f"  figures: {self.export_note}")
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped]
        return "\n".join(lines)


def load_study(con, study: str | None, average_tasks: Sequence[str] | None = None) -> StudyData:
    definition = queries.stable_definition(con, study)
    task_scores = scores.centered(queries.load_stable_scores(con, study), definition)
    steps = scores.step_scores(task_scores, average_tasks=average_tasks)
    main = scores.main_stage(steps)
    core = findings.core_tasks(task_scores, main)
    steps = findings.with_core_scores(steps, task_scores, core)
    return StudyData(task_scores=task_scores, steps=steps, main=scores.main_stage(steps), core=core,
                     definition=definition,
                     lr=queries.load_metrics(con, ["lr"], study, kinds=("trunk", "branch")),
                     losses=queries.load_metrics(con, ["train_loss", "text_loss"], study, kinds=("trunk", "branch")),
                     missing=queries.missing_cells(con, study), prediction_runs=prediction_runs(con, study)[0],
                     events=queries.training_events(con, Filters(study=study)),
                     diverged=queries.diverged_steps(con, study))


def _guarded(builder: Callable[[StudyData, Built], None], data: StudyData, built: Built) -> None:
    """Run one figure builder; an unexpected error skips its figures (named) instead of the report."""
    try:
        builder(data, built)
    except Exception as exc:  # noqa: BLE001 - a report with one figure missing beats no report
        name = builder.__name__
        built.skipped.append((name, f"could not be drawn ({type(exc).__name__}: {exc})"))
        warnings.warn(f"report: {name} failed and was skipped:\n{traceback.format_exc()}",
                      AnalysisWarning, stacklevel=2)


def _data_notes(data: StudyData) -> list[str]:
    """What the study's shape rules out, said once (figures and tables then just omit it)."""
    notes = []
    if len(data.main):
        runs = scores.aggregate_over_seeds(data.main)["n_runs"]
        if runs.max() < 2:
            notes.append("every configuration has a single run (one seed): no standard errors over "
                         "seeds, no error bars")
        elif runs.min() < 2:
            notes.append(f"{(runs < 2).sum()} of {len(runs)} configurations have a single run: "
                         "those have no standard error")
    else:
        notes.append("no branch or fine-tuned model has an evaluation: only the trunks and the "
                     "training curves are reported")
    if not len(data.steps.filter(pl.col("stage") == "trunk")):
        notes.append("no text-only trunk evaluations: the text cost of images is not measured")
    return notes


def write_report(root, out_dir, *, study: str | None = None, average_tasks: Sequence[str] | None = None,
                 bootstrap: int = 200, seed: int = 0, formats: Sequence[str] = FORMATS) -> ReportSummary:
    """Write the study's report into out_dir (figures/, tables/, findings.md, missing_cells.csv).

    `formats` are the image formats of each figure (its CSV and HTML are always written; () for none).
    """
    out = Path(out_dir)
    with connect(root) as con:
        name = queries.resolve_study(con, study)
        data = load_study(con, name, average_tasks)
    search = load_comparisons(root, name)  # read first: a malformed file fails before any rendering
    if len(data.steps) == 0 and len(data.lr) == 0 and len(data.losses) == 0:
        diverged = f" ({len(data.diverged)} step(s) diverged: see `vlmsweep status`)" if len(data.diverged) else ""
        raise AnalysisInputError(f"{root}: study {name or '(all)'} has no evaluated runs and no training "
                                 f"curves to report{diverged}")
    built = Built(bootstrap=bootstrap, seed=seed)
    built.notes += _data_notes(data)
    if data.definition == "centered":
        built.notes.append("stable scores are centered as DCLM's: (score − chance) / (1 − chance)")
    for builder in (axis_figures, ratio_figure, curve_figures, fit_figures, prediction_figures):
        _guarded(builder, data, built)
    exported = export_figures(built.figures, out / "figures", formats)
    written = [*exported.written, *_write_texts(out, data, built, name, search)]
    return ReportSummary(out_dir=out, study=name, written=tuple(written), skipped=tuple(built.skipped),
                         notes=tuple(dict.fromkeys(built.notes)), export_note=exported.note)


def _comparisons(data: StudyData) -> tuple[pl.DataFrame | None, pl.DataFrame | None]:
    """(late vs full per scale and ratio, text cost per scale): the LaTeX tables' frames.

    "Late" is the paper's f = 0.8 where the study has it, else the f in (0, 1) closest to it.
    """
    if len(data.main) == 0:
        return None, None
    rows, _ = scores.fix_other_axes(data.main, ["intro_fraction", "image_ratio", "scale", "seed"])
    agg = scores.aggregate_over_seeds(rows)
    full = agg.filter(pl.col("intro_fraction") == 1.0)
    partial = [f for f in agg["intro_fraction"].drop_nulls().unique().to_list() if 0 < f < 1]
    late = None
    if len(full) and partial:
        f_late = min(partial, key=lambda f: (abs(f - 0.8), -f))
        both = agg.filter(pl.col("intro_fraction") == f_late).join(full, on=["scale", "image_ratio"], suffix="_full")
        late = both.select("scale", "image_ratio", *[
            e for s in scores.SCORES for e in (
                (pl.col(f"{s}_mean") - pl.col(f"{s}_mean_full")).alias(f"{s}_diff"),
                (pl.col(f"{s}_stderr") ** 2 + pl.col(f"{s}_stderr_full") ** 2).sqrt().alias(f"{s}_diff_stderr"))])
    base = scores.text_only_baseline(data.steps)
    cost = None
    if len(base) and len(agg):
        best = (agg.sort("vl_score_mean", descending=True, nulls_last=True)
                .group_by("scale", maintain_order=True).first())
        cost = base.join(best, on="scale", suffix="_vl").select(
            "scale", pl.col("text_score_mean").alias("text_only"),
            pl.col("text_score_mean_vl").alias("text_at_best_vl"), "intro_fraction", "image_ratio",
            (pl.col("text_score_mean") - pl.col("text_score_mean_vl")).alias("text_cost"))
    return late, cost


def _trunk_scores(data: StudyData) -> pl.DataFrame:
    """Text score of the text-only trunks per scale and checkpoint (mean over seeds)."""
    trunks = data.steps.filter(pl.col("stage") == "trunk")
    agg = scores.aggregate_over_seeds(trunks, scores=("text_score",), by=("scale", "params", "checkpoint"))
    return agg.select("scale", "checkpoint", "n_runs", "text_score_mean", "text_score_stderr")


def _uncertain_sections(data: StudyData, seed: int) -> list[str]:
    """findings.md's effects, trends, text cost and trunk scores, each with its uncertainties."""
    kw = {"bootstrap": ITEM_BOOTSTRAP, "seed": seed}
    return findings.markdown(
        effects=findings.axis_effects(data.main, data.task_scores, data.core, **kw),
        trends=findings.fraction_trends(data.main, data.task_scores, data.core, **kw),
        costs=findings.text_costs(data.steps, data.main, data.task_scores, data.core, **kw),
        trunk=findings.trunk_levels(data.steps, data.task_scores, data.core, **kw),
        core=data.core, bootstrap=ITEM_BOOTSTRAP)


def _write_texts(out: Path, data: StudyData, built: Built, name: str | None,
                 search: list[SearchComparison]) -> list[Path]:
    (out / "tables").mkdir(parents=True, exist_ok=True)
    agg = scores.aggregate_over_seeds(data.main, scores=(*scores.SCORES, *CORE_SCORES))
    cols = [(a, a.replace("_", " ")) for a in ("scale", *scores.varied_axes(data.main)) if a != "params"]
    texts = {out / "tables" / "main_results.tex": tables.latex_table(
        agg, [*dict.fromkeys(cols), ("n_runs", "runs")], scores=scores.SCORES, label="tab:main-results",
        caption="Stable scores (each task's primary metric minus its chance level), "
                "mean ± standard error over seeds.")}
    late, cost = _comparisons(data)
    for fname, frame in (("late_vs_full.tex", late), ("text_cost.tex", cost)):
        if frame is not None and len(frame):
            texts[out / "tables" / fname] = tables.latex_table(
                frame, [(c, c.replace("_", " ")) for c in frame.columns], label=f"tab:{fname[:-4]}",
                caption=fname[:-4].replace("_", " "))
    trunk = _trunk_scores(data)
    texts[out / "findings.md"] = tables.findings_markdown(
        study=name, n_runs=len(data.main), missing=data.missing, fits=built.fits["surfaces"],
        fixed=built.fits["fixed"], uncertain=_uncertain_sections(data, built.seed),
        skipped=built.skipped, bootstrap=built.bootstrap, notes=list(dict.fromkeys(built.notes)))
    texts[out / "findings.md"] += "\n" + "\n".join(stability_markdown(data.events, data.diverged))
    if search:  # the adaptive search's comparison with the grid, when search wrote one
        texts[out / "findings.md"] += "\n" + "\n".join(search_markdown(search))
    numbers = paper.load_paper_numbers()  # the published numbers this study's cells can be held against
    against = paper.against_paper(agg, paper.task_levels(data.main, data.task_scores), numbers)
    texts[out / "findings.md"] += "\n" + "\n".join(paper.markdown(against, len(numbers)))
    if len(against):
        texts[out / "tables" / "against_paper.csv"] = against.write_csv()
    if built.fits["prediction"] is not None:  # the next rung's best mix, with its backtest
        texts[out / "findings.md"] += "\n" + "\n".join(prediction_markdown(built.fits["prediction"]))
        texts[out / "tables" / "prediction.json"] = json.dumps(report_json(built.fits["prediction"]), indent=1,
                                                              default=float)
    for path, text in texts.items():
        path.write_text(text)
    paths = [*texts, out / "tables" / "main_results.csv", out / "missing_cells.csv"]
    agg.drop("seeds", strict=False).write_csv(out / "tables" / "main_results.csv")
    data.missing.write_csv(out / "missing_cells.csv")
    if len(trunk):
        trunk.write_csv(out / "tables" / "trunk_text_scores.csv")
        paths.append(out / "tables" / "trunk_text_scores.csv")
    return paths
