"""Curves page: training curves of chosen metrics, coloured or faceted by any axis, smoothed, on
linear or log axes; each curve downsampled server-side to a fixed number of points."""

from __future__ import annotations

import streamlit as st

from analysis.queries import TRAINING_KINDS
from app import loaders, session
from app.views import CurvesOptions, build_curves

EXTRA_GROUPINGS = ("kind", "step_id")  # besides the study's axes


def curves_page() -> None:
    ctx = session.context()
    st.title("Training curves")
    names = loaders.metric_names(ctx.version)
    if not names:
        st.info("The catalog has no training metrics.")
        return
    default = [n for n in ("train_loss",) if n in names] or names[:1]
    left, right = st.columns(2)
    metrics = left.multiselect("metrics", names, default=default, key="curves_metrics")
    kinds = right.multiselect("steps", TRAINING_KINDS, default=["trunk", "branch"], key="curves_kinds")
    groupings = [*session.grouping_axes(ctx), *EXTRA_GROUPINGS]
    a, b, c, d = st.columns(4)
    color = a.selectbox("colour by", groupings, key="curves_color")
    facet = b.selectbox("facet by", ["name", None, *groupings], key="curves_facet",
                        format_func=lambda v: "metric" if v == "name" else "none" if v is None else v)
    x = c.selectbox("x axis", ["tokens", "step"], key="curves_x")
    smoothing = d.slider("smoothing (EMA weight)", 0.0, 0.99, 0.0, 0.01, key="curves_smoothing")
    e, f, _ = st.columns([1, 1, 2])
    log_x = e.checkbox("log x", key="curves_log_x")
    log_y = f.checkbox("log y", key="curves_log_y")
    session.show("curves", build_curves, CurvesOptions(
        metrics=tuple(metrics), kinds=tuple(kinds), color=color, facet=facet, x=x,
        smoothing=smoothing, log_x=log_x, log_y=log_y))


if __name__ == "__main__":
    curves_page()
