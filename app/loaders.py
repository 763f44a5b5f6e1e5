"""Cached data loaders of the app: each runs one query (or fit) against a catalog version.

Every loader takes the `CatalogVersion` first, so a swapped-in catalog misses every cache entry
and is read afresh; the filters are part of the key too. Frames come back as copies
(`st.cache_data`), fits as shared immutable objects (`st.cache_resource`).
"""

from __future__ import annotations

import polars as pl
import streamlit as st

from analysis import queries, scores
from analysis.filters import Filters
from analysis.frontier import FrontierFit, fit_frontier
from analysis.predict_io import PredictionReport, assemble_runs, run_prediction_on
from analysis.scaling import ScalingFit, coarse_grid, fit_scaling_law
from app.catalog import CatalogVersion, cursor

_CACHE = {"max_entries": 64, "show_spinner": False}


@st.cache_data(**_CACHE)
def studies(version: CatalogVersion) -> list[str]:
    with cursor(version) as cur:
        return queries.study_names(cur)


@st.cache_data(**_CACHE)
def axis_options(version: CatalogVersion, study: str | None) -> dict[str, list]:
    with cursor(version) as cur:
        return queries.axis_options(cur, study)


@st.cache_data(**_CACHE)
def metric_names(version: CatalogVersion) -> list[str]:
    with cursor(version) as cur:
        return queries.metric_names(cur)


@st.cache_data(**_CACHE)
def steps(version: CatalogVersion, filters: Filters) -> pl.DataFrame:
    with cursor(version) as cur:
        return queries.filtered_steps(cur, filters)


# Running steps are seen on disk (progress.json), not in the catalog: refresh them every few seconds.
@st.cache_data(ttl=5, **_CACHE)
def coverage(version: CatalogVersion, filters: Filters, kinds: tuple[str, ...]) -> pl.DataFrame:
    with cursor(version) as cur:
        return queries.coverage(cur, version.root, filters, kinds)


@st.cache_data(**_CACHE)
def totals(version: CatalogVersion, filters: Filters) -> pl.DataFrame:
    with cursor(version) as cur:
        return queries.totals(cur, filters)


@st.cache_data(**_CACHE)
def curve_points(version: CatalogVersion, filters: Filters, names: tuple[str, ...], kinds: tuple[str, ...],
                 points: int) -> pl.DataFrame:
    """Downsampled curves, the query's few columns only."""
    with cursor(version) as cur:
        return queries.curve_points(cur, filters, names=names, kinds=kinds, points=points)


@st.cache_data(**_CACHE)
def training_events(version: CatalogVersion, filters: Filters, kinds: tuple[str, ...]) -> pl.DataFrame:
    """Loss spikes, skipped batches and rewinds of the filtered steps (the curves page marks them)."""
    with cursor(version) as cur:
        return queries.training_events(cur, filters, kinds=kinds)


def curves(version: CatalogVersion, filters: Filters, names: tuple[str, ...], kinds: tuple[str, ...],
           points: int) -> pl.DataFrame:
    """Downsampled curves joined with their step's axes, kind and parent.

    The join is not cached: st.cache_data pickles what it stores, and the joined frame (every
    steps column on every point) costs ~40x the narrow one to pickle, more than the join itself.
    """
    meta = steps(version, filters).drop("config_json", "meta_json", "tokens", strict=False)
    return curve_points(version, filters, names, kinds, points).join(meta, on="step_id", how="left")


@st.cache_data(**_CACHE)
def stable_definition(version: CatalogVersion, filters: Filters) -> str:
    """The chosen study's stable-score definition (`[eval] stable_score`; no study: difference)."""
    with cursor(version) as cur:
        return queries.stable_definition(cur, filters.study)


@st.cache_data(**_CACHE)
def task_scores(version: CatalogVersion, filters: Filters) -> pl.DataFrame:
    """Per-task stable scores of done eval steps, with the evaluated chain's axes."""
    with cursor(version) as cur:
        return filters.apply(scores.centered(queries.load_stable_scores(cur, filters.study),
                                             queries.stable_definition(cur, filters.study)))


@st.cache_data(**_CACHE)
def step_scores(version: CatalogVersion, filters: Filters) -> pl.DataFrame:
    """One row per eval step: vl_score, text_score, avg_score (analysis.scores.step_scores)."""
    return scores.step_scores(task_scores(version, filters))


@st.cache_data(**_CACHE)
def runs(version: CatalogVersion, filters: Filters) -> pl.DataFrame:
    with cursor(version) as cur:
        return queries.runs_table(cur, version.root, filters)


@st.cache_resource(max_entries=16, show_spinner=False)
def frontier(version: CatalogVersion, filters: Filters, bootstrap: int) -> FrontierFit:
    """The VL-vs-text frontier over the final models' configurations."""
    final = scores.main_stage(step_scores(version, filters))
    return fit_frontier(final, x="text_score", y="vl_score", bootstrap=bootstrap, seed=0)


@st.cache_resource(max_entries=16, show_spinner=False)
def scaling(version: CatalogVersion, filters: Filters, metric: str, kinds: tuple[str, ...],
            points_per_run: int, skip_fraction: float, bootstrap: int, full_grid: bool
            ) -> tuple[pl.DataFrame, ScalingFit]:
    """(N, D, L) points from the chosen loss curves and the Approach-3 fit through them.

    Each run contributes `points_per_run` bucket means of its curve after the first `skip_fraction`
    of its tokens (warm-up losses say little about the law). The fit starts from
    `analysis.scaling.coarse_grid()` unless `full_grid` asks for all 4,500 starts (seconds, not
    tenths: the page runs it only when asked).
    """
    pts = curves(version, filters, (metric,), kinds, points_per_run)
    pts = pts.filter(pl.col("tokens") >= skip_fraction * pl.col("tokens").max().over("step_id"))
    pts = pts.filter(pl.col("params").is_not_null() & (pl.col("tokens") > 0) & (pl.col("value") > 0))
    fit = fit_scaling_law(pts["params"].to_numpy().astype(float), pts["tokens"].to_numpy(),
                          pts["value"].to_numpy(), bootstrap=bootstrap, seed=0,
                          starts=None if full_grid else coarse_grid())
    return pts.select("step_id", "scale", "params", "tokens", "value"), fit



@st.cache_resource(max_entries=16, show_spinner=False)
def prediction(version: CatalogVersion, filters: Filters, params: float, bootstrap: int) -> PredictionReport:
    """The prediction at `params` from the filtered final models, with its backtest (seconds: cached)."""
    with cursor(version) as cur:
        losses, tokens = queries.load_heldout_losses(cur, filters.study), queries.trunk_tokens(cur, filters.study)
    runs, fixed = assemble_runs(step_scores(version, filters), losses, tokens)
    return run_prediction_on(runs, params=params, bootstrap=bootstrap, seed=0, fixed=fixed)


@st.cache_data(**_CACHE)
def trained_sizes(version: CatalogVersion, filters: Filters) -> list[int]:
    """Parameters of the scales with evaluated final models, smallest first."""
    final = scores.main_stage(step_scores(version, filters)).filter(pl.col("vl_score").is_not_null())
    return sorted(final["params"].drop_nulls().unique().to_list())
