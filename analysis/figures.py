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

from analysis.filters import format_value
from analysis.frontier import FrontierFit
from analysis.scaling import ScalingFit, predict_loss
from analysis.scores import score_label, stable_title
from models.stepfiles import fraction_step

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


def _label(axis: str, definition: str = "difference") -> str:
    """An axis's title; a score's names the study's stable-score definition."""
    if axis in AXIS_LABELS:
        return AXIS_LABELS[axis]
    label = score_label(axis, definition)
    return axis.replace("_", " ") if label == axis else label


def _groups(frame: pl.DataFrame, by: str) -> list[tuple[object, pl.DataFrame]]:
    """(value, rows) per value of `by`, ordered by params when grouping by scale; one group when the
    frame has no `by` column (e.g. frontier points of a single-scale study carry no scale)."""
    if by not in frame.columns:
        return [(None, frame)] if len(frame) else []
    order = ["params", by] if by == "scale" and "params" in frame.columns else [by]
    ordered = frame if by == "step_id" else frame.sort(order, nulls_last=True)  # step_id: caller's order
    keys = ordered[by].unique(maintain_order=True).to_list()
    return [(k, frame.filter(pl.col(by).is_null() if k is None else pl.col(by) == k)) for k in keys]


def _name(by: str, value: object) -> str:
    return "all runs" if value is None else f"{by} = {value:g}" if isinstance(value, float) else f"{by} = {value}"


def _symbols(rows: pl.DataFrame, base: Sequence[str] | None = None) -> list[str]:
    """Hollow where the schedule was re-warmed although the study asked for the paper's schedule."""
    base = list(base) if base is not None else ["circle"] * len(rows)
    if "schedule_policy" not in rows.columns:
        return base
    paper = ((rows["schedule"] == "paper").fill_null(False) if "schedule" in rows.columns
             else pl.Series([True] * len(rows)))
    hollow = (rows["schedule_policy"] == "rewarm").fill_null(False) & paper
    return [f"{b}-open" if h else b for b, h in zip(base, hollow.to_list())]


def _error(rows: pl.DataFrame, score: str) -> dict | None:
    col = f"{score}_stderr"
    if col not in rows.columns or rows[col].is_null().all():
        return None
    return {"type": "data", "array": rows[col].to_list(), "visible": True}  # null: no bar (one run)


def _hover(rows: pl.DataFrame, score: str) -> list[str] | None:
    col = f"{score}_n"
    return None if col not in rows.columns else [f"n = {n} runs" for n in rows[col].to_list()]


def _legend_entry(fig: go.Figure, name: str, group: str, color: str, *, dash: str = "solid",
                  symbol: str = "circle", line: bool = True) -> None:
    """A legend-only trace. Plotly draws a trace's legend marker from its first point, which is
    hollow whenever that point was re-warmed (f = 0); the data traces then hide their own entry."""
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines+markers" if line else "markers", name=name,
                             legendgroup=group, marker={"symbol": symbol, "color": color, "size": 9},
                             line={"color": color, "dash": dash}))


REWARM_NOTE = "hollow markers: LR schedule re-warmed (the paper's f = 0 and f = 1)"


def _rewarm_key(fig: go.Figure) -> str:
    """A subtitle explaining hollow markers when the figure has any ('' otherwise); in the title,
    not the legend, so the legend keeps one entry per colour."""
    symbols = [sym for t in fig.data if t.marker is not None and t.marker.symbol is not None
               for sym in (t.marker.symbol if isinstance(t.marker.symbol, (list, tuple)) else [t.marker.symbol])]
    return f"<br><sup>{REWARM_NOTE}</sup>" if any(str(sym).endswith("-open") for sym in symbols) else ""


def _log_ratio_ticks(fig: go.Figure, ratios: Sequence[float], axis: str = "x", **where) -> None:
    """Log axis with ticks at the ratios studied (plotly's minor log labels read as '5 6 7 8 9')."""
    ticks = sorted({float(r) for r in ratios if r is not None and r > 0})
    update = fig.update_xaxes if axis == "x" else fig.update_yaxes
    update(type="log", tickvals=ticks, ticktext=[f"{r:g}" for r in ticks], **where)


