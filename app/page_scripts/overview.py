"""Overview page: the study, grid coverage (done / running / failed / missing) and total cost."""

from __future__ import annotations

import streamlit as st

from analysis.mdtext import md_text
from app import loaders, session
from app.views import CoverageOptions, build_coverage

KIND_CHOICES = ("eval", "finetune", "branch", "trunk")


def _humanize(x: float) -> str:
    for unit, size in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= size:
            return f"{x / size:.3g}{unit}"
    return f"{x:.3g}"


def overview_page() -> None:
    ctx = session.context()
    st.title(f"Study: {ctx.filters.study}" if ctx.filters.study else "All steps in the catalog")
    st.caption(f"results root {md_text(ctx.version.root)} · {md_text(ctx.filters.describe())}")
    totals = loaders.totals(ctx.version, ctx.filters)
    cols = st.columns(5)
    cols[0].metric("steps done", int(totals["done"].sum()))
    cols[1].metric("steps failed", int(totals["failed"].sum()))
    cols[2].metric("tokens trained", _humanize(float(totals["tokens"].sum())))
    cols[3].metric("training FLOPs", _humanize(float(totals["flops"].sum())))
    cols[4].metric("accelerator-hours", f"{float(totals['accelerator_hours'].sum()):.1f}")
    st.subheader("Grid coverage")
    axes = session.grouping_axes(ctx)
    left, mid, right = st.columns(3)
    rows = left.selectbox("rows", axes, index=0, key="coverage_rows")
    col_choices = [a for a in axes if a != rows] or axes
    default_col = col_choices.index("intro_fraction") if "intro_fraction" in col_choices else 0
    cols_axis = mid.selectbox("columns", col_choices, index=default_col, key="coverage_cols")
    kind = right.selectbox("steps", KIND_CHOICES, key="coverage_kind",
                           help="eval: the grid's evaluated models; the others: training steps")
    built = session.show("coverage", build_coverage, CoverageOptions(rows=rows, cols=cols_axis, kinds=(kind,)))
    with st.expander("Per kind"):
        st.dataframe(totals, hide_index=True)
    if built is not None:
        problems = built.table.filter(built.table["status"] != "done")
        with st.expander(f"Steps not done ({len(problems)})"):
            st.dataframe(problems, hide_index=True)


if __name__ == "__main__":
    overview_page()
