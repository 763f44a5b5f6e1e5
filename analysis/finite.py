"""No NaN or inf is a result: the catalog-side guard of ingest (`analysis.store`).

Training refuses non-finite numbers itself (`models.stages.guard`, reason `diverged`), but a
results root may hold steps written before that guard, or files edited by hand. Ingest therefore
checks what it inserted: a done step with a non-finite eval value or training metric (a timing
row's NaN is only dropped) is stored as failed with reason `diverged`, its non-finite rows dropped,
and a warning names it; every done step under a diverged one is stored failed (diverged) too and
its evals are dropped (an eval of a diverged trunk scores a broken model: 0.0, or 0.5 on a yes/no
task). Decided: drop and mark, never store NULL for a lost value, so that no average, frontier or
fit can take the step as a result.
"""

from __future__ import annotations

import warnings

import duckdb

from analysis.errors import AnalysisWarning

TIMING = ("tokens_per_s",)  # wall-clock rows: not the model's numbers
DIVERGED = "diverged"  # the failure reason (models.stepfiles.REASONS spells it for step files)

_BAD_ROWS = (
    "SELECT step_id, 'evals.parquet: ' || task || ' ' || metric || ' = ' || CAST(value AS VARCHAR) AS what "
    "FROM evals WHERE NOT isfinite(value) "
    "UNION ALL SELECT step_id, 'metrics.parquet: ' || name || ' = ' || CAST(value AS VARCHAR) "
    "|| ' at step ' || CAST(step AS VARCHAR) FROM metrics WHERE NOT isfinite(value) AND name NOT IN ({timing})")


def refuse_nonfinite(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Mark done steps holding non-finite numbers as failed (diverged), drop those rows and every
    eval under a diverged step; the ids of the steps newly marked (each with a warning)."""
    timing = ", ".join(f"'{t}'" for t in TIMING)
    bad = con.execute(f"SELECT step_id, min(what) FROM ({_BAD_ROWS.format(timing=timing)}) "
                      "JOIN steps USING (step_id) WHERE status = 'done' GROUP BY step_id ORDER BY step_id").fetchall()
    for step_id, what in bad:
        warnings.warn(f"step {step_id}: {what}: not finite, so the step is stored as failed "
                      f"({DIVERGED}) and none of its non-finite numbers or evals are ingested",
                      AnalysisWarning, stacklevel=4)
        con.execute("UPDATE steps SET status = 'failed', failure_reason = ?, error = ? WHERE step_id = ?",
                    [DIVERGED, f"non-finite {what} (found at ingest)", step_id])
    con.execute("DELETE FROM metrics WHERE NOT isfinite(value)")  # a NaN timing row too: just dropped
    # every step under a diverged one (parent_id chains trunk → branch → finetune → eval): trained
    # or scored from a broken model, so failed too and without evals
    under = ("WITH RECURSIVE under(step_id) AS ("
             f"  SELECT step_id FROM steps WHERE failure_reason = '{DIVERGED}'"
             "  UNION SELECT s.step_id FROM steps s JOIN under u ON s.parent_id = u.step_id)"
             " SELECT step_id FROM under")
    con.execute(f"UPDATE steps SET status = 'failed', failure_reason = '{DIVERGED}', error = 'under a "
                f"step that diverged (found at ingest)' WHERE status = 'done' AND step_id IN ({under})")
    con.execute(f"DELETE FROM evals WHERE step_id IN ({under})")
    return [step_id for step_id, _ in bad]
