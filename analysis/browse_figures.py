"""Figures for browsing a catalog (the app's Overview and Curves pages): the grid-coverage heatmap
and training curves coloured and faceted by any axis, with smoothing and log axes.

Like `analysis.figures` they take frames (from `analysis.queries`) and return a plotly Figure;
they never show or save.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from analysis.figures import AXIS_LABELS, PALETTE
from analysis.filters import format_value
from analysis.queries import STATUSES
from models import stepfiles as sf

STATUS_COLORS = dict(zip(STATUSES, ("#2ca02c", "#1f77b4", "#d62728", "#d9d9d9")))
NULL_LABEL = "–"  # a cell or group whose axis does not apply (a trunk's intro_fraction)


def _label(axis: str) -> str:
    return AXIS_LABELS.get(axis, axis.replace("_", " "))


def _categories(frame: pl.DataFrame, axis: str) -> list:
    """The axis's values in display order (numbers ascending, scales by size), null last."""
    order = ["params", axis] if axis == "scale" and "params" in frame.columns else [axis]
    return frame.sort(order, nulls_last=True)[axis].unique(maintain_order=True).to_list()


def _is(axis: str, value) -> pl.Expr:
    return pl.col(axis).is_null() if value is None else pl.col(axis) == value


def _text(value) -> str:
    return NULL_LABEL if value is None else format_value(value)


def cell_status(statuses: Sequence[str]) -> str:
    """A cell's colour: failed if any step failed, else running, else missing, else done."""
    for status in (sf.FAILED, sf.RUNNING, sf.MISSING):
        if status in statuses:
            return status
    return sf.DONE


def coverage_figure(cells: pl.DataFrame, *, rows: str, cols: str, title: str = "") -> go.Figure:
    """Heatmap of the grid: one cell per (rows, cols) value pair, coloured by its worst status,
    labelled done/total, with hover listing the counts of each status."""
    ys, xs = _categories(cells, rows), _categories(cells, cols)
    keys = cells.select(pl.col(rows).alias("_r"), pl.col(cols).alias("_c"), "status")  # rows may equal cols
    counts = {(r, c, s): n for r, c, s, n in keys.group_by("_r", "_c", "status").len().iter_rows()}
    z, text, hover = [], [], []
    for y in ys:
        z_row, t_row, h_row = [], [], []
        for x in xs:
            n = {s: counts.get((y, x, s), 0) for s in STATUSES}
            total = sum(n.values())
            status = cell_status([s for s, k in n.items() if k]) if total else None
            z_row.append(None if status is None else STATUSES.index(status))
            t_row.append(f"{n['done']}/{total}" if total else "")
            h_row.append(", ".join(f"{k} {s}" for s, k in n.items() if k) or "not in the grid")
        z.append(z_row)
        text.append(t_row)
        hover.append(h_row)
    k = len(STATUSES)
    scale = [[edge, STATUS_COLORS[s]] for i, s in enumerate(STATUSES) for edge in (i / k, (i + 1) / k)]
    fig = go.Figure(go.Heatmap(
        x=[_text(x) for x in xs], y=[_text(y) for y in ys], z=z, zmin=-0.5, zmax=k - 0.5,
        colorscale=scale, text=text, texttemplate="%{text}", customdata=hover, xgap=2, ygap=2,
        hovertemplate=f"{rows} = %{{y}}<br>{cols} = %{{x}}<br>%{{customdata}}<extra></extra>",
        colorbar={"tickvals": list(range(k)), "ticktext": list(STATUSES), "title": "status"}, name="coverage"))
    fig.update_xaxes(title_text=_label(cols), type="category")
    fig.update_yaxes(title_text=_label(rows), type="category")
    fig.update_layout(title={"text": title or f"Grid coverage: {_label(rows)} × {_label(cols)}"},
                      template="plotly_white", height=max(300, 60 * len(ys) + 160))
    return fig


def smooth(curves: pl.DataFrame, weight: float) -> pl.DataFrame:
    """Exponential moving average of `value` within each (step_id, name) curve; 0 leaves it as is."""
    if not 0 <= weight < 1:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    if weight == 0 or curves.is_empty():
        return curves
    return curves.with_columns(pl.col("value").ewm_mean(alpha=1 - weight, adjust=True)
                               .over(["step_id", "name"]))


