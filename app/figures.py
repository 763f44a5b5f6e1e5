"""Figure builders the app needs beyond `analysis.figures`: the grid-coverage heatmap, faceted
training curves with smoothing and log axes, and configuration hover text for scatter points.

Like analysis's builders they take frames and return a plotly Figure; they never show or save.
"""

from __future__ import annotations

import math
from typing import Sequence

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from analysis.figures import AXIS_LABELS, PALETTE
from app.data import STATUSES
from app.filters import format_value

STATUS_COLORS = {"done": "#2ca02c", "running": "#1f77b4", "failed": "#d62728", "missing": "#d9d9d9"}
NULL_LABEL = "–"  # a cell or group whose axis does not apply (a trunk's intro_fraction)


def _label(axis: str) -> str:
    return AXIS_LABELS.get(axis, axis.replace("_", " "))


def _categories(frame: pl.DataFrame, axis: str) -> list:
    """The axis's values in display order (numbers ascending, scales by size), null last."""
    order = ["params", axis] if axis == "scale" and "params" in frame.columns else [axis]
    return frame.sort(order, nulls_last=True)[axis].unique(maintain_order=True).to_list()


def cell_status(statuses: Sequence[str]) -> str:
    """A cell's colour: failed if any step failed, else running, else missing, else done."""
    for status in ("failed", "running", "missing"):
        if status in statuses:
            return status
    return "done"


def coverage_figure(cells: pl.DataFrame, *, rows: str, cols: str, title: str = "") -> go.Figure:
    """Heatmap of the grid: one cell per (rows, cols) value pair, coloured by its worst status,
    labelled done/total, with hover listing the counts of each status."""
    ys, xs = _categories(cells, rows), _categories(cells, cols)
    z, text, hover = [], [], []
    for y in ys:
        z_row, t_row, h_row = [], [], []
        for x in xs:
            sub = cells.filter(_is(rows, y) & _is(cols, x))
            counts = {s: int((sub["status"] == s).sum()) for s in STATUSES}
            total = sum(counts.values())
            status = cell_status([s for s, n in counts.items() if n]) if total else None
            z_row.append(None if status is None else STATUSES.index(status))
            t_row.append(f"{counts['done']}/{total}" if total else "")
            h_row.append(", ".join(f"{n} {s}" for s, n in counts.items() if n) or "not in the grid")
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


def _is(axis: str, value) -> pl.Expr:
    return pl.col(axis).is_null() if value is None else pl.col(axis) == value


def _text(value) -> str:
    return NULL_LABEL if value is None else format_value(value)


def smooth(curves: pl.DataFrame, weight: float) -> pl.DataFrame:
    """Exponential moving average of `value` within each (step_id, name) curve; 0 leaves it as is."""
    if not 0 <= weight < 1:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    if weight == 0 or curves.is_empty():
        return curves
    return curves.with_columns(pl.col("value").ewm_mean(alpha=1 - weight, adjust=True)
                               .over(["step_id", "name"]))


def curves_figure(curves: pl.DataFrame, *, color: str, facet: str | None = None, x: str = "tokens",
                  log_x: bool = False, log_y: bool = False, title: str = "") -> go.Figure:
    """One line per (step, metric), coloured by `color`, one panel per value of `facet` (or one)."""
    panels = _categories(curves, facet) if facet else [None]
    n_cols = min(3, len(panels))
    n_rows = math.ceil(len(panels) / n_cols)
    fig = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=[
        f"{facet} = {_text(p)}" if facet and facet != "name" else _text(p) for p in panels] if facet else None)
    colors = {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(_categories(curves, color))}
    shown: set = set()
    for k, panel in enumerate(panels):
        rows = curves if facet is None else curves.filter(_is(facet, panel))
        r, c = k // n_cols + 1, k % n_cols + 1
        for (sid, name), curve in rows.group_by(["step_id", "name"], maintain_order=True):
            value = curve[color][0]
            fig.add_trace(go.Scatter(
                x=curve[x].to_list(), y=curve["value"].to_list(), mode="lines", name=f"{color} = {_text(value)}",
                legendgroup=_text(value), showlegend=value not in shown, line={"color": colors[value], "width": 1.5},
                hovertemplate=f"{sid} · {name}<br>{x} %{{x:.4g}}<br>value %{{y:.4g}}<extra>{color} = {_text(value)}</extra>"),
                row=r, col=c)
            shown.add(value)
        fig.update_xaxes(title_text=x if r == n_rows else None, type="log" if log_x else None, row=r, col=c)
        fig.update_yaxes(type="log" if log_y else None, row=r, col=c)
    names = ", ".join(curves["name"].unique(maintain_order=True).to_list())
    fig.update_layout(title={"text": title or f"{names} by {_label(color)}"}, template="plotly_white",
                      height=max(420, 320 * n_rows), legend_title_text=color)
    return fig


def configuration_text(row: dict, axes: Sequence[str]) -> str:
    """Hover text naming a configuration: 'scale = 79m<br>intro_fraction = 0.8 ...'."""
    return "<br>".join(f"{a} = {_text(row.get(a))}" for a in axes if a in row)


def add_configuration_hover(fig: go.Figure, points: pl.DataFrame, *, x: str, y: str,
                            axes: Sequence[str]) -> go.Figure:
    """Give every marker that sits on a row of `points` (matched by its exact x, y) that row's
    configuration as hover text, keeping the text the builder put there."""
    by_xy = {(px, py): configuration_text(row, axes) for row, px, py in
             zip(points.iter_rows(named=True), points[x].to_list(), points[y].to_list())}
    for trace in fig.data:
        if trace.type != "scatter" or "markers" not in (trace.mode or ""):
            continue
        old = trace.hovertext if isinstance(trace.hovertext, (list, tuple)) else [trace.hovertext] * len(trace.x)
        trace.hovertext = [
            "<br>".join(filter(None, [by_xy.get((px, py), ""), str(o) if o else ""]))
            for px, py, o in zip(trace.x, trace.y, old)]
        trace.hoverinfo = "text+x+y"
    return fig
