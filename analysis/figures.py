"""Plotly figure builders, one per figure of the paper (and a few more); each returns a Figure.

Inputs are polars frames from `analysis.queries` / `analysis.scores` (aggregates carry `_mean`,
`_stderr`, `_n`), or fit results. Builders never show or save: `analysis.export` does that.
Hollow markers flag points whose LR schedule was re-warmed (the paper's f = 0 and f = 1).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from analysis.frontier import FrontierFit
from analysis.scaling import ScalingFit, predict_loss
from analysis.scores import SCORE_LABELS

AXIS_LABELS = {
    "intro_fraction": "image introduction fraction f (share of trunk tokens)",
    "image_ratio": "image ratio (share of image-stage tokens)",
    "instruction_share": "instruction share (share of the image part)",
    "finetune_epochs": "fine-tuning epochs",
    "params": "LM parameters N",
    "tokens": "training tokens",
    "scale": "scale",
}
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def _label(axis: str) -> str:
    return AXIS_LABELS.get(axis, SCORE_LABELS.get(axis, axis.replace("_", " ")))


def _groups(frame: pl.DataFrame, by: str) -> list[tuple[object, pl.DataFrame]]:
    """(value, rows) per value of `by`, ordered by params when grouping by scale."""
    order = ["params", by] if by == "scale" and "params" in frame.columns else [by]
    ordered = frame if by == "step_id" else frame.sort(order, nulls_last=True)  # step_id: caller's order
    keys = ordered[by].unique(maintain_order=True).to_list()
    return [(k, frame.filter(pl.col(by).is_null() if k is None else pl.col(by) == k)) for k in keys]


def _symbols(rows: pl.DataFrame) -> list[str]:
    """Hollow where the schedule was re-warmed although the study asked for the paper's schedule."""
    if "schedule_policy" not in rows.columns:
        return ["circle"] * len(rows)
    paper = (rows["schedule"] == "paper").fill_null(False) if "schedule" in rows.columns else pl.Series([True] * len(rows))
    hollow = (rows["schedule_policy"] == "rewarm").fill_null(False) & paper
    return ["circle-open" if h else "circle" for h in hollow.to_list()]


def _error(rows: pl.DataFrame, score: str) -> dict | None:
    col = f"{score}_stderr"
    if col not in rows.columns or rows[col].is_null().all():
        return None
    return {"type": "data", "array": rows[col].fill_null(0).to_list(), "visible": True}


def _hover(rows: pl.DataFrame, score: str) -> list[str] | None:
    col = f"{score}_n"
    return None if col not in rows.columns else [f"n = {n} runs" for n in rows[col].to_list()]


def score_vs_axis_figure(agg: pl.DataFrame, axis: str, *, scores: Sequence[str] = ("vl_score", "text_score"),
                         color: str = "scale", title: str = "") -> go.Figure:
    """Scores (one panel each) vs a varied axis, one line per `color` value, stderr bars over seeds."""
    fig = make_subplots(rows=1, cols=len(scores), subplot_titles=[SCORE_LABELS.get(s, s) for s in scores])
    for i, (value, rows) in enumerate(_groups(agg, color)):
        rows = rows.sort(axis)
        for j, score in enumerate(scores):
            fig.add_trace(go.Scatter(
                x=rows[axis].to_list(), y=rows[f"{score}_mean"].to_list(), mode="lines+markers",
                name=f"{color} = {value}", legendgroup=str(value), showlegend=j == 0,
                line={"color": PALETTE[i % len(PALETTE)]}, error_y=_error(rows, score),
                marker={"symbol": _symbols(rows), "size": 9}, hovertext=_hover(rows, score)),
                row=1, col=j + 1)
            fig.update_xaxes(title_text=_label(axis), row=1, col=j + 1)
            fig.update_yaxes(title_text=_label(score), row=1, col=j + 1)
    if axis == "image_ratio":
        fig.update_xaxes(type="log")
    return _layout(fig, title or f"Scores vs {_label(axis)}", legend=color)


def per_task_figure(task_agg: pl.DataFrame, axis: str, *, color: str = "scale", title: str = "") -> go.Figure:
    """One panel per task: its stable score vs `axis` (Fig. 4 per task)."""
    tasks = task_agg.sort("group", "task")["task"].unique(maintain_order=True).to_list()
    cols = min(4, len(tasks))
    rows_n = (len(tasks) + cols - 1) // cols
    fig = make_subplots(rows=rows_n, cols=cols, subplot_titles=tasks)
    for i, (value, rows) in enumerate(_groups(task_agg, color)):
        for k, task in enumerate(tasks):
            sub = rows.filter(pl.col("task") == task).sort(axis)
            r, c = k // cols + 1, k % cols + 1
            fig.add_trace(go.Scatter(x=sub[axis].to_list(), y=sub["stable_score_mean"].to_list(),
                                     mode="lines+markers", name=f"{color} = {value}", legendgroup=str(value),
                                     showlegend=k == 0, line={"color": PALETTE[i % len(PALETTE)]},
                                     marker={"symbol": _symbols(sub)}, error_y=_error(sub, "stable_score")),
                          row=r, col=c)
            fig.update_xaxes(title_text=axis.replace("_", " "), row=r, col=c)  # short: panels are small
            fig.update_yaxes(title_text="stable score", row=r, col=c)
    return _layout(fig, title or f"Per-task stable scores vs {_label(axis)}", legend=color,
                   height=300 * rows_n)


