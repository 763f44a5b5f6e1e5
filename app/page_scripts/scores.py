"""Scores page: stable scores vs intro_fraction, image_ratio, instruction_share or finetune_epochs,
one line per scale (or any axis), per task or aggregated, with standard-error bars over seeds."""

from __future__ import annotations

import streamlit as st

from analysis.scores import SCORES, score_label
from app import loaders, session
from app.views import SCORE_AXES, ScoresOptions, build_scores


def scores_page() -> None:
    ctx = session.context()
    st.title("Scores")
    varied = session.varied_axes(ctx)
    axes = [a for a in SCORE_AXES if a in varied] or list(SCORE_AXES)
    a, b, c = st.columns(3)
    axis = a.selectbox("x axis", axes, key="scores_axis")
    view = b.radio("scores", ["aggregate", "per task"], horizontal=True, key="scores_view")
    colors = [v for v in session.grouping_axes(ctx) if v != axis]
    color = c.selectbox("one line per", colors, key="scores_color")
    chosen = SCORES[:2]
    if view == "aggregate":
        definition = loaders.stable_definition(ctx.version, ctx.filters)
        chosen = st.multiselect("aggregates", SCORES, default=list(SCORES[:2]), key="scores_which",
                                format_func=lambda s: score_label(s, definition)) or list(SCORES[:2])
    built = session.show("scores", build_scores, ScoresOptions(
        axis=axis, scores=tuple(chosen), per_task=view == "per task", color=color))
    if built is not None:
        with st.expander("Plotted aggregates"):
            st.dataframe(built.table, hide_index=True)


if __name__ == "__main__":
    scores_page()
