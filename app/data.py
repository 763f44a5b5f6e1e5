"""Catalog queries the app needs that `analysis.queries` does not have (yet): filter options, grid
coverage, totals, server-side downsampled training curves and the runs table.

Pure functions of an open DuckDB connection and `Filters`; every value reaches SQL as a named
parameter, and only names from `analysis.schema` are spliced in as identifiers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import duckdb
import polars as pl

from analysis.schema import AXES
from app.filters import FILTER_AXES, Filters

TRAINING_KINDS = ("trunk", "branch", "finetune")
STATUSES = ("done", "running", "failed", "missing")  # coverage states, best first
_AXIS_SELECT = ", ".join(f's."{a}"' for a in AXES)


def _frame(con: duckdb.DuckDBPyConnection, sql: str, params: dict | None = None) -> pl.DataFrame:
    return con.sql(sql, params=params or None).pl()


def axis_options(con: duckdb.DuckDBPyConnection, study: str | None) -> dict[str, list]:
    """Every value each filter axis takes among the study's steps (planned or ingested), sorted
    (scales by parameter count)."""
    where = "" if study is None else " AND step_id IN (SELECT step_id FROM study_steps WHERE study = $study)"
    params = {} if study is None else {"study": study}
    options = {}
    for axis in FILTER_AXES:
        order = "max(params), v" if axis == "scale" else "v"  # scales by size, not by name
        sql = (f'SELECT "{axis}" AS v FROM (SELECT step_id, "{axis}", params FROM steps UNION ALL '
               f'SELECT step_id, "{axis}", params FROM study_steps) WHERE "{axis}" IS NOT NULL{where} '
               f"GROUP BY v ORDER BY {order}")
        options[axis] = _frame(con, sql, params)["v"].to_list()
    return options


def metric_names(con: duckdb.DuckDBPyConnection) -> list[str]:
    return _frame(con, "SELECT DISTINCT name FROM metrics ORDER BY name")["name"].to_list()


def filtered_steps(con: duckdb.DuckDBPyConnection, filters: Filters) -> pl.DataFrame:
    """The catalog's steps rows (done and failed) kept by the filters."""
    where, params = filters.sql("s")
    return _frame(con, f"SELECT * FROM steps s WHERE TRUE{where} ORDER BY kind, step_id", params)


def coverage(con: duckdb.DuckDBPyConnection, root: Path, filters: Filters,
             kinds: Sequence[str] = ("eval",)) -> pl.DataFrame:
    """One row per step of the grid with its status: done, running, failed or missing.

    The grid is what the study manifests planned, plus ingested steps no manifest lists; a planned
    step with no catalog row is running when its folder holds progress.json, else missing.
    """
    planned_where, params = filters.sql("s")
    params = {**params, "kinds": list(kinds)}
    sql = (f"WITH planned AS (SELECT DISTINCT s.step_id, s.kind, {_AXIS_SELECT} FROM study_steps s "
           f"WHERE list_contains($kinds, s.kind){planned_where}), "
           f"extra AS (SELECT s.step_id, s.kind, {_AXIS_SELECT} FROM steps s WHERE list_contains($kinds, s.kind)"
           f"{planned_where} AND s.step_id NOT IN (SELECT step_id FROM planned)) "
           "SELECT g.*, c.status AS catalog_status, c.failure_reason FROM "
           "(SELECT * FROM planned UNION ALL SELECT * FROM extra) g LEFT JOIN steps c USING (step_id) "
           "ORDER BY g.kind, g.step_id")
    grid = _frame(con, sql, params)
    running = [(root / "steps" / k / sid / "progress.json").is_file() if status is None else False
               for k, sid, status in zip(grid["kind"], grid["step_id"], grid["catalog_status"])]
    status = (pl.when(pl.col("catalog_status").is_not_null()).then(pl.col("catalog_status"))
              .when(pl.Series(running)).then(pl.lit("running")).otherwise(pl.lit("missing")))
    return grid.with_columns(status.alias("status")).drop("catalog_status")


