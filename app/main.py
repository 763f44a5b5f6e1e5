"""Streamlit entry script of the result browser: `streamlit run app/main.py -- RESULTS_ROOT`.

Each script run reads the catalog's current version (so a new `ingest` shows on the next
interaction), renders the sidebar filters and runs the chosen page from the `st.navigation` menu.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st
from streamlit.navigation.page import StreamlitPage

# Not `pages/`: Streamlit treats a pages/ folder beside the entry script as a legacy multipage app.
PAGES_DIR = Path(__file__).resolve().parent / "page_scripts"
# (file, title, icon); the URL path is the file's stem, e.g. /curves.
PAGES = (("overview.py", "Overview", ":material/grid_view:"),
         ("curves.py", "Curves", ":material/show_chart:"),
         ("scores.py", "Scores", ":material/bar_chart:"),
         ("tradeoff.py", "Trade-off", ":material/scatter_plot:"),
         ("scaling.py", "Scaling", ":material/trending_down:"),
         ("predict.py", "Predictions", ":material/query_stats:"),
         ("runs.py", "Runs", ":material/table_rows:"),
         ("export.py", "Export", ":material/download:"))


def navigation() -> StreamlitPage:
    pages = [st.Page(PAGES_DIR / file, title=title, icon=icon, url_path=Path(file).stem, default=i == 0)
             for i, (file, title, icon) in enumerate(PAGES)]
    return st.navigation(pages)


def main(root: str | Path) -> None:
    """Render the app for the results root (a folder holding results.duckdb)."""
    # Imported here: under `streamlit run` this file's folder leads sys.path, and app modules
    # must load as `app.*` (the installed package), never as top-level siblings.
    from analysis.errors import AnalysisInputError
    from analysis.mdtext import md_text
    from app.catalog import catalog_version
    from app.session import set_context, sidebar_filters

    st.set_page_config(page_title="vlmsweep results", page_icon=":material/insights:", layout="wide")
    page = navigation()
    try:
        version = catalog_version(root)
        set_context(sidebar_filters(version))
    except AnalysisInputError as exc:
        st.error(md_text(exc))
        st.stop()
    st.sidebar.caption(f"catalog: {md_text(version.path)} (read-only)")
    page.run()


def root_from_argv(argv: list[str]) -> Path:
    """The results root passed after `--` on the streamlit command line."""
    if len(argv) != 2:
        raise SystemExit("usage: streamlit run app/main.py -- RESULTS_ROOT (or: vlmsweep app STUDY)")
    return Path(argv[1])


if __name__ == "__main__":
    here = Path(__file__).resolve().parent  # see main(): app modules must not shadow top-level names
    sys.path[:] = [p for p in sys.path if not p or Path(p).resolve() != here]
    main(root_from_argv(sys.argv))
