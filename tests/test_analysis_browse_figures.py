"""The browsing figures (coverage heatmap, joined training curves), the trade-off hover and the CSV
read back from a categorical heatmap, on frames shaped like `analysis.queries` returns."""

from __future__ import annotations

import math

import polars as pl
import pytest

from analysis import browse_figures as bfig
from analysis.export import figure_data
from analysis.figures import tradeoff_figure
from analysis.frontier import fit_frontier

CELLS = pl.DataFrame({
    "step_id": ["a", "b", "c", "d", "e"], "kind": ["eval"] * 5,
    "scale": ["79m", "79m", "411m", "411m", "411m"], "params": [79, 79, 411, 411, 411],
    "intro_fraction": [0.8, 1.0, 0.8, 0.8, None], "status": ["done", "failed", "done", "running", "missing"]})


def test_coverage_figure_colours_cells_by_their_worst_status():
    fig = bfig.coverage_figure(CELLS, rows="scale", cols="intro_fraction")
    heat = fig.data[0]
    assert list(heat.y) == ["79m", "411m"] and list(heat.x) == ["0.8", "1", bfig.NULL_LABEL]
    statuses = [[None if z is None else bfig.STATUSES[z] for z in row] for row in heat.z]
    assert statuses == [["done", "failed", None], ["running", None, "missing"]]
    assert heat.text[1][0] == "1/2" and heat.customdata[1][0] == "1 done, 1 running"
    diagonal = bfig.coverage_figure(CELLS, rows="scale", cols="scale").data[0]  # a one-axis study
    assert [list(row) for row in diagonal.text] == [["1/2", ""], ["", "1/3"]]


def test_figure_data_reads_a_categorical_heatmap():
    plotted = figure_data(bfig.coverage_figure(CELLS, rows="scale", cols="intro_fraction"))
    assert len(plotted) == 6 and plotted["y"].is_null().all()
    assert plotted["y_category"].to_list() == ["79m"] * 3 + ["411m"] * 3
    assert plotted["label"].to_list()[:2] == ["1/1", "0/1"]
    assert plotted["value"].null_count() == 2  # the two cells not in the grid


def curves(n_runs: int, points: int) -> pl.DataFrame:
    return pl.DataFrame([{"step_id": f"s{r}", "name": "train_loss", "bucket": b, "step": float(b),
                          "tokens": 100.0 * b, "value": 1.0 / (b + 1), "rows": 3,
                          "scale": "79m" if r % 2 else "411m", "params": 79 if r % 2 else 411}
                         for r in range(n_runs) for b in range(points)])


def test_curves_figure_draws_one_trace_per_colour_with_a_gap_per_run():
    fig = bfig.curves_figure(curves(6, 5), color="scale")
    assert [t.name for t in fig.data] == ["scale = 79m", "scale = 411m"]
    for trace in fig.data:
        gaps = [k for k, y in enumerate(trace.y) if math.isnan(y)]
        assert len(gaps) == 3 and len(trace.y) == 3 * 5 + 3  # 3 runs of 5 points, a gap after each
        assert {c for c in trace.customdata if c} == {f"s{r} · train_loss" for r in range(6)
                                                      if (r % 2 == 1) == (trace.name == "scale = 79m")}
    plotted = figure_data(fig)
    assert len(plotted) == 6 * 5  # the gaps are not data


def test_curves_figure_facets_and_log_axes():
    frame = pl.concat([curves(2, 4), curves(2, 4).with_columns(pl.lit("lr").alias("name"))])
    fig = bfig.curves_figure(bfig.smooth(frame, 0.5), color="scale", facet="name", log_y=True)
    assert {a.text for a in fig.layout.annotations} == {"lr", "train_loss"}
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis2.type == "log"
    assert sum(t.showlegend is not False for t in fig.data) == 2  # each colour once in the legend
    with pytest.raises(ValueError, match="smoothing"):
        bfig.smooth(frame, 1.0)


def test_tradeoff_hover_names_the_configuration():
    rows = [{"step_id": f"e{f}{r}{s}", "scale": "79m", "params": 79, "intro_fraction": f, "image_ratio": r,
             "seed": s, "vl_score": 0.1 + f * r + 0.01 * s, "text_score": 0.3 - 0.2 * f * r}
            for f in (0.2, 0.8) for r in (0.1, 0.5) for s in (0, 1)]
    fit = fit_frontier(pl.DataFrame(rows), x="text_score", y="vl_score", bootstrap=10, seed=0)
    hovers = [h for t in tradeoff_figure(fit).data if t.mode == "markers" for h in t.hovertext]
    assert len(hovers) == 4
    assert all("intro_fraction = " in h and "image_ratio = " in h and "<br>" in h for h in hovers)
    assert any("intro_fraction = 0.8<br>image_ratio = 0.5" in h for h in hovers)
