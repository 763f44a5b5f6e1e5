"""Per-run state shared by the pages: the catalog version and the sidebar filters (kept in the
URL's query parameters), the options each page last used, and how a built figure is shown.

`main` sets the context at the top of every script run; a page reads it with `context()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import streamlit as st

from analysis.filters import FILTER_AXES, Filters, format_value, parse_query_params
from app import loaders
from app.catalog import CatalogVersion
from app.views import Built, NothingToPlot

ALL_STEPS = "(every step in the catalog)"
_CONTEXT, _OPTIONS, _INIT = "vlmsweep_context", "vlmsweep_figure_options", "vlmsweep_filters_from_url"


@dataclass(frozen=True, kw_only=True, slots=True)
class Context:
    version: CatalogVersion
    filters: Filters
    axis_options: dict[str, list]  # every value of each filter axis in the chosen study


def context() -> Context:
    ctx = st.session_state.get(_CONTEXT)
    if ctx is None:
        raise RuntimeError("app page run without app.main: start the app with `vlmsweep app`")
    return ctx


def set_context(ctx: Context) -> None:
    st.session_state[_CONTEXT] = ctx


def remember(name: str, options: Any) -> None:
    """The options a page last plotted `name` with, so Export writes what the user saw."""
    st.session_state.setdefault(_OPTIONS, {})[name] = options


def remembered(name: str, default: Any) -> Any:
    return st.session_state.get(_OPTIONS, {}).get(name, default)


def _key(axis: str) -> str:
    return f"filter_{axis}"


def _seed_from_url(version: CatalogVersion, studies: list[str]) -> None:
    """On a session's first run, put the URL's filters into the widgets' state."""
    params = st.query_params.to_dict()
    study = params.get("study") if params.get("study") in studies else None
    filters, ignored = parse_query_params(params, loaders.axis_options(version, study), studies)
    only = studies[0] if len(studies) == 1 else None  # one study: show it, not the bare catalog
    st.session_state[_key("study")] = filters.study or only or ALL_STEPS
    for axis, values in filters.selections:
        st.session_state[_key(axis)] = list(values)
    st.session_state[_INIT] = ignored


def sidebar_filters(version: CatalogVersion) -> Context:
    """Render the study and axis filters in the sidebar, mirror them into the URL, return the context."""
    studies = loaders.studies(version)
    if _INIT not in st.session_state:
        _seed_from_url(version, studies)
    choices = [ALL_STEPS, *studies]
    if st.session_state.get(_key("study")) not in choices:
        st.session_state[_key("study")] = studies[0] if len(studies) == 1 else ALL_STEPS
    chosen = st.sidebar.selectbox("Study", choices, key=_key("study"))
    study = None if chosen == ALL_STEPS else chosen
    options = loaders.axis_options(version, study)
    selections = []
    for axis in FILTER_AXES:
        values = options.get(axis, [])
        key = _key(axis)
        # Values from another study or an older catalog would make the widget raise: drop them.
        st.session_state[key] = [v for v in st.session_state.get(key, []) if v in values]
        if len(values) > 1:
            kept = st.sidebar.multiselect(axis, values, key=key, format_func=format_value,
                                          placeholder="all values")
            if kept:
                selections.append((axis, tuple(v for v in values if v in kept)))
    ignored = st.session_state.get(_INIT) or []
    if ignored:
        # The URL's own text: shown verbatim, never as Markdown (a link or image in it must not load).
        st.sidebar.warning("URL parameters not in this catalog, ignored:")
        st.sidebar.code("\n".join(ignored), language=None)
    st.sidebar.caption("Steps an axis does not apply to (e.g. a trunk's intro_fraction) are always kept. "
                       "The filters live in the URL: copy it to share this view.")
    filters = Filters(study=study, selections=tuple(selections))
    wanted = filters.to_query_params()
    if st.query_params.to_dict() != wanted:
        st.query_params.from_dict(wanted)
    return Context(version=version, filters=filters, axis_options=options)


def varied_axes(ctx: Context, candidates: tuple[str, ...] = FILTER_AXES) -> list[str]:
    """Axes with more than one value left after filtering (the useful colour / facet choices)."""
    out = []
    for axis in candidates:
        kept = ctx.filters.allowed(axis)
        n = len(kept) if kept is not None else len(ctx.axis_options.get(axis, []))
        if n > 1:
            out.append(axis)
    return out


def grouping_axes(ctx: Context) -> list[str]:
    """Colour / facet / row choices: scale first (always), then every other axis that varies."""
    return ["scale", *(a for a in varied_axes(ctx) if a != "scale")]


def show(name: str, build, options: Any) -> Built | None:
    """Build and show a figure with its notes; say why when there is nothing to plot."""
    ctx = context()
    remember(name, options)
    try:
        built = build(ctx.version, ctx.filters, options)
    except NothingToPlot as exc:
        st.info(f"Nothing to plot: {exc}")
        return None
    st.plotly_chart(built.figure, width="stretch", key=f"chart_{name}")
    for note in built.notes:
        st.caption(note)
    return built