def totals(con: duckdb.DuckDBPyConnection, filters: Filters) -> pl.DataFrame:
    """Per kind: steps done and failed, tokens, FLOPs and accelerator-hours (wall time of every step)."""
    where, params = filters.sql("s")
    sql = ("SELECT kind, count(*) FILTER (WHERE status = 'done') AS done, "
           "count(*) FILTER (WHERE status = 'failed') AS failed, "
           "CAST(coalesce(sum(tokens) FILTER (WHERE status = 'done'), 0) AS DOUBLE) AS tokens, "
           "coalesce(sum(flops) FILTER (WHERE status = 'done'), 0) AS flops, "
           "coalesce(sum(wall_time_s), 0) / 3600.0 AS accelerator_hours "
           f"FROM steps s WHERE TRUE{where} GROUP BY kind ORDER BY kind")
    return _frame(con, sql, params)


def curve_points(con: duckdb.DuckDBPyConnection, filters: Filters, *, names: Sequence[str],
                 kinds: Sequence[str] = TRAINING_KINDS, points: int = 200) -> pl.DataFrame:
    """Training curves cut server-side to at most `points` bucket means per (step, metric).

    Each curve's optimizer-step range is cut into `points` equal-width buckets; a bucket becomes the
    mean of its step, tokens and value, and `rows` says how many logged rows it stands for. Every
    run keeps a curve however long it is: downsampling never drops a run. (Equal-width buckets
    need one min/max per curve instead of a sort, ~3x faster than row numbering on 5M rows.)
    """
    if points < 2:
        raise ValueError(f"curve_points: points must be at least 2, got {points}")
    where, params = filters.sql("s")
    params = {**params, "names": list(names), "kinds": list(kinds), "points": points}
    sql = ("WITH sel AS (SELECT m.step_id, m.name, m.step, m.tokens, m.value FROM metrics m JOIN steps s "
           f"USING (step_id) WHERE list_contains($names, m.name) AND list_contains($kinds, s.kind){where}), "
           "span AS (SELECT step_id, name, min(step) AS lo, max(step) AS hi FROM sel GROUP BY step_id, name) "
           "SELECT step_id, name, CAST(floor((step - lo) * $points / (hi - lo + 1)) AS BIGINT) AS bucket, "
           "avg(step) AS step, avg(tokens) AS tokens, avg(value) AS value, count(*) AS rows "
           "FROM sel JOIN span USING (step_id, name) GROUP BY step_id, name, bucket ORDER BY step_id, name, bucket")
    return _frame(con, sql, params)


def runs_table(con: duckdb.DuckDBPyConnection, root: Path, filters: Filters) -> pl.DataFrame:
    """The filtered steps with where their files and job log are, for the Runs page."""
    steps = filtered_steps(con, filters)
    logs = job_logs(root)
    step_dirs = [str(root / "steps" / k / sid) for k, sid in zip(steps["kind"], steps["step_id"])]
    return steps.with_columns(pl.Series("step_dir", step_dirs, dtype=pl.String),
                              pl.Series("log", [logs.get(s, "") for s in steps["step_id"]], dtype=pl.String))


def job_logs(root: Path) -> dict[str, str]:
    """step_id -> the log of its latest submitted job, from <root>/launch/jobs.jsonl (if any).

    Lines that do not parse are skipped: the journal belongs to the launcher, and a half-written
    last line must not take the browser down.
    """
    path = root / "launch" / "jobs.jsonl"
    if not path.is_file():
        return {}
    latest: dict[str, tuple[float, str]] = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
            sid, at, log = str(rec["step_id"]), float(rec.get("submitted_at", 0)), str(rec.get("log", ""))
        except (ValueError, KeyError, TypeError):
            continue
        if sid not in latest or at >= latest[sid][0]:
            latest[sid] = (at, log)
    return {sid: log for sid, (_, log) in latest.items()}
