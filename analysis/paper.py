"""The paper's published numbers beside the study cells they describe ("against the paper").

`analysis/data/paper_numbers.csv` holds one number of Keh et al. (ICLR 2025, arXiv 2503.07603) a row:
its table or figure (`source`), the cell it describes (`scale` and the axes it fixes; empty = not
fixed), its `metric`, `value` (and `value_high` for a range), the paper's `uncertainty` where it gives
one, and `verified`: `abstract` (checked against the paper's abstract), `arxiv_html` (checked against
the paper's own tables and figure captions in its arXiv HTML, v1; docs/evaluation.md says which
passage), `pdf` (against the PDF), `summary` (only third-party summaries of the paper say it) or
`unverified` (not checked). Metrics:
`vl_score` / `text_score` / `avg_score` (stable-score averages; with `intro_fraction_ref`, the
difference of the cell at `intro_fraction` minus the one at the reference), `task:<task>` (a task's
primary metric), `seed_range:<task>` (max − min over seeds), `best_<axis>` (the axis value with the
highest VL score). A row naming an encoder other than SigLIP matches nothing: studies have no encoder
axis. Ours are means over seeds with their standard error and run count.
"""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl

from analysis.errors import AnalysisInputError
from analysis.scores import CONFIG_AXES, fix_other_axes

PAPER_NUMBERS = Path(__file__).resolve().parent / "data" / "paper_numbers.csv"
CELL_AXES = ("intro_fraction", "image_ratio", "image_data", "finetune_epochs")
_FLOATS = ("intro_fraction", "intro_fraction_ref", "image_ratio", "value", "value_high", "uncertainty")
_COLUMNS = ("id", "source", "scale", *CELL_AXES, "intro_fraction_ref", "encoder", "metric", "value",
            "value_high", "uncertainty", "verified", "note")
VERIFIED = ("abstract", "arxiv_html", "pdf", "summary", "unverified")
OUT_COLUMNS = ("id", "source", "cell", "metric", "ours", "ours_stderr", "ours_runs", "paper", "paper_high",
               "paper_uncertainty", "verified")


def load_paper_numbers(path: str | Path = PAPER_NUMBERS) -> pl.DataFrame:
    """The published numbers, typed; a malformed row is an error naming the file and the row."""
    try:
        raw = pl.read_csv(path, infer_schema_length=0)
    except (OSError, pl.exceptions.ComputeError) as exc:
        raise AnalysisInputError(f"{path}: cannot read the paper's numbers ({exc})") from None
    missing = [c for c in _COLUMNS if c not in raw.columns]
    if missing:
        raise AnalysisInputError(f"{path}: missing column(s) {missing}")
    for i, row in enumerate(raw.iter_rows(named=True)):
        if not row["id"] or not row["metric"] or row["verified"] not in VERIFIED:
            raise AnalysisInputError(f"{path}: row {i + 2}: needs an id, a metric and verified in {VERIFIED}")
        for col in (*_FLOATS, "finetune_epochs"):
            if row[col] not in (None, "") and not _is_number(row[col]):
                raise AnalysisInputError(f"{path}: row {i + 2}: {col} {row[col]!r} is not a number")
    return raw.with_columns([pl.col(c).cast(pl.Float64) for c in _FLOATS]
                            + [pl.col("finetune_epochs").cast(pl.Float64).cast(pl.Int64)])


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def task_levels(main: pl.DataFrame, task_scores: pl.DataFrame) -> pl.DataFrame:
    """Per configuration and task of the final models: mean, stderr, runs and range of the value."""
    if not len(main) or not len(task_scores):
        return pl.DataFrame()
    keys = [a for a in CONFIG_AXES if a in task_scores.columns]
    rows = task_scores.filter(pl.col("step_id").is_in(main["step_id"].to_list()))
    n = pl.col("value").count()
    return rows.group_by([*keys, "task"]).agg(
        pl.col("value").mean().alias("mean"), pl.when(n > 1).then(pl.col("value").std() / n.sqrt()).alias("stderr"),
        n.alias("runs"), pl.when(n > 1).then(pl.col("value").max() - pl.col("value").min()).alias("range"))


def _matches(frame: pl.DataFrame, number: dict, skip: tuple[str, ...] = ()) -> pl.DataFrame:
    out = frame.filter(pl.col("scale") == number["scale"]) if "scale" in frame.columns else frame.clear()
    for axis in CELL_AXES:
        if axis in skip or number[axis] is None:
            continue
        if axis not in out.columns:
            return out.clear()
        out = out.filter((pl.col(axis) - number[axis]).abs() < 1e-9 if axis != "image_data"
                         else pl.col(axis) == number[axis])
    return out


def _cell(row: dict, fixed: dict) -> str:
    parts = [f"scale {row['scale']}"] + [f"{a} {row[a]}" for a in CELL_AXES if a in row and row[a] is not None]
    return ", ".join(dict.fromkeys(parts + [f"{a} {v}" for a, v in fixed.items()]))


