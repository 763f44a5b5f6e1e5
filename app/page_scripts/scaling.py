"""Scaling page: a Chinchilla Approach-3 law L(N, D) = E + A/N^α + B/D^β fitted to chosen loss
curves, with bootstrap intervals on its parameters; a coarse grid of starts by default, the full
grid on request."""

from __future__ import annotations

from dataclasses import replace

import streamlit as st

from analysis.queries import TRAINING_KINDS
from app import loaders, session
from app.views import ScalingOptions, build_scaling


def scaling_page() -> None:
    ctx = session.context()
    st.title("Scaling laws")
    names = [n for n in loaders.metric_names(ctx.version) if n.endswith("loss")]
    if not names:
        st.info("The catalog has no loss curves to fit.")
        return
    a, b, c = st.columns(3)
    metric = a.selectbox("loss", names, index=names.index("text_loss") if "text_loss" in names else 0,
                         key="scaling_metric")
    kinds = b.multiselect("of steps", TRAINING_KINDS, default=["trunk"], key="scaling_kinds")
    bootstrap = c.select_slider("bootstrap refits", [0, 10, 20, 50, 100], value=10, key="scaling_boot")
    d, e = st.columns(2)
    points = d.slider("points per run", 4, 40, 12, key="scaling_points")
    skip = e.slider("skip each run's first share of tokens", 0.0, 0.8, 0.2, 0.05, key="scaling_skip")
    options = ScalingOptions(metric=metric, kinds=tuple(kinds), points_per_run=points, skip_fraction=skip,
                             bootstrap=bootstrap)
    # The page fits from a coarse grid of starts; the full grid (seconds) runs only when asked, and
    # stays chosen for these options (with the filters and catalog version, the fit's cache key).
    refined = st.session_state.setdefault("scaling_refined", set())
    key = (ctx.version, ctx.filters, options)
    if key not in refined and st.button("Refine: fit from the full 4,500-start grid", key="scaling_refine"):
        refined.add(key)
    built = session.show("scaling", build_scaling, replace(options, full_grid=key in refined))
    if built is not None:
        st.dataframe(built.table, hide_index=True)


if __name__ == "__main__":
    scaling_page()