def score_vs_axis_figure(agg: pl.DataFrame, axis: str, *, scores: Sequence[str] = ("vl_score", "text_score"),
                         color: str = "scale", title: str = "", definition: str = "difference") -> go.Figure:
    """Scores (one panel each) vs a varied axis, one line per `color` value, stderr bars over seeds;
    titled by the study's stable-score `definition`."""
    fig = make_subplots(rows=1, cols=len(scores), subplot_titles=[score_label(s, definition) for s in scores],
                        horizontal_spacing=0.08)
    for i, (value, rows) in enumerate(_groups(agg, color)):
        rows = rows.sort(axis)
        colour = PALETTE[i % len(PALETTE)]
        _legend_entry(fig, _name(color, value), str(value), colour)
        for j, score in enumerate(scores):
            fig.add_trace(go.Scatter(
                x=rows[axis].to_list(), y=rows[f"{score}_mean"].to_list(), mode="lines+markers",
                name=_name(color, value), legendgroup=str(value), showlegend=False,
                line={"color": colour}, error_y=_error(rows, score),
                marker={"symbol": _symbols(rows), "size": 9, "line": {"width": 2, "color": colour}},
                hovertext=_hover(rows, score)), row=1, col=j + 1)
            fig.update_xaxes(title_text=_label(axis), row=1, col=j + 1)
            fig.update_yaxes(title_text=stable_title(definition) if j == 0 else "", row=1, col=j + 1)
    if axis == "image_ratio":
        _log_ratio_ticks(fig, agg[axis].to_list())
    elif axis == "finetune_epochs":
        fig.update_xaxes(dtick=1)
    return _layout(fig, (title or f"Scores vs {_label(axis)}") + _rewarm_key(fig), legend=color, top=100)


def per_task_figure(task_agg: pl.DataFrame, axis: str, *, color: str = "scale", title: str = "",
                    definition: str = "difference") -> go.Figure:
    """One panel per task: its stable score (under `definition`) vs `axis` (Fig. 4 per task)."""
    tasks = task_agg.sort("group", "task")["task"].unique(maintain_order=True).to_list()
    cols = min(4, len(tasks))
    rows_n = (len(tasks) + cols - 1) // cols
    fig = make_subplots(rows=rows_n, cols=cols, subplot_titles=tasks, horizontal_spacing=0.07,
                        vertical_spacing=min(0.12, 0.5 / max(rows_n, 1)))
    for i, (value, rows) in enumerate(_groups(task_agg, color)):
        colour = PALETTE[i % len(PALETTE)]
        _legend_entry(fig, _name(color, value), str(value), colour)
        for k, task in enumerate(tasks):
            sub = rows.filter(pl.col("task") == task).sort(axis)
            r, c = k // cols + 1, k % cols + 1
            fig.add_trace(go.Scatter(x=sub[axis].to_list(), y=sub["stable_score_mean"].to_list(),
                                     mode="lines+markers", name=_name(color, value), legendgroup=str(value),
                                     showlegend=False, line={"color": colour},
                                     marker={"symbol": _symbols(sub), "size": 8,
                                             "line": {"width": 1.5, "color": colour}},
                                     error_y=_error(sub, "stable_score")), row=r, col=c)
            bottom = k + cols >= len(tasks)  # no panel below this one
            fig.update_xaxes(title_text=axis.replace("_", " ") if bottom else "", row=r, col=c)
            fig.update_yaxes(title_text=stable_title(definition) if c == 1 else "", row=r, col=c)
    return _layout(fig, (title or f"Per-task stable scores vs {_label(axis)}") + _rewarm_key(fig), legend=color,
                   height=260 * rows_n + 120, top=100)