def _joined(rows: pl.DataFrame, x: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, y and hover labels of every curve in `rows` end to end, a NaN gap between curves: one
    trace per colour and panel instead of one per run keeps the figure's cost flat in the runs."""
    rows = rows.sort("step_id", "name", x)
    last = (rows["step_id"] != rows["step_id"].shift(-1)) | (rows["name"] != rows["name"].shift(-1))
    ends = np.flatnonzero(last.fill_null(True).to_numpy()) + 1
    positions = np.arange(len(rows)) + np.searchsorted(ends, np.arange(len(rows)), side="right")
    size = len(rows) + len(ends)
    xs, ys = np.full(size, np.nan), np.full(size, np.nan)
    labels = np.full(size, "", dtype=object)
    xs[positions], ys[positions] = rows[x].cast(pl.Float64).to_numpy(), rows["value"].to_numpy()
    labels[positions] = (rows["step_id"] + " · " + rows["name"]).to_numpy()
    return xs, ys, labels


EVENT_MARKERS = {"loss_spike": ("loss spike", "triangle-up", "#d62728"),
                 "nonfinite_skipped": ("skipped batch (non-finite)", "x", "#000000"),
                 "nonfinite_rewind": ("rewind (non-finite)", "circle-open", "#000000")}


def _mark_events(fig: go.Figure, rows: pl.DataFrame, events: pl.DataFrame | None, x: str, r: int, c: int) -> None:
    """Markers for the events of the steps whose train_loss curve is in this panel, at their loss."""
    if events is None or events.is_empty() or "train_loss" not in rows["name"].to_list():
        return
    ids = rows.filter(pl.col("name") == "train_loss")["step_id"].unique().to_list()
    for name, (label, symbol, colour) in EVENT_MARKERS.items():
        marks = events.filter((pl.col("name") == name) & pl.col("step_id").is_in(ids))
        if marks.is_empty():
            continue
        fig.add_trace(go.Scatter(
            x=marks[x].to_list(), y=marks["loss"].to_list(), mode="markers", name=label, legendgroup=label,
            marker={"symbol": symbol, "size": 11, "color": colour},
            customdata=(marks["step_id"] + " · step " + marks["step"].cast(pl.String)).to_list(),
            hovertemplate=f"%{{customdata}}<extra>{label}</extra>"), row=r, col=c)


def curves_figure(curves: pl.DataFrame, *, color: str, facet: str | None = None, x: str = "tokens",
                  log_x: bool = False, log_y: bool = False, title: str = "",
                  events: pl.DataFrame | None = None) -> go.Figure:
    """The (step, metric) curves, coloured by `color`, one panel per value of `facet` (or one);
    `events` (analysis.queries.training_events) are marked on the panels' train_loss curves."""
    panels = _categories(curves, facet) if facet else [None]
    n_cols = min(3, len(panels))
    n_rows = math.ceil(len(panels) / n_cols)
    fig = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=[
        f"{facet} = {_text(p)}" if facet and facet != "name" else _text(p) for p in panels] if facet else None)
    values = _categories(curves, color)
    shown: set = set()  # colour values already in the legend (an entry appears once)
    for k, panel in enumerate(panels):
        rows = curves if facet is None else curves.filter(_is(facet, panel))
        r, c = k // n_cols + 1, k % n_cols + 1
        for i, value in enumerate(values):
            group = rows.filter(_is(color, value))
            if group.is_empty():
                continue
            xs, ys, labels = _joined(group, x)
            name = f"{color} = {_text(value)}"
            fig.add_trace(go.Scatter(
                x=xs, y=ys, customdata=labels, mode="lines", name=name, legendgroup=name,
                showlegend=value not in shown,
                line={"color": PALETTE[i % len(PALETTE)], "width": 1.5},
                hovertemplate=f"%{{customdata}}<br>{x} %{{x:.4g}}<br>value %{{y:.4g}}<extra>{name}</extra>"),
                row=r, col=c)
            shown.add(value)
        _mark_events(fig, rows, events, x, r, c)
        fig.update_xaxes(title_text=x if r == n_rows else None, type="log" if log_x else None, row=r, col=c)
        fig.update_yaxes(type="log" if log_y else None, row=r, col=c)
    names = ", ".join(curves["name"].unique(maintain_order=True).to_list())
    fig.update_layout(title={"text": title or f"{names} by {_label(color)}"}, template="plotly_white",
                      height=max(420, 320 * n_rows), legend_title_text=color)
    return fig

