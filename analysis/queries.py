"""Read-side queries over the catalog, returning polars frames (the app and the report share them).

Every function takes an open DuckDB connection (`analysis.store.connect`) and an optional study
name or `Filters`; with a study, only the steps its manifest lists are returned. Every value
reaches SQL as a parameter; only names from `analysis.schema` are spliced in as identifiers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import duckdb
import polars as pl

from analysis.errors import AnalysisInputError
from analysis.filters import FILTER_AXES, Filters
from analysis.schema import AXES, CURVE_BUCKETS, CURVE_POINTS, HELDOUT_LOSSES
from models import stepfiles as sf

TRAINING_KINDS = ("trunk", "branch", "finetune")
STATUSES = (sf.DONE, sf.RUNNING, sf.FAILED, sf.MISSING)  # coverage states (models.stepfiles' words)
_AXIS_SELECT = ", ".join(f's."{a}"' for a in AXES)


def study_names(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in con.execute("SELECT study FROM studies ORDER BY study").fetchall()]


def resolve_study(con: duckdb.DuckDBPyConnection, study: str | Path | None) -> str | None:
    """A study name from a name, a study file path or a manifest path; None stays None."""
    if study is None:
        return None
    rows = con.execute("SELECT study, study_file FROM studies").fetchall()
    text, stem = str(study), Path(study).stem
    for name, file in rows:
        if text == name or (file and Path(file).name == Path(text).name):
            return name
    for name, _ in rows:
        if stem == name:
            return name
    known = ", ".join(n for n, _ in rows) or "none (no study manifests were ingested)"
    raise AnalysisInputError(f"study {text!r} is not in the catalog; known studies: {known}")


def _study_filter(study: str | None, alias: str = "s") -> tuple[str, list]:
    if study is None:
        return "", []
    return f" AND {alias}.step_id IN (SELECT step_id FROM study_steps WHERE study = ?)", [study]


def load_steps(con: duckdb.DuckDBPyConnection, study: str | None = None) -> pl.DataFrame:
    where, params = _study_filter(study)
    return _frame(con, f"SELECT * FROM steps s WHERE TRUE{where} ORDER BY kind, step_id", params)


def load_stable_scores(con: duckdb.DuckDBPyConnection, study: str | None = None) -> pl.DataFrame:
    """Per-task stable scores of done eval steps with the evaluated chain's axes."""
    where, params = _study_filter(study)
    return _frame(con, f"SELECT * FROM stable_scores s WHERE TRUE{where} ORDER BY step_id, task", params)


def stable_definition(con: duckdb.DuckDBPyConnection, study: str | None) -> str:
    """How the study defines its stable scores (`[eval] stable_score`): `difference` (the catalog's
    views) or `centered`; every study together, or none named, is `difference`."""
    rows = [] if study is None else con.execute("SELECT stable_score FROM studies WHERE study = ?",
                                                [study]).fetchall()
    return rows[0][0] if rows and rows[0][0] else sf.STABLE_DEFINITIONS[0]


def load_heldout_losses(con: duckdb.DuckDBPyConnection, study: str | None = None) -> pl.DataFrame:
    """Per done eval step: its held-out losses, one column each (val_text_loss, val_caption_loss)."""
    where, params = _study_filter(study)
    cases = ", ".join(f"max(value) FILTER (WHERE task = '{task}') AS {col}" for task, col in HELDOUT_LOSSES.items())
    return _frame(con, f"SELECT step_id, {cases} FROM heldout_losses s WHERE TRUE{where} "
                       "GROUP BY step_id ORDER BY step_id", params)


def trunk_tokens(con: duckdb.DuckDBPyConnection, study: str | None = None) -> pl.DataFrame:
    """Per model size: the planned tokens of its text-only trunks (the D of a scaling law)."""
    where, params = _study_filter(study)
    return _frame(con, "SELECT params, CAST(median(planned_tokens) AS DOUBLE) AS tokens FROM steps s "
                       f"WHERE kind = 'trunk' AND params IS NOT NULL{where} GROUP BY params ORDER BY params",
                  params)


def load_metrics(con: duckdb.DuckDBPyConnection, names: Sequence[str], study: str | None = None,
                 kinds: Sequence[str] = ("trunk", "branch", "finetune")) -> pl.DataFrame:
    """Metric rows (named `names`) of training steps, joined with their axes and parent_id."""
    where, params = _study_filter(study)
    axes = ", ".join(f's."{a}"' for a in AXES)
    query = (f"SELECT m.step_id, s.kind, s.parent_id, s.planned_tokens, {axes}, m.step, m.tokens, "
             "m.name, m.value FROM metrics m JOIN steps s USING (step_id) "
             "WHERE m.name IN (SELECT unnest($names)) AND s.kind IN (SELECT unnest($kinds))"
             f"{where.replace('?', '$study')} "
             "ORDER BY m.step_id, m.name, m.step")
    args = {"names": list(names), "kinds": list(kinds)}
    if study is not None:
        args["study"] = params[0]
    return _frame(con, query, args)


