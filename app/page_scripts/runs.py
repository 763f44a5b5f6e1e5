"""Runs page: a filterable table of steps with their status, axes, cost, files and job log; each
step's full config on request; the table as CSV."""

from __future__ import annotations

import json

import polars as pl
import streamlit as st

from analysis.mdtext import md_text
from analysis.queries import DATA_BOUND_SHARE
from analysis.schema import AXES
from app import loaders, session

SHOWN = ("step_id", "kind", "status", *AXES, "tokens", "flops", "wall_time_s", "data_wait_share",
         "failure_reason", "step_dir", "log")


def runs_page() -> None:
    ctx = session.context()
    st.title("Runs")
    table = loaders.runs(ctx.version, ctx.filters)
    a, b, c = st.columns(3)
    kinds = a.multiselect("kind", sorted(set(table["kind"].to_list())), key="runs_kinds", placeholder="all")
    statuses = b.multiselect("status", sorted(set(table["status"].to_list())), key="runs_status", placeholder="all")
    text = c.text_input("step id contains", key="runs_text")
    if kinds:
        table = table.filter(pl.col("kind").is_in(kinds))
    if statuses:
        table = table.filter(pl.col("status").is_in(statuses))
    if text:
        table = table.filter(pl.col("step_id").str.contains(text, literal=True))
    shown = table.select([c for c in SHOWN if c in table.columns])
    st.caption(f"{len(shown)} steps")
    if "data_wait_share" in table.columns:
        bound = table.filter(pl.col("data_wait_share") > DATA_BOUND_SHARE)
        if len(bound):
            st.warning(f"{len(bound)} step(s) data-bound: they waited for data more than "
                       f"{DATA_BOUND_SHARE:.0%} of their step time ({', '.join(bound['step_id'].to_list()[:5])}"
                       f"{' …' if len(bound) > 5 else ''}); give them more data workers "
                       "([backend] data_workers) or pre-tokenise their text (vlmsweep tokenize).",
                       icon="⏳")
    st.dataframe(shown, hide_index=True, key="runs_table")
    st.download_button("Download CSV", shown.write_csv(), file_name="runs.csv", mime="text/csv",
                       key="runs_csv")
    if len(table):
        sid = st.selectbox("step config", table["step_id"].to_list(), key="runs_config_step")
        row = table.filter(pl.col("step_id") == sid).row(0, named=True)
        st.caption(f"files: {md_text(row['step_dir'])}" + (f" · log: {md_text(row['log'])}" if row["log"] else ""))
        st.json(json.loads(row["config_json"] or "{}"), expanded=1)


if __name__ == "__main__":
    runs_page()
