"""Export page: any of the app's figures, with the options last used on its page, as PNG, SVG or
PDF (rendered by kaleido when the button is pressed; only where a Chrome/Chromium is found), as an
interactive HTML page and as the CSV of exactly the plotted data."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from analysis.export import FORMATS, figure_data, find_browser
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
    images = FORMATS if _browser() else ()
    cols = st.columns(len(images) + 2)
    for col, fmt in zip(cols, images):
        col.download_button(f"{fmt.upper()}", _render(built.figure, fmt), file_name=f"{name}.{fmt}",
                            mime=MIME[fmt], key=f"export_{fmt}", on_click="ignore")
    cols[-2].download_button("HTML (interactive)", lambda: built.figure.to_html(include_plotlyjs=True),
                             file_name=f"{name}.html", mime="text/html", key="export_html", on_click="ignore")
    cols[-1].download_button("CSV (plotted data)", figure_data(built.figure).write_csv(), file_name=f"{name}.csv",
                             mime="text/csv", key="export_csv")
    if not images:
        st.caption("PNG, SVG and PDF need a Chrome/Chromium (Debian: `apt-get install chromium`, or run "
                   "`plotly_get_chrome`); restart the app once one is installed.")


@st.cache_resource
def _browser() -> str | None:
    return find_browser()


if __name__ == "__main__":
    export_page()
