"""Scaling page: a Chinchilla Approach-3 law L(N, D) = E + A/N^α + B/D^β fitted to chosen loss
curves, with bootstrap intervals on its parameters."""

from __future__ import annotations

import streamlit as st

from app import loaders, session
from app.data import TRAINING_KINDS
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
    built = session.show("scaling", build_scaling, ScalingOptions(
        metric=metric, kinds=tuple(kinds), points_per_run=points, skip_fraction=skip, bootstrap=bootstrap))
    if built is not None:
        st.dataframe(built.table, hide_index=True)


if __name__ == "__main__":
    scaling_page()
