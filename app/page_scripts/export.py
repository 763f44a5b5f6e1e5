"""Export page: any of the app's figures, with the options last used on its page, as PNG, SVG or
PDF (rendered by kaleido when the button is pressed) and the CSV of exactly the plotted data."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from analysis.export import FORMATS, figure_data
from app import session
from app.views import FIGURES, NothingToPlot

MIME = {"png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf"}


def _render(fig: go.Figure, fmt: str):
    """Deferred: kaleido starts a browser, so render only when the download is asked for."""
    return lambda: fig.to_image(format=fmt)


def export_page() -> None:
    ctx = session.context()
    st.title("Export")
    name = st.selectbox("figure", list(FIGURES), key="export_figure")
    build, default = FIGURES[name]
    options = session.remembered(name, default)
    st.caption(f"options as last shown on its page: {options}")
    try:
        built = build(ctx.version, ctx.filters, options)
    except NothingToPlot as exc:
        st.info(f"Nothing to export: {exc}")
        return
    st.plotly_chart(built.figure, width="stretch", key="export_preview")
    cols = st.columns(len(FORMATS) + 1)
    for col, fmt in zip(cols, FORMATS):
        col.download_button(f"{fmt.upper()}", _render(built.figure, fmt), file_name=f"{name}.{fmt}",
                            mime=MIME[fmt], key=f"export_{fmt}", on_click="ignore")
    cols[-1].download_button("CSV (plotted data)", figure_data(built.figure).write_csv(), file_name=f"{name}.csv",
                             mime="text/csv", key="export_csv")


if __name__ == "__main__":
    export_page()