def missing_cells(con: duckdb.DuckDBPyConnection, study: str | None = None) -> pl.DataFrame:
    """Planned eval steps with no done result: the grid's empty cells, with why (failed / no result)."""
    where = "" if study is None else " AND p.study = $study"
    axes = ", ".join(f'p."{a}"' for a in AXES)
    query = (f"SELECT p.study, p.step_id, {axes}, COALESCE(s.status, 'no result') AS status, "
             "s.failure_reason FROM study_steps p LEFT JOIN steps s USING (step_id) "
             f"WHERE p.kind = 'eval' AND (s.status IS NULL OR s.status <> 'done'){where} "
             "ORDER BY p.study, p.step_id")
    return _frame(con, query, {} if study is None else {"study": study})


def diverged_steps(con: duckdb.DuckDBPyConnection, study: str | None = None) -> pl.DataFrame:
    """step_id, kind, error of the (study's) steps that failed with reason diverged."""
    where = "" if study is None else " AND step_id IN (SELECT step_id FROM study_steps WHERE study = $study)"
    return _frame(con, f"SELECT step_id, kind, error FROM steps WHERE failure_reason = 'diverged'{where} "
                  "ORDER BY kind, step_id", {} if study is None else {"study": study})


def _frame(con: duckdb.DuckDBPyConnection, query: str, params: list | dict) -> pl.DataFrame:
    return con.sql(query, params=params or None).pl()


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
    """Names of the logged training metrics (from the small curves table, not the metric rows)."""
    return _frame(con, "SELECT DISTINCT name FROM curves ORDER BY name", {})["name"].to_list()


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
    running = [sf.step_paths(root, k, sid).progress.is_file() if status is None else False
               for k, sid, status in zip(grid["kind"], grid["step_id"], grid["catalog_status"])]
    status = (pl.when(pl.col("catalog_status").is_not_null()).then(pl.col("catalog_status"))
              .when(pl.Series(running, dtype=pl.Boolean)).then(pl.lit(sf.RUNNING)).otherwise(pl.lit(sf.MISSING)))
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


def training_events(con: duckdb.DuckDBPyConnection, filters: Filters, *,
                    kinds: Sequence[str] = TRAINING_KINDS) -> pl.DataFrame:
    """The loss spikes, skipped batches and rewinds of the filtered training steps (one row each:
    step_id, step, tokens, name, value) with `loss`, the last training loss at or before it."""
    where, params = filters.sql("s")
    params = {**params, "events": list(sf.EVENT_METRICS), "kinds": list(kinds)}
    sql = ("WITH e AS (SELECT m.* FROM metrics m JOIN steps s USING (step_id) "
           f"WHERE list_contains($events, m.name) AND list_contains($kinds, s.kind){where}), "
           "l AS (SELECT step_id, step, value FROM metrics WHERE name = 'train_loss' "
           "AND step_id IN (SELECT step_id FROM e)) "
           "SELECT e.step_id, e.step, e.tokens, e.name, e.value, l.value AS loss, "
           "(SELECT kind FROM steps k WHERE k.step_id = e.step_id) AS kind FROM e "
           "ASOF LEFT JOIN l ON e.step_id = l.step_id AND e.step >= l.step ORDER BY e.step_id, e.step")
    return _frame(con, sql, params)


def curve_points(con: duckdb.DuckDBPyConnection, filters: Filters, *, names: Sequence[str],
                 kinds: Sequence[str] = TRAINING_KINDS, points: int = CURVE_BUCKETS) -> pl.DataFrame:
    """Training curves cut server-side to at most `points` buckets per (step, metric).

    Each curve's optimizer-step range is cut into `points` equal-width buckets; a bucket holds the
    mean of its step, tokens and value, its value range (value_min, value_max), its first and last
    logged step, and `rows`, how many logged rows it stands for. Every run keeps a curve however
    long it is: downsampling never drops a run, and every logged row is in exactly one bucket.

    Up to CURVE_BUCKETS points this reads the `curve_points` table ingest pre-cut (a few hundred
    rows per curve); finer views read the logged metric rows (see `_live_points`).
    """
    if points < 2:
        raise ValueError(f"curve_points: points must be at least 2, got {points}")
    where, params = filters.sql("s")
    params = {**params, "names": list(names), "kinds": list(kinds)}
    chosen = ("SELECT c.* FROM curves c JOIN steps s USING (step_id) "
              f"WHERE list_contains($names, c.name) AND list_contains($kinds, s.kind){where}")
    if points == CURVE_BUCKETS:  # the stored buckets as they are
        sql = (f"SELECT {', '.join(f'p.{c}' for c in CURVE_POINTS.column_names)} FROM curve_points p "
               f"JOIN ({chosen}) c USING (step_id, name) ORDER BY p.step_id, p.name, p.bucket")
        return _frame(con, sql, params)
    sql = _live_points(chosen) if points > CURVE_BUCKETS else _merged_points(chosen)
    return _frame(con, sql, {**params, "points": points})