def ratio_origin_figure(agg: pl.DataFrame, *, checkpoint_fraction: float,
                        scores: Sequence[str] = ("vl_score", "text_score")) -> go.Figure:
    """Scores vs image ratio, branching from a trunk checkpoint (solid) and from scratch (dashed)."""
    fig = make_subplots(rows=1, cols=len(scores), subplot_titles=[SCORE_LABELS.get(s, s) for s in scores])
    origins = ((f"from trunk checkpoint f = {checkpoint_fraction:g}", checkpoint_fraction, "solid"),
               ("from scratch (f = 0)", 0.0, "dash"))
    for i, (scale, rows) in enumerate(_groups(agg, "scale")):
        for name, f, dash in origins:
            sub = rows.filter(pl.col("intro_fraction") == f).sort("image_ratio")
            for j, score in enumerate(scores):
                fig.add_trace(go.Scatter(x=sub["image_ratio"].to_list(), y=sub[f"{score}_mean"].to_list(),
                                         mode="lines+markers", name=f"{scale}, {name}", showlegend=j == 0,
                                         legendgroup=f"{scale}{name}", error_y=_error(sub, score),
                                         line={"color": PALETTE[i % len(PALETTE)], "dash": dash},
                                         marker={"symbol": _symbols(sub)}), row=1, col=j + 1)
                fig.update_xaxes(title_text=_label("image_ratio"), type="log", row=1, col=j + 1)
                fig.update_yaxes(title_text=_label(score), row=1, col=j + 1)
    return _layout(fig, "Scores vs image ratio: from a trunk checkpoint and from scratch", legend="scale, origin")


def lr_schedule_figure(lr: pl.DataFrame) -> go.Figure:
    """Learning rate vs tokens of each trunk and of its branches, branches placed at f·T (Fig. 3)."""
    fig = go.Figure()
    trunks = lr.filter(pl.col("kind") == "trunk")
    branches = lr.filter(pl.col("kind") == "branch")
    for i, (sid, t_rows) in enumerate(_groups(trunks, "step_id")):
        scale = t_rows["scale"][0]
        fig.add_trace(go.Scatter(x=t_rows["tokens"].to_list(), y=t_rows["value"].to_list(), mode="lines",
                                 name=f"trunk {scale} (seed {t_rows['seed'][0]})",
                                 line={"color": "black", "width": 3}))
        mine = branches.filter(pl.col("parent_id") == sid).sort("intro_fraction", "image_ratio", "step_id")
        for j, (bid, b_rows) in enumerate(_groups(mine, "step_id")):
            f = b_rows["intro_fraction"][0] or 0.0
            start = f * (t_rows["planned_tokens"][0] or t_rows["tokens"].max())
            own = b_rows["tokens"].min() < 0.99 * start  # tokens counted from the branch's start
            x = (b_rows["tokens"] + (start if own else 0)).to_list()
            policy = b_rows["schedule_policy"][0]
            fig.add_trace(go.Scatter(x=x, y=b_rows["value"].to_list(), mode="lines",
                                     name=f"branch f = {f:g}, ratio {b_rows['image_ratio'][0]:g} ({policy})",
                                     line={"color": PALETTE[j % len(PALETTE)],
                                           "dash": "dot" if policy == "rewarm" else "solid"}))
    fig.update_xaxes(title_text="tokens (trunk + image stage)")
    fig.update_yaxes(title_text="learning rate")
    return _layout(fig, "LR schedules of the trunk and its branches", legend="step")


def loss_curves_figure(metrics: pl.DataFrame, *, color: str, name: str = "train_loss") -> go.Figure:
    """A training-loss metric vs tokens, one line per step, coloured by any axis."""
    fig = go.Figure()
    rows = metrics.filter(pl.col("name") == name)
    for i, (value, group) in enumerate(_groups(rows, color)):
        for k, (sid, curve) in enumerate(_groups(group, "step_id")):
            fig.add_trace(go.Scatter(x=curve["tokens"].to_list(), y=curve["value"].to_list(), mode="lines",
                                     name=f"{color} = {value}", legendgroup=str(value), showlegend=k == 0,
                                     line={"color": PALETTE[i % len(PALETTE)], "width": 1.5}, hovertext=sid))
    fig.update_xaxes(title_text="tokens (within the step)")
    fig.update_yaxes(title_text=f"{name.replace('_', ' ')} (nats/token)")
    return _layout(fig, f"{name.replace('_', ' ')} by {_label(color)}", legend=color)


