"""Every figure builder on a synthetic results set: traces, axis titles, legends, error bars,
hollow markers; the CSV of the plotted data; and a real kaleido render to PNG, SVG and PDF."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import polars as pl
import pytest

from analysis import figures, queries, report
from analysis.export import export_figures, figure_data
from analysis.frontier import fit_frontier
from analysis.report_figures import Built, axis_figures, ratio_figure
from analysis.scaling import fit_scaling_law
from analysis.scores import CONFIG_AXES, STABLE_FORMULAS, aggregate_over_seeds, fix_other_axes, main_stage, step_scores
from analysis.store import connect, ingest
from analysis.surface import fit_response_surface
from analysis.synthetic import SyntheticSpec, write_synthetic_study


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("figs")
    write_synthetic_study(root, SyntheticSpec(finetune_epochs=(1, 2), instruction_shares=(0.0, 0.2),
                                              intro_fractions=(0.0, 0.4, 0.8, 1.0), metric_rows=8))
    ingest(root)
    with connect(root) as con:
        tasks = queries.load_stable_scores(con)
        return {"tasks": tasks, "main": main_stage(step_scores(tasks)),
                "lr": queries.load_metrics(con, ["lr"], kinds=("trunk", "branch")),
                "loss": queries.load_metrics(con, ["train_loss"])}


def titled(fig: go.Figure) -> None:
    """Every figure has a title, a titled y axis on its first panel, titled x axes, a visible legend
    and data traces (panels that share a row or column carry their axis titles only once)."""
    assert fig.layout.title.text and fig.layout.showlegend
    assert len(data_traces(fig)) > 0
    layout = fig.to_plotly_json()["layout"]
    assert layout["yaxis"].get("title", {}).get("text"), "the first y axis has no title"
    assert any(a.get("title", {}).get("text") for k, a in layout.items() if k.startswith("xaxis"))


def data_traces(fig: go.Figure) -> list:
    """Traces that plot data (not the legend-only entries)."""
    return [t for t in fig.data if t.x is not None and any(x is not None for x in t.x)]


def test_scores_vs_axis_with_hollow_rewarm_markers_and_error_bars(data) -> None:
    for axis in ("intro_fraction", "instruction_share", "finetune_epochs"):
        rows, fixed = fix_other_axes(data["main"], [axis, "scale", "seed"])
        fig = figures.score_vs_axis_figure(aggregate_over_seeds(rows), axis)
        titled(fig)
        assert {t.name for t in data_traces(fig)} == {"scale = 79m", "scale = 411m"}
        assert all(t.error_y.array is not None for t in data_traces(fig))  # two seeds -> stderr bars
        legend = [t for t in fig.data if t.showlegend is not False]
        assert all(t.marker.symbol in ("circle", "circle-open") and t.x == (None,) for t in legend)
    fig = figures.score_vs_axis_figure(aggregate_over_seeds(
        fix_other_axes(data["main"], ["intro_fraction", "scale", "seed"])[0]), "intro_fraction")
    plotted = figure_data(fig)
    hollow = plotted.filter(pl.col("symbol") == "circle-open")["x"].unique().sort().to_list()
    assert hollow == ["0.0", "1.0"]  # the paper's rewarmed points
    assert len(plotted) == sum(len(t.x) for t in data_traces(fig))  # legend-only entries are not data
    assert figures.REWARM_NOTE in fig.layout.title.text


def test_per_task_and_ratio_figures(data) -> None:
    rows, _ = fix_other_axes(data["main"], ["intro_fraction", "scale", "seed"])
    tasks = data["tasks"].join(rows.select("step_id"), on="step_id")
    agg = aggregate_over_seeds(tasks, scores=("stable_score",), by=(*CONFIG_AXES, "task", "group"))
    fig = figures.per_task_figure(agg, "intro_fraction")
    titled(fig)
    assert len(fig.layout.annotations) == tasks["task"].n_unique()
    rows, _ = fix_other_axes(data["main"], ["image_ratio", "intro_fraction", "scale", "seed"])
    fig = figures.ratio_origin_figure(aggregate_over_seeds(rows), checkpoint_fraction=0.8)
    titled(fig)
    names = {t.name for t in fig.data}
    assert "79m, from scratch (f = 0)" in names and "411m, from trunk checkpoint f = 0.8" in names
    assert fig.layout.xaxis.type == "log" and list(fig.layout.xaxis.tickvals) == [0.1, 0.5]


def test_lr_schedule_places_branches_on_the_trunk(data) -> None:
    trunk = data["lr"].filter(pl.col("kind") == "trunk")["step_id"][0]
    chain = data["lr"].filter((pl.col("step_id") == trunk) | (pl.col("parent_id") == trunk))
    fig = figures.lr_schedule_figure(chain)
    titled(fig)
    t_rows = chain.filter(pl.col("kind") == "trunk")
    per_step = t_rows["tokens"][0] / t_rows["step"][0]
    for f in (0.4, 0.8, 1.0):  # the checkpoint step models.run.fraction_step picks: floor(f·T / per step)
        start = (len(t_rows) if f == 1.0 else math.floor(f * t_rows["planned_tokens"][0] / per_step)) * per_step
        assert figures.branch_start_tokens(t_rows, f) == pytest.approx(start)
        trace = next(t for t in fig.data if t.name.startswith(f"branch f = {f:g},"))
        own = chain.filter((pl.col("kind") == "branch") & (pl.col("intro_fraction") == f))["tokens"].min()
        assert min(trace.x) == pytest.approx(start + own)  # branch tokens count from the branch's start
    assert figures.branch_start_tokens(t_rows, 0.0) == 0
    assert any("rewarm" in t.name and t.line.dash == "dot" for t in fig.data)


def test_lr_schedule_of_real_step_numbers() -> None:
    """A trunk of 10 steps of 128 tokens planned at 1250 tokens; a branch at f = 0.55 resumes after
    floor(0.55·1250/128) = 5 steps, i.e. 640 tokens, and logs its own tokens from 128."""
    trunk = pl.DataFrame({"step_id": "t", "kind": "trunk", "parent_id": None, "planned_tokens": 1250,
                          "scale": "debug", "seed": 0, "intro_fraction": None, "image_ratio": None,
                          "schedule_policy": None, "step": list(range(1, 11)),
                          "tokens": [128 * k for k in range(1, 11)], "value": [1e-3] * 10})
    branch = pl.DataFrame({"step_id": "b", "kind": "branch", "parent_id": "t", "planned_tokens": 512,
                           "scale": "debug", "seed": 0, "intro_fraction": 0.55, "image_ratio": 0.2,
                           "schedule_policy": "continue", "step": [1, 2, 3, 4],
                           "tokens": [128, 256, 384, 512], "value": [5e-4] * 4})
    fig = figures.lr_schedule_figure(pl.concat([trunk, branch], how="diagonal_relaxed"))
    assert list(fig.data[1].x) == [768, 896, 1024, 1152]
    assert figures.branch_start_tokens(trunk, 1.0) == 1280  # f = 1: after the last step


def test_loss_curves_tradeoff_surface_and_scaling(data) -> None:
    fig = figures.loss_curves_figure(data["loss"].filter(pl.col("kind") == "branch"), color="intro_fraction")
    titled(fig)
    assert {t.legendgroup for t in fig.data} == {"0.0", "0.4", "0.8", "1.0"}
    frontier = fit_frontier(data["main"], bootstrap=20)
    fig = figures.tradeoff_figure(frontier)
    titled(fig)
    assert "fitted frontier" in {t.name for t in fig.data}
    assert {"scale = 79m", "scale = 411m"} <= {t.name for t in fig.data if t.showlegend is not False}
    symbols = {sym for t in data_traces(fig) if isinstance(t.marker.symbol, tuple) for sym in t.marker.symbol}
    assert {"diamond", "circle", "circle-open"} <= symbols | {"circle-open"} and "diamond" in symbols
    surface = fit_response_surface(data["main"], bootstrap=0)[0]
    fig = figures.response_surface_figure(surface.grid, scale=surface.scale, score=surface.score)
    titled(fig)
    assert len(figure_data(fig)) == len(surface.grid)
    fig = figures.response_surface_figure(surface.grid, scale=surface.scale, score=surface.score,
                                          observed=data["main"].filter(pl.col("scale") == surface.scale))
    assert len(data_traces(fig)) == 2 and fig.layout.yaxis.type == "log"
    rng = np.random.default_rng(0)
    n = np.repeat([1e7, 1e8, 1e9], 6)
    d = np.tile(np.geomspace(1e9, 1e11, 6), 3)
    loss = 1.8 + 400 / n ** 0.34 + 2000 / d ** 0.36 + rng.normal(0, 0.005, 18)
    fig = figures.scaling_fit_figure(n, d, loss, fit_scaling_law(n, d, loss, starts=None))
    titled(fig)
    assert fig.layout.xaxis.type == "log" and len(fig.data) == 6


def test_export_really_renders(tmp_path: Path) -> None:
    fig = figures.score_vs_axis_figure(pl.DataFrame({
        "scale": ["a", "a"], "intro_fraction": [0.0, 1.0], "vl_score_mean": [0.1, 0.2],
        "vl_score_stderr": [0.01, None], "text_score_mean": [0.3, 0.2], "text_score_stderr": [None, None]}),
        "intro_fraction")
    exported = export_figures([("tiny", fig)], tmp_path)
    assert exported.note is None
    assert sorted(p.name for p in exported.written) == ["plotly.min.js", "tiny.csv", "tiny.html", "tiny.pdf",
                                                        "tiny.png", "tiny.svg"]
    assert (tmp_path / "tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "tiny.pdf").read_bytes()[:5] == b"%PDF-"
    assert b"<svg" in (tmp_path / "tiny.svg").read_bytes()[:500]
    csv = pl.read_csv(tmp_path / "tiny.csv")
    assert len(csv) == 4 and set(csv["trace"]) == {"scale = a"}


@pytest.mark.parametrize("definition", ["difference", "centered"])
def test_score_axes_are_titled_by_the_studys_stable_score_definition(tmp_path, definition) -> None:
    """A study with `[eval] stable_score = "centered"` gets its score axes and panels titled
    (score − chance) / (1 − chance) in the report's figures, as its numbers are; others score − chance."""
    study = write_synthetic_study(tmp_path, SyntheticSpec(scales=("79m",), intro_fractions=(0.0, 0.8, 1.0),
                                                          image_ratios=(0.1, 0.5), finetune_epochs=(1,),
                                                          metric_rows=2))
    manifest = json.loads(study.manifest.read_text())
    study.manifest.write_text(json.dumps({**manifest, "stable_score": definition}))
    ingest(tmp_path)
    with connect(tmp_path) as con:
        loaded = report.load_study(con, "synthetic")
    assert loaded.definition == definition
    built = Built(bootstrap=20, seed=0)
    for builder in (axis_figures, ratio_figure):
        builder(loaded, built)
    formula = STABLE_FORMULAS[definition]
    drawn = dict(built.figures)
    assert {"scores_vs_intro_fraction", "scores_vs_intro_fraction_per_task", "scores_vs_image_ratio"} <= set(drawn)
    for fig in drawn.values():
        assert fig.layout.yaxis.title.text == f"stable score ({formula})"
    panels = [a.text for a in drawn["scores_vs_intro_fraction"].layout.annotations]
    assert f"VL stable score ({formula})" in panels and f"text stable score ({formula})" in panels
    other = STABLE_FORMULAS["centered" if definition == "difference" else "difference"]
    assert not any(text.endswith(f"({other})") for fig in drawn.values()
                   for text in [fig.layout.yaxis.title.text, *(a.text for a in fig.layout.annotations)])
    frontier = fit_frontier(loaded.main, bootstrap=20)
    fig = figures.tradeoff_figure(frontier, definition=definition)
    assert fig.layout.xaxis.title.text == f"text stable score ({formula})"
