"""Figures of a prediction: the best intro_fraction and image_ratio against scale (each trained
scale's own best with its interval, the cross-scale model's trend with its band, the extrapolated
point with its interval), and the predicted VL/text frontier at the target with its band.
"""

from __future__ import annotations

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from analysis.figures import PALETTE, _label, _layout
from analysis.predict import Prediction

_PANELS = (("intro_fraction", "best_intro_fraction"), ("image_ratio", "best_image_ratio"))


def _band(fig: go.Figure, x: list, lo: list, hi: list, row: int, name: str, show: bool) -> None:
    fig.add_trace(go.Scatter(x=x + x[::-1], y=hi + lo[::-1], fill="toself", line={"width": 0},
                             fillcolor="rgba(31,119,180,0.15)", name=name, legendgroup="band",
                             showlegend=show), row=row, col=1)


def prediction_figure(prediction: Prediction, observed: pl.DataFrame) -> go.Figure:
    """Best f and ratio vs parameters; `observed` is `analysis.surface.best_by_scale` of the trained scales."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("best intro_fraction", "best image_ratio"))
    trend = prediction.trend
    for row, (axis, best) in enumerate(_PANELS, start=1):
        first = row == 1
        x = trend["params"].to_list()
        if trend[f"{axis}_lo"].is_not_null().any():
            _band(fig, x, trend[f"{axis}_lo"].to_list(), trend[f"{axis}_hi"].to_list(), row,
                  f"fitted trend, 95% band ({prediction.bootstrap} bootstraps)", first)
        fig.add_trace(go.Scatter(x=x, y=trend[best].to_list(), mode="lines", name="fitted trend",
                                 legendgroup="trend", showlegend=first, line={"color": PALETTE[0]}), row=row, col=1)
        if len(observed):
            lo, hi = observed[f"{axis}_lo"], observed[f"{axis}_hi"]
            fig.add_trace(go.Scatter(
                x=observed["params"].to_list(), y=observed[best].to_list(), mode="markers",
                name="trained scales (own surface)", legendgroup="observed", showlegend=first,
                hovertext=[f"{s}: n = {n} runs" for s, n in zip(observed["scale"], observed["n_runs"])],
                marker={"color": "black", "size": 9},
                error_y={"type": "data", "symmetric": False, "visible": True,
                         "array": (hi - observed[best]).to_list(), "arrayminus": (observed[best] - lo).to_list()}),
                row=row, col=1)
        interval = getattr(prediction, best)
        err = ({"type": "data", "symmetric": False, "visible": True, "array": [interval.hi - interval.estimate],
                "arrayminus": [interval.estimate - interval.lo]} if interval.lo is not None else None)
        fig.add_trace(go.Scatter(x=[prediction.params], y=[interval.estimate], mode="markers",
                                 name=f"predicted at {prediction.params:.3g}", legendgroup="predicted",
                                 showlegend=first, error_y=err,
                                 marker={"color": PALETTE[1], "size": 13, "symbol": "star"}), row=row, col=1)
        fig.update_yaxes(title_text=axis, row=row, col=1, **({"type": "log"} if axis == "image_ratio" else {}))
    fig.update_xaxes(type="log")
    fig.update_xaxes(title_text=_label("params"), row=2, col=1)
    note = f"{prediction.extrapolation:.3g}x the largest trained scale"
    return _layout(fig, f"Where to put images at the next scale<br><sup>{note}</sup>", legend="", height=700)


def predicted_frontier_figure(prediction: Prediction, observed: pl.DataFrame | None = None, *,
                              definition: str = "difference") -> go.Figure:
    """The predicted VL-vs-text frontier at the target with its band; `observed`: frontier points
    (x_mean, y_mean, scale) of the trained scales, for comparison. Axes titled by `definition`."""
    fig = go.Figure()
    curve = prediction.frontier
    if len(curve) and curve["y_lo"].is_not_null().any():
        x = curve["x"].to_list()
        fig.add_trace(go.Scatter(x=x + x[::-1], y=curve["y_hi"].to_list() + curve["y_lo"].to_list()[::-1],
                                 fill="toself", line={"width": 0}, fillcolor="rgba(214,39,40,0.15)",
                                 name=f"95% band ({prediction.bootstrap} bootstraps)"))
    if len(curve):
        fig.add_trace(go.Scatter(x=curve["x"].to_list(), y=curve["y"].to_list(), mode="lines",
                                 name=f"predicted frontier at {prediction.params:.3g}", line={"color": PALETTE[1]}))
    if observed is not None and len(observed):
        for i, (scale, rows) in enumerate(observed.group_by("scale", maintain_order=True)):
            fig.add_trace(go.Scatter(x=rows["x_mean"].to_list(), y=rows["y_mean"].to_list(), mode="markers",
                                     name=f"{scale[0]} (trained)", marker={"color": PALETTE[(i + 2) % len(PALETTE)]}))
    fig.update_xaxes(title_text=_label("text_score", definition))
    fig.update_yaxes(title_text=_label("vl_score", definition))
    return _layout(fig, "Predicted VL vs text frontier", legend="")