def tradeoff_figure(frontier: FrontierFit, *, color: str = "scale") -> go.Figure:
    """VL vs text scatter of configurations, the frontier highlighted, the fitted curve with its band."""
    fig = go.Figure()
    curve = frontier.curve
    if curve["y_lo"].is_not_null().any() and not curve["y_lo"].is_nan().all():
        fig.add_trace(go.Scatter(x=curve["x"].to_list() + curve["x"].to_list()[::-1],
                                 y=curve["y_hi"].to_list() + curve["y_lo"].to_list()[::-1], fill="toself",
                                 line={"width": 0}, fillcolor="rgba(0,0,0,0.12)",
                                 name=f"frontier {100 * 0.95:.0f}% band ({frontier.bootstrap} bootstraps)"))
    fig.add_trace(go.Scatter(x=curve["x"].to_list(), y=curve["y"].to_list(), mode="lines",
                             name="fitted frontier", line={"color": "black"}))
    for i, (value, rows) in enumerate(_groups(frontier.points, color)):
        fig.add_trace(go.Scatter(
            x=rows["x_mean"].to_list(), y=rows["y_mean"].to_list(), mode="markers", name=f"{color} = {value}",
            marker={"color": PALETTE[i % len(PALETTE)], "size": 9,
                    "symbol": ["diamond" if o else "circle" for o in rows["on_frontier"].to_list()]},
            hovertext=[f"P(frontier) = {p:.2f}, n = {n}" for p, n in
                       zip(rows["frontier_probability"].to_list(), rows["n_runs"].to_list())]))
    fig.update_xaxes(title_text=_label(frontier.x))
    fig.update_yaxes(title_text=_label(frontier.y))
    return _layout(fig, "VL vs text trade-off (diamonds: Pareto frontier)", legend=color)


def scaling_fit_figure(params: np.ndarray, tokens: np.ndarray, loss: np.ndarray, fit: ScalingFit,
                       *, title: str = "Scaling law fit") -> go.Figure:
    """Loss vs tokens, points coloured by model size, with the fitted L(N, D) through each size."""
    fig = go.Figure()
    sizes = np.unique(params)
    shown = sizes if len(sizes) <= 8 else sizes[np.linspace(0, len(sizes) - 1, 8).round().astype(int)]
    bins = np.searchsorted(shown, params, side="left").clip(0, len(shown) - 1)
    for i, n in enumerate(shown):
        sel = bins == i
        fig.add_trace(go.Scatter(x=tokens[sel].tolist(), y=loss[sel].tolist(), mode="markers",
                                 name=f"N ≈ {n:.3g}", legendgroup=str(i),
                                 marker={"color": PALETTE[i % len(PALETTE)], "size": 6}))
        grid = np.geomspace(tokens.min(), tokens.max(), 60)
        fig.add_trace(go.Scatter(x=grid.tolist(), y=predict_loss(fit, n, grid).tolist(), mode="lines",
                                 name=f"fit, N = {n:.3g}", legendgroup=str(i), showlegend=False,
                                 line={"color": PALETTE[i % len(PALETTE)]}))
    fig.update_xaxes(title_text="training tokens D", type="log")
    fig.update_yaxes(title_text="loss (nats/token)")
    sub = (f"E = {fit.E:.3g}, A = {fit.A:.3g}, B = {fit.B:.3g}, α = {fit.alpha:.3f}, β = {fit.beta:.3f}")
    return _layout(fig, f"{title}<br><sup>{sub}</sup>", legend="model size")


def response_surface_figure(grid: pl.DataFrame, *, scale: str, score: str) -> go.Figure:
    """Predicted score over (intro_fraction, image_ratio) for one scale, as a heatmap."""
    pivot = grid.sort("intro_fraction", "image_ratio")
    fs = pivot["intro_fraction"].unique().sort().to_list()
    rs = pivot["image_ratio"].unique().sort().to_list()
    z = pivot["predicted"].to_numpy().reshape(len(fs), len(rs)).T
    fig = go.Figure(go.Heatmap(x=fs, y=rs, z=z.tolist(), colorbar={"title": "predicted"}, name=score))
    fig.update_xaxes(title_text=_label("intro_fraction"))
    fig.update_yaxes(title_text=_label("image_ratio"), type="log")
    return _layout(fig, f"Response surface of {SCORE_LABELS.get(score, score)} at {scale}", legend="")


def _layout(fig: go.Figure, title: str, *, legend: str, height: int = 450) -> go.Figure:
    fig.update_layout(title={"text": title}, template="plotly_white", height=height,
                      width=max(700, 450 * len(fig.layout.annotations or [1])) if height <= 450 else 1200,
                      legend_title_text=legend, margin={"t": 80})
    return fig
