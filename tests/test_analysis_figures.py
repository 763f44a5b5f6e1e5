"""Every figure builder on a synthetic results set: traces, axis titles, legends, error bars,
hollow markers; the CSV of the plotted data; and a real kaleido render to PNG, SVG and PDF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import polars as pl
import pytest

from analysis import figures, queries
from analysis.export import export_figures, figure_data
from analysis.frontier import fit_frontier
from analysis.scaling import fit_scaling_law
from analysis.scores import CONFIG_AXES, aggregate_over_seeds, fix_other_axes, main_stage, step_scores
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
    """Every figure has a title, axis titles on every axis it uses, and at least one trace."""
    assert fig.layout.title.text and len(fig.data) > 0
    layout = fig.to_plotly_json()["layout"]
    for key, axis in layout.items():
        if key.startswith(("xaxis", "yaxis")):
            assert axis.get("title", {}).get("text"), f"{key} has no title"


def test_scores_vs_axis_with_hollow_rewarm_markers_and_error_bars(data) -> None:
    for axis in ("intro_fraction", "instruction_share", "finetune_epochs"):
        rows, fixed = fix_other_axes(data["main"], [axis, "scale", "seed"])
        fig = figures.score_vs_axis_figure(aggregate_over_seeds(rows), axis)
        titled(fig)
        assert {t.name for t in fig.data} == {"scale = 79m", "scale = 411m"}
        assert all(t.error_y.array is not None for t in fig.data)  # two seeds -> stderr bars
    fig = figures.score_vs_axis_figure(aggregate_over_seeds(
        fix_other_axes(data["main"], ["intro_fraction", "scale", "seed"])[0]), "intro_fraction")
    plotted = figure_data(fig)
    hollow = plotted.filter(pl.col("symbol") == "circle-open")["x"].unique().sort().to_list()
    assert hollow == ["0.0", "1.0"]  # the paper's rewarmed points
    assert len(plotted) == sum(len(t.x) for t in fig.data)


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
    assert fig.layout.xaxis.type == "log"


def test_lr_schedule_places_branches_on_the_trunk(data) -> None:
    trunk = data["lr"].filter(pl.col("kind") == "trunk")["step_id"][0]
    chain = data["lr"].filter((pl.col("step_id") == trunk) | (pl.col("parent_id") == trunk))
    fig = figures.lr_schedule_figure(chain)
    titled(fig)
    trunk_trace = fig.data[0]
    total = max(trunk_trace.x)
    late = next(t for t in fig.data if t.name.startswith("branch f = 0.8"))
    own = chain.filter((pl.col("kind") == "branch") & (pl.col("intro_fraction") == 0.8))["tokens"].min()
    assert min(late.x) == pytest.approx(0.8 * total + own)  # placed where the trunk stands
    assert any("rewarm" in t.name and t.line.dash == "dot" for t in fig.data)


def test_loss_curves_tradeoff_surface_and_scaling(data) -> None:
    fig = figures.loss_curves_figure(data["loss"].filter(pl.col("kind") == "branch"), color="intro_fraction")
    titled(fig)
    assert {t.legendgroup for t in fig.data} == {"0.0", "0.4", "0.8", "1.0"}
    fig = figures.tradeoff_figure(fit_frontier(data["main"], bootstrap=20))
    titled(fig)
    assert "fitted frontier" in {t.name for t in fig.data}
    surface = fit_response_surface(data["main"], bootstrap=0)[0]
    fig = figures.response_surface_figure(surface.grid, scale=surface.scale, score=surface.score)
    titled(fig)
    assert len(figure_data(fig)) == len(surface.grid)
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
    written = export_figures([("tiny", fig)], tmp_path)
    assert sorted(p.name for p in written) == ["tiny.csv", "tiny.pdf", "tiny.png", "tiny.svg"]
    assert (tmp_path / "tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "tiny.pdf").read_bytes()[:5] == b"%PDF-"
    assert b"<svg" in (tmp_path / "tiny.svg").read_bytes()[:500]
    csv = pl.read_csv(tmp_path / "tiny.csv")
    assert len(csv) == 4 and set(csv["trace"]) == {"scale = a"}