def ratio_origin_figure(agg: pl.DataFrame, *, checkpoint_fraction: float,
                        scores: Sequence[str] = ("vl_score", "text_score"),
                        definition: str = "difference") -> go.Figure:
    """Scores vs image ratio, branching from a trunk checkpoint (solid) and from scratch (dashed)."""
    fig = make_subplots(rows=1, cols=len(scores), subplot_titles=[score_label(s, definition) for s in scores],
                        horizontal_spacing=0.08)
    origins = ((f"from trunk checkpoint f = {checkpoint_fraction:g}", checkpoint_fraction, "solid"),
               ("from scratch (f = 0)", 0.0, "dash"))
    for i, (scale, rows) in enumerate(_groups(agg, "scale")):
        colour = PALETTE[i % len(PALETTE)]
        for name, f, dash in origins:
            sub = rows.filter(pl.col("intro_fraction") == f).sort("image_ratio")
            if len(sub) == 0:  # e.g. no from-scratch branches at this scale: no empty legend entry
                continue
            _legend_entry(fig, f"{scale}, {name}", f"{scale}{name}", colour, dash=dash)
            for j, score in enumerate(scores):
                fig.add_trace(go.Scatter(x=sub["image_ratio"].to_list(), y=sub[f"{score}_mean"].to_list(),
                                         mode="lines+markers", name=f"{scale}, {name}", showlegend=False,
                                         legendgroup=f"{scale}{name}", error_y=_error(sub, score),
                                         line={"color": colour, "dash": dash},
                                         marker={"symbol": _symbols(sub), "size": 9,
                                                 "line": {"width": 2, "color": colour}}), row=1, col=j + 1)
                fig.update_xaxes(title_text=_label("image_ratio"), row=1, col=j + 1)
                fig.update_yaxes(title_text=stable_title(definition) if j == 0 else "", row=1, col=j + 1)
    _log_ratio_ticks(fig, agg["image_ratio"].to_list())
    return _layout(fig, "Scores vs image ratio: from a trunk checkpoint and from scratch" + _rewarm_key(fig),
                   legend="scale, origin", top=100)


def branch_start_tokens(trunk: pl.DataFrame, intro_fraction: float) -> float:
    """Trunk tokens at the checkpoint a branch at `intro_fraction` resumed from.

    The step is `models.stepfiles.fraction_step`'s (the one the trunk saved it at), T being the
    planned tokens. Tokens per step come from the trunk's own metric rows (tokens = step · tokens
    per step).
    """
    per_step = float((trunk["tokens"] / trunk["step"]).max())
    planned = trunk["planned_tokens"][0] if "planned_tokens" in trunk.columns else None
    if planned is None or per_step <= 0:
        return intro_fraction * float(trunk["tokens"].max())
    return float(fraction_step(intro_fraction, planned, per_step) * per_step)


def lr_schedule_figure(lr: pl.DataFrame) -> go.Figure:
    """Learning rate vs tokens of each trunk and of its branches, branches placed at f·T (Fig. 3).

    A branch's metric rows count tokens from the branch's own start (models/stages: step_count
    starts at 0 in every stage), so each branch is drawn from its trunk checkpoint onward.
    """
    fig = go.Figure()
    trunks = lr.filter(pl.col("kind") == "trunk")
    branches = lr.filter(pl.col("kind") == "branch")
    for sid, t_rows in _groups(trunks, "step_id"):
        t_rows = t_rows.sort("step")
        fig.add_trace(go.Scatter(x=t_rows["tokens"].to_list(), y=t_rows["value"].to_list(), mode="lines",
                                 name=f"trunk {t_rows['scale'][0]} (seed {t_rows['seed'][0]})",
                                 line={"color": "black", "width": 4}))
        mine = branches.filter(pl.col("parent_id") == sid).sort("intro_fraction", "image_ratio", "step_id")
        for j, (_, b_rows) in enumerate(_groups(mine, "step_id")):
            b_rows = b_rows.sort("step")
            f = b_rows["intro_fraction"][0] or 0.0
            start = branch_start_tokens(t_rows, f)
            policy = b_rows["schedule_policy"][0]
            label = f"branch f = {f:g}, ratio {b_rows['image_ratio'][0]:g} ({policy})"
            fig.add_trace(go.Scatter(x=(b_rows["tokens"] + start).to_list(), y=b_rows["value"].to_list(),
                                     mode="lines", name=label,
                                     line={"color": PALETTE[j % len(PALETTE)], "width": 2,
                                           "dash": "dot" if policy == "rewarm" else "solid"}))
    fig.update_xaxes(title_text="tokens (trunk, then each branch from its checkpoint at f·T)")
    fig.update_yaxes(title_text="learning rate")
    return _layout(fig, "LR schedules of the trunk and its branches (dotted: re-warmed)", legend="step")


