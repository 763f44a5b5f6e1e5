"""The one definition of the results catalog: table names, columns, dtypes and the schema version.

DuckDB DDL and polars schemas are both derived from `TABLES`, so a column is declared once.
Bump SCHEMA_VERSION when a table changes; ingest then rebuilds the catalog instead of reusing rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from models import stepfiles as sf

SCHEMA_VERSION = 7  # 2: curves; 3: curve_points; 4: evals.primary_metric; 5: heldout_losses;
# 6: studies.stable_score, step_scores averaging POPE's splits into one task; 7: steps.config_id

# Held-out validation losses travel in `evals` under their own metric (models.stepfiles names it) and
# are never a task's primary metric, so that no stable-score average counts them. Each becomes a
# column of the prediction's runs: task -> column.
LOSS_METRIC = sf.LOSS_METRIC
HELDOUT_LOSSES = {"heldout_text": "val_text_loss", "heldout_caption": "val_caption_loss"}

# Buckets per curve in `curve_points`; changing it changes that table: bump SCHEMA_VERSION with it.
CURVE_BUCKETS = 200

# DuckDB type -> polars dtype. Timestamps are naive UTC; FLOPs overflow int64 at the paper's scale.
_POLARS_TYPES: dict[str, pl.DataType] = {
    "VARCHAR": pl.String(), "BIGINT": pl.Int64(), "DOUBLE": pl.Float64(),
    "BOOLEAN": pl.Boolean(), "TIMESTAMP": pl.Datetime("us"),
}


@dataclass(frozen=True, kw_only=True, slots=True)
class Column:
    name: str
    dtype: str  # a DuckDB type named in _POLARS_TYPES
    doc: str = ""  # what the column means (shown by the app's schema page)
    # A step file written before the column existed gets this SQL over its row `p` (None: required).
    legacy: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    doc: str = ""

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def ddl(self) -> str:
        cols = ", ".join(f'"{c.name}" {c.dtype}' for c in self.columns)
        return f"CREATE TABLE {self.name} ({cols})"

    def polars_schema(self) -> pl.Schema:
        return pl.Schema({c.name: _POLARS_TYPES[c.dtype] for c in self.columns})

    def empty_frame(self) -> pl.DataFrame:
        return pl.DataFrame(schema=self.polars_schema())


def _cols(*specs: tuple[str, str, str]) -> tuple[Column, ...]:
    return tuple(Column(name=n, dtype=t, doc=d) for n, t, d in specs)


# The axes of a study as config.json's meta names them; same names from study file to figure axis.
AXIS_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("scale", "VARCHAR", "model preset name"),
    ("params", "BIGINT", "the LM's total parameters"),
    ("text_data", "VARCHAR", "text data source name"),
    ("image_data", "VARCHAR", "image-caption data source name"),
    ("intro_fraction", "DOUBLE", "fraction of the trunk at which images are introduced"),
    ("image_ratio", "DOUBLE", "share of image-stage tokens from image-caption data"),
    ("instruction_share", "DOUBLE", "share of instruction data inside the image part"),
    ("finetune_epochs", "BIGINT", "instruction fine-tuning epochs"),
    ("seed", "BIGINT", "random seed"),
    ("schedule", "VARCHAR", "the study's schedule axis value: paper | continue | rewarm"),
    ("schedule_policy", "VARCHAR", "resolved LR policy of the branch: continue | rewarm"),
    ("stage", "VARCHAR", "eval steps: what was evaluated (trunk | branch | finetune)"),
    ("checkpoint", "DOUBLE", "trunk evals: the intro-fraction checkpoint evaluated"),
)
AXES: tuple[str, ...] = tuple(a[0] for a in AXIS_COLUMNS)

STEPS = Table(name="steps", doc="one row per finished or failed step", columns=_cols(
    ("step_id", "VARCHAR", "content hash of the step"),
    ("kind", "VARCHAR", "encoder | trunk | branch | finetune | eval"),
    ("parent_id", "VARCHAR", "the step this one continues or evaluates"),
    ("parents_json", "VARCHAR", "all (role, step_id) parents as JSON"),
    *AXIS_COLUMNS,
    ("config_id", "VARCHAR", "the configuration: a hash of every result-changing config field of the "
     "step and its chain, seeds left out (steps with one config_id differ only by seed)"),
    ("planned_tokens", "BIGINT", "tokens the plan asked for (meta.tokens)"),
    ("status", "VARCHAR", "done | failed"),
    ("tokens", "BIGINT", "tokens actually trained on"),
    ("flops", "DOUBLE", "training FLOPs"),
    ("params_embedding", "BIGINT", "embedding parameters"),
    ("params_non_embedding", "BIGINT", "transformer-block parameters"),
    ("params_lm_total", "BIGINT", "embedding + non-embedding"),
    ("params_vision", "BIGINT", "image-encoder parameters"),
    ("params_projector", "BIGINT", "projector parameters"),
    ("wall_time_s", "DOUBLE", "wall-clock seconds of the step"),
    ("peak_memory_bytes", "BIGINT", "peak accelerator or host memory"),
    ("started_at", "TIMESTAMP", "UTC start"),
    ("finished_at", "TIMESTAMP", "UTC end"),
    ("code_salt", "BIGINT", "code-version salt in the step's identity"),
    ("git_commit", "VARCHAR", "commit the step ran at"),
    ("hostname", "VARCHAR", "where it ran"),
    ("device", "VARCHAR", "accelerator it ran on"),
    ("failure_reason", "VARCHAR", "failed steps: the reason"),
    ("error", "VARCHAR", "failed steps: the error message"),
    ("config_json", "VARCHAR", "the full step config"),
    ("meta_json", "VARCHAR", "the step's meta (axis values as named by the study)"),
    ("source_signature", "VARCHAR", "sizes and mtimes of the step's files (incremental ingest)"),
    ("skipped_files", "VARCHAR", "files of this step that could not be read ('' when none)"),
))

STUDY_STEPS = Table(name="study_steps", doc="which studies a step belongs to (from the manifests)",
                    columns=_cols(
    ("study", "VARCHAR", "study name"),
    ("step_id", "VARCHAR", "a step the study planned"),
    ("kind", "VARCHAR", "the step's kind"),
    *AXIS_COLUMNS,
    ("meta_json", "VARCHAR", "the step's meta as planned"),
))

METRICS = Table(name="metrics", doc="training curves", columns=_cols(
    ("step_id", "VARCHAR", "the step that logged the row"),
    ("step", "BIGINT", "optimizer step"),
    ("tokens", "BIGINT", "tokens seen by the step so far"),
    ("name", "VARCHAR", "train_loss, text_loss, caption_loss, lr, grad_norm, ..."),
    ("value", "DOUBLE", "the value"),
))

# Derived at ingest from metrics, one row per logged curve: browsers downsample a curve in one
# pass over its rows (bucket = (step - first_step) * k // span) instead of a second pass for its range.
CURVES = Table(name="curves", doc="one row per (step, metric) curve: its step range and row count", columns=_cols(
    ("step_id", "VARCHAR", "the step that logged the curve"),
    ("name", "VARCHAR", "the metric"),
    ("first_step", "BIGINT", "its first optimizer step"),
    ("last_step", "BIGINT", "its last optimizer step"),
    ("rows", "BIGINT", "logged rows"),
))

# Derived at ingest from metrics and curves: every curve pre-cut into at most CURVE_BUCKETS equal-width
# buckets over its step range (the bucket formula above with k = CURVE_BUCKETS), so a browser asking
# for <= CURVE_BUCKETS points per curve reads ~200 rows per curve instead of every logged row.
CURVE_POINTS = Table(name="curve_points", doc=f"each curve pre-cut into <= {CURVE_BUCKETS} step buckets",
                     columns=_cols(
    ("step_id", "VARCHAR", "the step that logged the curve"),
    ("name", "VARCHAR", "the metric"),
    ("bucket", "BIGINT", f"(step - curve first_step) * {CURVE_BUCKETS} // (curve step span + 1)"),
    ("first_step", "BIGINT", "the bucket's first logged optimizer step"),
    ("last_step", "BIGINT", "the bucket's last logged optimizer step"),
    ("step", "DOUBLE", "mean optimizer step of the bucket's rows"),
    ("tokens", "DOUBLE", "mean tokens seen of the bucket's rows"),
    ("value", "DOUBLE", "mean value of the bucket's rows"),
    ("value_min", "DOUBLE", "smallest value in the bucket"),
    ("value_max", "DOUBLE", "largest value in the bucket"),
    ("rows", "BIGINT", "logged rows in the bucket"),
))

EVALS = Table(name="evals", doc="zero-shot evaluation results: one row per (task, metric)", columns=(
    *_cols(
        ("step_id", "VARCHAR", "the eval step"),
        ("task", "VARCHAR", "task name"),
        ("group", "VARCHAR", "vl | text"),
        ("metric", "VARCHAR", "acc, acc_norm, vqa_accuracy, exact_match, f1, ... (models.metrics), or "
                              f"{LOSS_METRIC} (held-out loss: tasks {', '.join(HELDOUT_LOSSES)})"),
        ("value", "DOUBLE", f"the metric's value ({LOSS_METRIC}: nats per token)"),
        ("chance", "DOUBLE", "the task's chance level (null where none applies)"),
        ("n", "BIGINT", f"examples evaluated (tokens scored for {LOSS_METRIC})")),
    # Files from before this column held one `accuracy` row per task: that row was the score.
    Column(name="primary_metric", dtype="BOOLEAN", legacy="p.\"metric\" = 'accuracy'",
           doc="the row the task's stable score (value - chance) is taken from; one per task"),
))

STUDIES = Table(name="studies", doc="one row per study manifest", columns=_cols(
    ("study", "VARCHAR", "study name"),
    ("study_file", "VARCHAR", "the study file it was planned from"),
    ("written_at", "VARCHAR", "when the planner wrote the manifest"),
    ("axes_json", "VARCHAR", "the study's axes and their values"),
    ("stable_score", "VARCHAR", "difference (score - chance) or centered ((score - chance) / (1 - chance))"),
))

CATALOG_INFO = Table(name="catalog_info", doc="schema version and provenance", columns=_cols(
    ("key", "VARCHAR", "schema_version | root"),
    ("value", "VARCHAR", "its value"),
))

TABLES: dict[str, Table] = {t.name: t for t in (STEPS, STUDY_STEPS, METRICS, CURVES, CURVE_POINTS, EVALS,
                                                STUDIES, CATALOG_INFO)}

# A configuration: every axis but the seed, and config_id, so that two steps with equal axes but
# another config field (a fine-tune lr edited mid-study) are two configurations, never two seeds.
_CONFIG_AXES = (*(a for a in AXES if a != "seed"), "config_id")
_SCORE_COLUMNS = (*AXES, "config_id")


def _quoted(names) -> str:
    return ", ".join(f'"{n}"' for n in names)


def _config_aggregates() -> str:
    parts = ["count(*) AS n_runs"]
    for s in ("vl_score", "text_score", "avg_score"):
        parts += [f"avg({s}) AS {s}_mean", f"stddev_samp({s}) / sqrt(count({s})) AS {s}_stderr",
                  f"count({s}) AS {s}_n"]
    return ", ".join(parts)


# Benchmarks reported as one task in the averages, the mean of their splits (the paper's POPE):
# tasks named `<suite>_<split>` fold into `<suite>` before the VL / text / all-task means.
FOLDED_SUITES = ("pope",)


def benchmark_sql(task: str = "task") -> str:
    """SQL: the benchmark a task counts as in the averages (its suite, or itself)."""
    cases = " ".join(f"WHEN starts_with({task}, '{suite}_') THEN '{suite}'" for suite in FOLDED_SUITES)
    return f"CASE {cases} ELSE {task} END"


# Stable score = primary metric - chance (DESIGN §1), never a held-out loss row, joined with the
# evaluated chain's axes (heldout_losses: those rows, likewise joined); per eval
# step the VL, text and all-task averages over benchmarks (a folded suite's splits averaged first);
# per configuration (config_id and all axes but seed) mean, stderr, n.
# analysis.scores computes the same in polars (with a configurable k-task average); a test
# checks the two agree.
VIEWS: dict[str, str] = {
    "stable_scores": (
        "CREATE VIEW stable_scores AS SELECT e.step_id, e.task, e.\"group\", e.metric, e.value, "
        "e.chance, e.n, e.value - e.chance AS stable_score, "
        + ", ".join(f"s.\"{a}\"" for a in _SCORE_COLUMNS)
        + " FROM evals e JOIN steps s USING (step_id) WHERE s.status = 'done' AND e.primary_metric"
        + f" AND e.metric <> '{LOSS_METRIC}'"),
    "heldout_losses": (
        "CREATE VIEW heldout_losses AS SELECT e.step_id, e.task, e.\"group\", e.value, e.n, "
        + ", ".join(f"s.\"{a}\"" for a in _SCORE_COLUMNS)
        + f" FROM evals e JOIN steps s USING (step_id) WHERE s.status = 'done' AND e.metric = '{LOSS_METRIC}'"),
    "step_scores": (
        f"CREATE VIEW step_scores AS SELECT step_id, {_quoted(_SCORE_COLUMNS)}, "
        "avg(stable_score) FILTER (WHERE \"group\" = 'vl') AS vl_score, "
        "avg(stable_score) FILTER (WHERE \"group\" = 'text') AS text_score, "
        "avg(stable_score) AS avg_score, count(*) FILTER (WHERE \"group\" = 'vl') AS n_vl_tasks, "
        "count(*) FILTER (WHERE \"group\" = 'text') AS n_text_tasks, count(*) AS n_avg_tasks "
        f"FROM (SELECT step_id, {_quoted(_SCORE_COLUMNS)}, \"group\", {benchmark_sql()} AS benchmark, "
        f"avg(stable_score) AS stable_score FROM stable_scores GROUP BY step_id, {_quoted(_SCORE_COLUMNS)}, "
        f"\"group\", benchmark) GROUP BY step_id, {_quoted(_SCORE_COLUMNS)}"),
    "config_scores": (
        f"CREATE VIEW config_scores AS SELECT {_quoted(_CONFIG_AXES)}, {_config_aggregates()} "
        f"FROM step_scores GROUP BY {_quoted(_CONFIG_AXES)}"),
}


def create_all(con) -> None:
    """Create every table and view in an empty DuckDB database."""
    for table in TABLES.values():
        con.execute(table.ddl())
    for ddl in VIEWS.values():
        con.execute(ddl)
    con.execute("INSERT INTO catalog_info VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