def _ours(number: dict, agg: pl.DataFrame, levels: pl.DataFrame) -> list[dict]:
    """Our values for one published number: one per matching configuration."""
    metric = number["metric"]
    if number["encoder"] not in (None, "", "siglip"):
        return []
    if metric.startswith("best_"):
        return _best(number, metric[len("best_"):], agg)
    if ":" in metric:
        kind, task = metric.split(":", 1)
        rows = _matches(levels.filter(pl.col("task") == task), number) if len(levels) else levels
        col = {"task": "mean", "seed_range": "range"}.get(kind)
        return [] if col is None else [{"cell": _cell(r, {}), "ours": r[col], "ours_runs": r["runs"],
                                        "ours_stderr": r["stderr"] if col == "mean" else None}
                                       for r in rows.iter_rows(named=True) if r[col] is not None]
    if f"{metric}_mean" not in agg.columns:
        return []
    if number["intro_fraction_ref"] is None:
        return [{"cell": _cell(r, {}), "ours": r[f"{metric}_mean"], "ours_stderr": r[f"{metric}_stderr"],
                 "ours_runs": r["n_runs"]} for r in _matches(agg, number).iter_rows(named=True)
                if r[f"{metric}_mean"] is not None]
    return _differences(number, metric, agg)


def _differences(number: dict, metric: str, agg: pl.DataFrame) -> list[dict]:
    at, ref = _matches(agg, number), _matches(agg, number | {"intro_fraction": number["intro_fraction_ref"]})
    keys = [a for a in CONFIG_AXES if a in agg.columns and a != "intro_fraction"]
    both = at.join(ref, on=keys, suffix="_ref", nulls_equal=True)
    out = []
    for r in both.iter_rows(named=True):
        a, b = r[f"{metric}_mean"], r[f"{metric}_mean_ref"]
        if a is None or b is None:
            continue
        se_a, se_b = r[f"{metric}_stderr"], r[f"{metric}_stderr_ref"]
        out.append({"cell": _cell(r, {"vs intro_fraction": number["intro_fraction_ref"]}), "ours": a - b,
                    "ours_stderr": None if se_a is None or se_b is None else math.hypot(se_a, se_b),
                    "ours_runs": min(r["n_runs"], r["n_runs_ref"])})
    return out


def _best(number: dict, axis: str, agg: pl.DataFrame) -> list[dict]:
    """The value of `axis` with the highest mean VL score at the scale, other axes at their mode."""
    rows = _matches(agg, number, skip=(axis,))
    if axis not in rows.columns or rows[axis].n_unique() < 2 or "vl_score_mean" not in rows.columns:
        return []
    rows, fixed = fix_other_axes(rows, [axis, "scale"])
    best = rows.sort("vl_score_mean", descending=True, nulls_last=True).row(0, named=True)
    return [{"cell": _cell({"scale": number["scale"]}, fixed), "ours": float(best[axis]), "ours_stderr": None,
             "ours_runs": int(rows["n_runs"].sum())}]


def against_paper(agg: pl.DataFrame, levels: pl.DataFrame, numbers: pl.DataFrame | None = None) -> pl.DataFrame:
    """Every (published number, matching study configuration) pair, ours beside theirs."""
    numbers = load_paper_numbers() if numbers is None else numbers
    out = []
    for number in numbers.iter_rows(named=True):
        for ours in _ours(number, agg, levels):
            out.append({"id": number["id"], "source": number["source"], "metric": number["metric"],
                        "paper": number["value"], "paper_high": number["value_high"],
                        "paper_uncertainty": number["uncertainty"], "verified": number["verified"], **ours})
    schema = {"id": pl.String, "source": pl.String, "cell": pl.String, "metric": pl.String, "ours": pl.Float64,
              "ours_stderr": pl.Float64, "ours_runs": pl.Int64, "paper": pl.Float64, "paper_high": pl.Float64,
              "paper_uncertainty": pl.Float64, "verified": pl.String}
    return pl.DataFrame(out, schema=schema).select(OUT_COLUMNS)


def _number(value: float | None, se: float | None = None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" + (f" ± {se:.4f}" if se is not None else "")


def markdown(matches: pl.DataFrame, n_numbers: int) -> list[str]:
    """findings.md's "Against the paper" section."""
    lines = ["## Against the paper", ""]
    if not len(matches):
        return lines + [f"None of the paper's {n_numbers} published numbers (analysis/data/paper_numbers.csv) "
                        "describes a cell of this study (its scale or axis values are not in the study).", ""]
    lines += ["Ours: mean ± standard error over seeds (runs); the paper's value ± its uncertainty where it gives "
              "one. `verified` says how the paper's number was checked.", "",
              "| number | source | cell | ours | paper | verified |", "|---|---|---|---|---|---|"]
    for r in matches.iter_rows(named=True):
        paper = _number(r["paper"], r["paper_uncertainty"])
        if r["paper_high"] is not None:
            paper = f"{r['paper']:g} to {r['paper_high']:g}"
        lines.append(f"| {r['id']} ({r['metric']}) | {r['source']} | {r['cell']} | "
                     f"{_number(r['ours'], r['ours_stderr'])} ({r['ours_runs']} runs) | {paper} | {r['verified']} |")
    return lines + [""]