def loss_curves_figure(metrics: pl.DataFrame, *, color: str, name: str = "train_loss", title: str = "",
                       x_title: str = "tokens (within the step)") -> go.Figure:
    """A training-loss metric vs tokens, one line per step, coloured by any axis.

    Per-step losses of small batches are noisy: a curve of more than 60 points is drawn faintly and
    overlaid with its centred running mean (window ≈ 1/30 of the curve, named in the axis title).
    """
    fig = go.Figure()
    rows = metrics.filter(pl.col("name") == name)
    widest = 1
    for i, (value, group) in enumerate(_groups(rows, color)):
        colour = PALETTE[i % len(PALETTE)]
        for k, (sid, curve) in enumerate(_groups(group, "step_id")):
            curve = curve.sort("step")
            window = max(1, len(curve) // 30) if len(curve) > 60 else 1
            widest = max(widest, window)
            x = curve["tokens"].to_list()
            if window > 1:
                fig.add_trace(go.Scatter(x=x, y=curve["value"].to_list(), mode="lines",
                                         name=f"{_name(color, value)} (raw)",
                                         legendgroup=str(value), showlegend=False, opacity=0.25,
                                         line={"color": colour, "width": 1}, hoverinfo="skip"))
            smooth = curve["value"].rolling_mean(window, center=True, min_samples=1)
            fig.add_trace(go.Scatter(x=x, y=smooth.to_list(), mode="lines", name=_name(color, value),
                                     legendgroup=str(value), showlegend=k == 0,
                                     line={"color": colour, "width": 2}, hovertext=sid))
    fig.update_xaxes(title_text=x_title)
    smoothing = f", running mean over {widest} steps" if widest > 1 else ""
    fig.update_yaxes(title_text=f"{name.replace('_', ' ')} (nats/token{smoothing})")
    return _layout(fig, title or f"{name.replace('_', ' ')} by {_label(color)}", legend=color)


def tradeoff_figure(frontier: FrontierFit, *, color: str = "scale", definition: str = "difference") -> go.Figure:
    """VL vs text scatter of configurations, the frontier highlighted, the fitted curve with its band."""
    fig = go.Figure()
    curve = frontier.curve
    drawn = len(curve) and curve["x"].n_unique() > 1  # one frontier point: no curve to draw
    if drawn and curve["y_lo"].is_not_null().any() and not curve["y_lo"].is_nan().all():
        fig.add_trace(go.Scatter(x=curve["x"].to_list() + curve["x"].to_list()[::-1],
                                 y=curve["y_hi"].to_list() + curve["y_lo"].to_list()[::-1], fill="toself",
                                 line={"width": 0}, fillcolor="rgba(0,0,0,0.12)",
                                 name=f"frontier {100 * 0.95:.0f}% band ({frontier.bootstrap} bootstraps)"))
    if drawn:
        fig.add_trace(go.Scatter(x=curve["x"].to_list(), y=curve["y"].to_list(), mode="lines",
                                 name="fitted frontier", line={"color": "black"}))
    for i, (value, rows) in enumerate(_groups(frontier.points, color)):
        colour = PALETTE[i % len(PALETTE)]
        # plotly draws the legend marker from a trace's first point: put a filled circle first
        rows = rows.with_columns(pl.Series("_hollow", [sym.endswith("-open") for sym in _symbols(rows)])
                                 ).sort("_hollow", "on_frontier").drop("_hollow")
        shape = ["diamond" if o else "circle" for o in rows["on_frontier"].to_list()]
        fig.add_trace(go.Scatter(
            x=rows["x_mean"].to_list(), y=rows["y_mean"].to_list(), mode="markers", name=_name(color, value),
            legendgroup=str(value), hovertext=_point_labels(rows),
            marker={"color": colour, "size": 11, "line": {"width": 2, "color": colour},
                    "symbol": _symbols(rows, shape)}))
    fig.update_xaxes(title_text=_label(frontier.x, definition))
    fig.update_yaxes(title_text=_label(frontier.y, definition))
    key = _rewarm_key(fig)
    notes = [*frontier.notes, *([REWARM_NOTE] if key else [])]
    sub = "<br>".join(notes)  # one line each: a long joined line runs off the image
    title = "VL vs text trade-off (diamonds: Pareto frontier)"
    return _layout(fig, title + (f"<br><sup>{sub}</sup>" if sub else ""), legend=color, top=80 + 18 * len(notes))


def _point_labels(rows: pl.DataFrame) -> list[str]:
    """Hover text naming the configuration, one axis a line ('scale = 79m<br>intro_fraction = 0.8'),
    then its frontier probability and run count."""
    axes = [c for c in rows.columns if c not in ("x_mean", "y_mean", "n_runs", "on_frontier", "frontier_probability")]
    return ["<br>".join([*(f"{a} = {'–' if r[a] is None else format_value(r[a])}" for a in axes),
                         f"P(frontier) = {r['frontier_probability']:.2f}, n = {r['n_runs']}"])
            for r in rows.iter_rows(named=True)]


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


def response_surface_figure(grid: pl.DataFrame, *, scale: str, score: str,
                            observed: pl.DataFrame | None = None, definition: str = "difference") -> go.Figure:
    """Predicted score over (intro_fraction, image_ratio) for one scale, as a heatmap; the runs the
    surface was fitted to are marked, so where it extrapolates is visible."""
    pivot = grid.sort("intro_fraction", "image_ratio")
    fs = pivot["intro_fraction"].unique().sort().to_list()
    rs = pivot["image_ratio"].unique().sort().to_list()
    z = pivot["predicted"].to_numpy().reshape(len(fs), len(rs)).T
    fig = go.Figure(go.Heatmap(x=fs, y=rs, z=z.tolist(), colorbar={"title": "predicted"}, name=score))
    if observed is not None and len(observed):
        cells = observed.group_by("intro_fraction", "image_ratio").agg(pl.col(score).mean(), pl.len().alias("n"))
        fig.add_trace(go.Scatter(x=cells["intro_fraction"].to_list(), y=cells["image_ratio"].to_list(),
                                 mode="markers", name="runs (mean score)",
                                 marker={"color": "white", "size": 9, "line": {"color": "black", "width": 1.5}},
                                 hovertext=[f"{score} = {v:.3f}, n = {n}" for v, n in
                                            zip(cells[score].to_list(), cells["n"].to_list())]))
    fig.update_xaxes(title_text=_label("intro_fraction"))
    fig.update_yaxes(title_text=_label("image_ratio"))
    _log_ratio_ticks(fig, rs if observed is None else observed["image_ratio"].to_list(), axis="y")
    fig.update_layout(legend={"orientation": "h", "y": -0.25})  # the colour bar holds the right side
    return _layout(fig, f"Response surface of {score_label(score, definition)} at {scale}", legend="")


def _layout(fig: go.Figure, title: str, *, legend: str, height: int = 450, top: int = 80) -> go.Figure:
    # showlegend: plotly hides the legend of a one-trace figure, which loses the colour's meaning
    fig.update_layout(title={"text": title}, template="plotly_white", height=height,
                      width=max(700, 450 * len(fig.layout.annotations or [1])) if height <= 450 else 1200,
                      legend_title_text=legend, margin={"t": top}, showlegend=True)
    return fig
