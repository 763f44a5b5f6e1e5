"""Read-side queries over the catalog, returning polars frames (the app and the report share them).

Every function takes an open DuckDB connection (`analysis.store.connect`) and an optional study
name; with a study, only the steps its manifest lists are returned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import duckdb
import polars as pl

from analysis.errors import AnalysisInputError
from analysis.schema import AXES


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


def load_metrics(con: duckdb.DuckDBPyConnection, names: Sequence[str], study: str | None = None,
                 kinds: Sequence[str] = ("trunk", "branch", "finetune")) -> pl.DataFrame:
    """Metric rows (named `names`) of training steps, joined with their axes and parent_id."""
    where, params = _study_filter(study)
    axes = ", ".join(f's."{a}"' for a in AXES)
    query = (f"SELECT m.step_id, s.kind, s.parent_id, s.planned_tokens, {axes}, m.step, m.tokens, "
             "m.name, m.value FROM metrics m JOIN steps s USING (step_id) "
             f"WHERE m.name IN (SELECT unnest($names)) AND s.kind IN (SELECT unnest($kinds)){where.replace('?', '$study')} "
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


def _frame(con: duckdb.DuckDBPyConnection, query: str, params: list | dict) -> pl.DataFrame:
    return con.sql(query, params=params or None).pl()