def _live_points(chosen: str) -> str:
    """One pass over the chosen curves' metric rows; `curves` supplies each curve's step range."""
    return ("SELECT m.step_id, m.name, (m.step - c.first_step) * $points // (c.last_step - c.first_step + 1) "
            "AS bucket, min(m.step) AS first_step, max(m.step) AS last_step, avg(m.step) AS step, "
            "avg(m.tokens) AS tokens, avg(m.value) AS value, min(m.value) AS value_min, "
            f"max(m.value) AS value_max, count(*) AS rows FROM metrics m JOIN ({chosen}) c "
            "USING (step_id, name) GROUP BY ALL ORDER BY m.step_id, m.name, bucket")


def _merged_points(chosen: str) -> str:
    """Pre-cut buckets merged into `points` buckets, each whole into the one its first row falls in.

    Bucketing is monotone in the step, so the merged buckets are contiguous runs of rows and the
    row-weighted means are exact means of those rows. When `points` divides CURVE_BUCKETS the
    boundaries are exactly the live query's; otherwise a boundary may move by up to one pre-cut
    bucket (1/CURVE_BUCKETS of the curve's span).
    """
    return ("SELECT p.step_id, p.name, (p.first_step - c.first_step) * $points // "
            "(c.last_step - c.first_step + 1) AS bucket, min(p.first_step) AS first_step, "
            "max(p.last_step) AS last_step, sum(p.step * p.rows) / sum(p.rows) AS step, "
            "sum(p.tokens * p.rows) / sum(p.rows) AS tokens, sum(p.value * p.rows) / sum(p.rows) AS value, "
            "min(p.value_min) AS value_min, max(p.value_max) AS value_max, "
            f"CAST(sum(p.rows) AS BIGINT) AS rows FROM curve_points p JOIN ({chosen}) c "
            "USING (step_id, name) GROUP BY ALL ORDER BY p.step_id, p.name, bucket")


def runs_table(con: duckdb.DuckDBPyConnection, root: Path, filters: Filters) -> pl.DataFrame:
    """The filtered steps with where their files and job log are, and the share of their step time
    spent waiting for data (`data_wait_share`, null without timing rows), for the Runs page."""
    steps = filtered_steps(con, filters)
    logs = job_logs(root)
    step_dirs = [str(sf.step_dir(root, k, sid)) for k, sid in zip(steps["kind"], steps["step_id"])]
    steps = steps.join(data_wait_shares(con), on="step_id", how="left")
    return steps.with_columns(pl.Series("step_dir", step_dirs, dtype=pl.String),
                              pl.Series("log", [logs.get(s, "") for s in steps["step_id"]], dtype=pl.String))


DATA_BOUND_SHARE = sf.DATA_BOUND_SHARE  # the step files' rule, for the app


def data_wait_shares(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """step_id → Σ data_wait_s ÷ Σ step seconds (tokens per step ÷ tokens_per_s), as
    `models.stepfiles.data_wait_share` computes it; above `DATA_BOUND_SHARE` a step is data-bound."""
    frame = _frame(con,
        "SELECT w.step_id, sum(w.value) / sum(t.tokens / t.step / t.value) AS data_wait_share "
        "FROM (SELECT step_id, step, value FROM metrics WHERE name = 'data_wait_s') w "
        "JOIN (SELECT step_id, step, tokens, value FROM metrics WHERE name = 'tokens_per_s' "
        "AND step > 0 AND value > 0 AND isfinite(value)) t USING (step_id, step) "
        "GROUP BY w.step_id", [])
    return frame.with_columns(pl.col("step_id").cast(pl.String), pl.col("data_wait_share").cast(pl.Float64))


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
        except (ValueError, KeyError, TypeError, RecursionError):
            continue
        if sid not in latest or at >= latest[sid][0]:
            latest[sid] = (at, log)
    return {sid: log for sid, (_, log) in latest.items()}
