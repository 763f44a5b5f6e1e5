"""Trade-off page: VL vs text stable scores of every configuration, the Pareto frontier and its
fitted curve with a bootstrap band; hovering a point shows its configuration."""

from __future__ import annotations

import streamlit as st

from app import session
from app.views import TradeoffOptions, build_tradeoff


def tradeoff_page() -> None:
    ctx = session.context()
    st.title("VL vs text trade-off")
    a, b = st.columns(2)
    color = a.selectbox("colour by", session.grouping_axes(ctx), key="tradeoff_color")
    bootstrap = b.select_slider("bootstrap resamples", [0, 50, 100, 200, 500], value=200, key="tradeoff_boot")
    built = session.show("tradeoff", build_tradeoff, TradeoffOptions(color=color, bootstrap=bootstrap))
    if built is not None:
        with st.expander("Configurations"):
            st.dataframe(built.table, hide_index=True)


if __name__ == "__main__":
    tradeoff_page()
