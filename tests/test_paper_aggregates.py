"""The paper's aggregates: POPE's three splits count as one task (their mean) in every average, in
polars and in the catalog's views alike; the stable score is score − chance or, when the study says
`stable_score = "centered"`, DCLM's (score − chance) / (1 − chance), carried from the study file
through the manifest into the catalog."""

from __future__ import annotations

import duckdb
import polars as pl
import pytest

from analysis import queries
from analysis.schema import EVALS, STEPS, create_all
from analysis.scores import benchmark, centered, step_scores
from analysis.store import connect, ingest
from sweep.errors import StudyError
from sweep.plan import plan_study, write_study_manifest
from sweep.spec import load_study

ROWS = [("a", "vqav2", "vl", 0.60, 0.0), ("a", "pope_random", "vl", 0.80, 0.5), ("a", "pope_popular", "vl", 0.70, 0.5),
        ("a", "pope_adversarial", "vl", 0.60, 0.5), ("a", "arc_easy", "text", 0.55, 0.25),
        ("b", "vqav2", "vl", 0.40, 0.0), ("b", "pope_random", "vl", 0.90, 0.5), ("b", "arc_easy", "text", 0.40, 0.25)]


def _evals() -> pl.DataFrame:
    return pl.DataFrame(ROWS, schema=["step_id", "task", "group", "value", "chance"], orient="row")


def test_popes_splits_are_one_task_in_the_averages():
    out = {r["step_id"]: r for r in step_scores(_evals()).iter_rows(named=True)}
    assert out["a"]["vl_score"] == pytest.approx((0.60 + (0.30 + 0.20 + 0.10) / 3) / 2)
    assert out["a"]["n_vl_tasks"] == 2 and out["a"]["n_avg_tasks"] == 3
    assert out["a"]["avg_score"] == pytest.approx((0.60 + 0.20 + 0.30) / 3)
    assert out["b"]["vl_score"] == pytest.approx((0.40 + 0.40) / 2)  # one split present: it is POPE's score
    listed = step_scores(_evals(), average_tasks=["vqav2", "pope_random", "pope_popular"])
    assert listed.filter(pl.col("step_id") == "a")["avg_score"][0] == pytest.approx((0.60 + 0.20) / 2)
    assert benchmark("pope_adversarial") == "pope" and benchmark("popefully") == "popefully"


def test_the_catalog_view_folds_pope_as_polars_does():
    con = duckdb.connect()
    create_all(con)
    steps = pl.DataFrame([{"step_id": s, "kind": "eval", "status": "done"} for s in ("a", "b")]).with_columns(
        [pl.lit(None, dtype=dtype).alias(col) for col, dtype in STEPS.polars_schema().items()
         if col not in ("step_id", "kind", "status")]).select(STEPS.column_names).cast(STEPS.polars_schema())
    evals = _evals().with_columns(metric=pl.lit("acc"), n=pl.lit(100), primary_metric=pl.lit(True)) \
        .select(EVALS.column_names).cast(EVALS.polars_schema())
    for name, frame in (("steps", steps), ("evals", evals)):
        con.register("rows", frame)
        con.execute(f"INSERT INTO {name} SELECT * FROM rows")
        con.unregister("rows")
    view = con.sql("SELECT step_id, vl_score, text_score, avg_score, n_vl_tasks FROM step_scores ORDER BY step_id").pl()
    ours = step_scores(_evals()).sort("step_id")
    for col in ("vl_score", "text_score", "avg_score"):
        assert view[col].to_list() == pytest.approx(ours[col].to_list())
    assert view["n_vl_tasks"].to_list() == [2, 2]


def test_centered_divides_by_what_is_left_above_chance():
    scored = centered(_evals(), "centered")
    arc = scored.filter((pl.col("step_id") == "a") & (pl.col("task") == "arc_easy"))["stable_score"][0]
    assert arc == pytest.approx((0.55 - 0.25) / 0.75)
    assert centered(_evals(), "difference")["stable_score"].to_list() == pytest.approx(
        [v - c for _, _, _, v, c in ROWS])
    sure = pl.DataFrame([("c", "t", "vl", 1.0, 1.0)], schema=["step_id", "task", "group", "value", "chance"],
                        orient="row")
    assert centered(sure, "centered")["stable_score"][0] is None


STUDY = """
[study]
name = "{name}"

[axes]
scale = ["debug"]
intro_fraction = [0.5]
image_ratio = [0.1]

[eval]
{line}
"""


def test_the_studys_definition_reaches_the_catalog(tmp_path):
    for name, line in (("plain", ""), ("dclm", 'stable_score = "centered"')):
        (tmp_path / f"{name}.toml").write_text(STUDY.format(name=name, line=line))
        write_study_manifest(plan_study(load_study(tmp_path / f"{name}.toml")))  # root: runs/<name>
    for name, want in (("plain", "difference"), ("dclm", "centered")):
        ingest(tmp_path / "runs" / name)
        with connect(tmp_path / "runs" / name) as con:
            assert queries.stable_definition(con, name) == want


def test_an_unknown_definition_is_refused(tmp_path):
    (tmp_path / "s.toml").write_text(STUDY.format(name="s", line='stable_score = "z"'))
    with pytest.raises(StudyError, match="eval.stable_score"):
        load_study(tmp_path / "s.toml")


def test_the_paper_study_uses_dclms_centered_scores():
    from pathlib import Path

    study = load_study(Path(__file__).resolve().parent.parent / "studies" / "paper.toml")
    assert study.eval.stable_score == "centered"
    names = {Path(p).name.split(".")[0] for p in study.data["vl_evals"].paths}
    assert {"refcoco", "refcoco+", "refcocog", "ocid_ref"} <= names


def test_every_definition_has_its_formula_for_axis_titles():
    from analysis.scores import STABLE_FORMULAS, score_label, stable_title
    from models.stepfiles import STABLE_DEFINITIONS

    assert set(STABLE_FORMULAS) == set(STABLE_DEFINITIONS)
    assert stable_title("centered") == "stable score ((score − chance) / (1 − chance))"
    assert score_label("vl_score") == "VL stable score (score − chance)" and score_label("val_loss") == "val_loss"
