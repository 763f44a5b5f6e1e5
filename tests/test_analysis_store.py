"""The results catalog: schema round trip, idempotent and incremental ingest, bad input, and a
real SIGKILL in the middle of ingest that must leave the previous catalog intact and readable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import polars as pl
import pytest

from analysis.errors import AnalysisInputError, AnalysisWarning
from analysis.schema import SCHEMA_VERSION, TABLES, create_all
from analysis.store import catalog_path, connect, ingest
from analysis.synthetic import SyntheticSpec, write_synthetic_study
from models.stepfiles import LOSS_METRIC

SMALL = SyntheticSpec(scales=("79m",), intro_fractions=(0.0, 0.5, 1.0), image_ratios=(0.1,),
                      finetune_epochs=(1,), metric_rows=10, unfinished=1, failed=1)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_synthetic_study(tmp_path, SMALL)
    return tmp_path


def table_contents(root: Path) -> dict[str, pl.DataFrame]:
    with connect(root) as con:
        return {name: con.sql(f"SELECT * FROM {name}").pl().sort(pl.all())
                for name in ("steps", "study_steps", "metrics", "evals", "studies", "curves", "curve_points")}


def test_schema_round_trip_keeps_every_dtype(root: Path) -> None:
    ingest(root)
    with connect(root) as con:
        for name, table in TABLES.items():
            frame = con.sql(f"SELECT * FROM {name}").pl()
            assert frame.schema == table.polars_schema(), name
            assert len(frame) > 0, name
        # and a polars frame of the declared schema goes in and comes back unchanged
    con = duckdb.connect()
    create_all(con)
    steps = table_contents(root)["steps"]
    con.register("x", steps)
    con.execute("INSERT INTO steps SELECT * FROM x")
    back = con.sql("SELECT * FROM steps").pl().sort(pl.all())
    assert back.equals(steps)
    assert con.execute("SELECT value FROM catalog_info WHERE key='schema_version'").fetchall() == [
        (str(SCHEMA_VERSION),)]


def test_ingest_is_idempotent_and_incremental(root: Path) -> None:
    first = ingest(root)
    assert first.reused == 0 and first.ingested > 0
    assert len(first.missing) == 1 and len(first.failed) == 1
    before = table_contents(root)
    second = ingest(root)
    assert second.ingested == 0 and second.reused == first.ingested
    after = table_contents(root)
    for name in before:
        assert before[name].equals(after[name]), name
    # a rebuilt-from-scratch catalog is the same as the incremental one
    catalog_path(root).unlink()
    ingest(root)
    for name, frame in table_contents(root).items():
        assert frame.equals(before[name]), name
    # touching one step re-reads only that step
    result = next((root / "steps" / "branch").iterdir()) / "result.json"
    result.write_text(result.read_text().replace('"wall_time_s": ', '"wall_time_s": 1'))
    held = connect(root)  # a reader holding the catalog open neither blocks ingest nor sees it change
    third = ingest(root)
    assert third.ingested == 1 and third.reused == first.ingested - 1
    assert held.sql("SELECT * FROM steps").pl().sort(pl.all()).equals(before["steps"])
    held.close()
    # the re-read step's curves are derived afresh, the others copied: together the same tables
    third_contents = table_contents(root)
    for name in ("metrics", "curves", "curve_points"):
        assert third_contents[name].equals(before[name]), name


def test_missing_and_failed_steps_are_listed(root: Path) -> None:
    summary = ingest(root)
    with connect(root) as con:
        ids = {r[0]: r[1] for r in con.execute("SELECT step_id, status FROM steps").fetchall()}
    (kind, sid), = summary.missing
    assert kind == "eval" and sid not in ids
    (kind, failed_id), = summary.failed
    assert ids[failed_id] == "failed"
    assert "1 missing" in str(summary) and sid in str(summary)


def test_corrupt_parquet_is_an_error_or_named_and_skipped(root: Path) -> None:
    branches = sorted((root / "steps" / "branch").iterdir())
    (branches[0] / "metrics.parquet").write_bytes(b"not parquet at all")
    damaged = branches[1] / "metrics.parquet"
    data = bytearray(damaged.read_bytes())
    data[4:200] = bytes(196)  # data pages zeroed, footer intact
    damaged.write_bytes(bytes(data))
    with pytest.raises(AnalysisInputError, match=r"metrics\.parquet.*and 1 more.*--skip-unreadable"):
        ingest(root)
    assert not catalog_path(root).exists()  # nothing half-written
    with pytest.warns(AnalysisWarning, match="metrics.parquet"):
        summary = ingest(root, skip_unreadable=True)
    skipped = {(sid, file) for sid, file, _ in summary.skipped_corrupt}
    assert (branches[0].name, "metrics.parquet") in skipped
    assert (branches[1].name, "metrics.parquet") in skipped
    with connect(root) as con:
        per_step = dict(con.execute("SELECT step_id, count(*) FROM metrics GROUP BY step_id").fetchall())
        flagged = dict(con.execute("SELECT step_id, skipped_files FROM steps").fetchall())
    assert branches[0].name not in per_step and branches[1].name not in per_step
    assert per_step[branches[2].name] > 0  # the rest ingested
    assert flagged[branches[0].name] == "metrics.parquet"
    # a step with a skipped file is re-read (and warned about) next time, never silently reused
    with pytest.warns(AnalysisWarning):
        again = ingest(root, skip_unreadable=True)
    assert again.ingested == 2


def test_unreadable_config_skips_that_step_only(root: Path) -> None:
    trunk = next((root / "steps" / "trunk").iterdir())
    cfg = json.loads((trunk / "config.json").read_text())
    cfg["meta"]["params"] = "seventy-nine million"
    (trunk / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(AnalysisInputError, match="meta.params"):
        ingest(root)
    with pytest.warns(AnalysisWarning, match="meta.params"):
        summary = ingest(root, skip_unreadable=True)
    assert summary.skipped_corrupt[0][:2] == (trunk.name, "config.json")
    assert "meta.params" in summary.skipped_corrupt[0][2]


def test_ingest_never_drops_rows_it_held(root: Path) -> None:
    ingest(root)
    before = table_contents(root)
    trunk = next((root / "steps" / "trunk").iterdir())
    (trunk / "result.json").write_text('{"step_id": "garbled')
    branch = sorted((root / "steps" / "branch").iterdir())[0]
    metrics = branch / "metrics.parquet"
    metrics.write_bytes(metrics.read_bytes()[:40])
    with pytest.raises(AnalysisInputError, match=f"{trunk / 'result.json'}.*cannot read JSON") as err:
        ingest(root)
    assert "\n" not in str(err.value) and "and 1 more" in str(err.value)
    for name, frame in table_contents(root).items():  # the previous catalog, untouched
        assert frame.equals(before[name]), name
    with pytest.warns(AnalysisWarning):
        summary = ingest(root, skip_unreadable=True)
    assert {(sid, file) for sid, file, _ in summary.skipped_corrupt} == {
        (trunk.name, "result.json"), (branch.name, "metrics.parquet")}
    after = table_contents(root)
    for name in ("steps", "metrics", "evals", "curves", "curve_points"):  # their old rows kept
        assert after[name].equals(before[name]), name


def test_bad_manifest_and_missing_catalog_raise_naming_the_file(root: Path) -> None:
    with pytest.raises(AnalysisInputError, match="results.duckdb"):
        connect(root)
    manifest = root / "studies" / "synthetic.json"
    manifest.write_text(json.dumps({"name": "x", "steps": [{"kind": "trunk"}]}))
    with pytest.raises(AnalysisInputError, match=r"synthetic.json.*steps\[0\]"):
        ingest(root)
    with pytest.raises(AnalysisInputError, match="not a results root"):
        ingest(root / "steps" / "trunk")


KILL_SCRIPT = """
import sys, time
from pathlib import Path
from analysis.store import ingest
def progress(done, total):  # stop at the first fresh step read, with the new catalog half-built
    Path(sys.argv[2]).write_text("reached")
    time.sleep(60)
ingest(sys.argv[1], progress=progress)
"""


def test_sigkill_mid_ingest_leaves_previous_catalog(root: Path, tmp_path_factory) -> None:
    ingest(root)
    before = table_contents(root)
    # more work for the next ingest: a second study under the same root
    write_synthetic_study(root, SyntheticSpec(study="second", scales=("154m",), intro_fractions=(0.5,),
                                              image_ratios=(0.2,), finetune_epochs=(1,), metric_rows=10))
    marker = tmp_path_factory.mktemp("kill") / "marker"
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(root), str(marker)], cwd=repo,
                            env={**os.environ, "PYTHONPATH": str(repo)})
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "ingest never got going"
            time.sleep(0.05)
        assert list(root.glob(".results.duckdb.*.tmp")), "the new catalog is being built aside"
        # a reader opens the catalog while ingest is mid-way: it is not blocked and sees the old one
        for name, frame in table_contents(root).items():
            assert frame.equals(before[name]), name
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    for name, frame in table_contents(root).items():
        assert frame.equals(before[name]), name
    summary = ingest(root)  # the next ingest cleans up and completes
    assert "second" in summary.studies
    assert not list(root.glob(".results.duckdb.*.tmp*"))


def test_stable_scores_take_each_tasks_primary_row_and_read_older_eval_files(root: Path) -> None:
    """Every task of the synthetic study writes a primary `acc` row and a non-primary `acc_norm`
    row of 0 (and each eval its held-out `val_loss` rows, never primary): only the first may reach
    a stable score. A file from before `primary_metric` existed
    (one `accuracy` row per task) still ingests, its rows primary, in the same bulk read."""
    import pyarrow.parquet as pq

    evals = sorted((root / "steps" / "eval").glob("*/evals.parquet"))
    legacy = evals[0]
    old = pq.read_table(legacy).to_pylist()
    old = [{k: v for k, v in r.items() if k != "primary_metric"} | {"metric": "accuracy"}
           for r in old if r["primary_metric"]]
    pq.write_table(pl.DataFrame(old).to_arrow(), legacy)
    ingest(root)
    with connect(root) as con:
        flags = dict(con.execute("SELECT metric, bool_and(primary_metric) FROM evals GROUP BY 1").fetchall())
        scored = con.execute("SELECT DISTINCT metric FROM stable_scores").fetchall()
        per_task = con.execute("SELECT max(c) FROM (SELECT step_id, task, count(*) c FROM stable_scores "
                               "GROUP BY ALL)").fetchone()[0]
        legacy_rows = con.execute("SELECT count(*) FROM stable_scores WHERE step_id = ?",
                                  [legacy.parent.name]).fetchone()[0]
    assert flags == {"acc": True, "acc_norm": False, "accuracy": True, LOSS_METRIC: False}
    assert sorted(m for (m,) in scored) == ["acc", "accuracy"] and per_task == 1
    assert legacy_rows == len(old)


def _copy_step(root: Path, kind: str, sid: str, new_sid: str, **changes) -> None:
    """A copy of step `sid` as `new_sid` with config.json changed (what an edited study plans)."""
    import shutil

    from models.stepfiles import step_dir
    src, dst = step_dir(root, kind, sid), step_dir(root, kind, new_sid)
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["step_id"] = new_sid
    for key, value in changes.items():
        if key == "parents":
            cfg["parents"] = value
        else:
            cfg["config"][key] = value
    (dst / "config.json").write_text(json.dumps(cfg))
    res = json.loads((dst / "result.json").read_text())
    (dst / "result.json").write_text(json.dumps({**res, "step_id": new_sid}))


def test_an_edited_finetune_is_a_new_configuration_not_a_second_seed(tmp_path: Path) -> None:
    spec = SyntheticSpec(scales=("79m",), intro_fractions=(0.5,), image_ratios=(0.1,), seeds=(0,),
                         finetune_epochs=(1,), metric_rows=5)
    study = write_synthetic_study(tmp_path, spec)
    ft = study.step_ids["finetune"][0]
    old_eval = next(sid for sid in study.step_ids["eval"]
                    if json.loads((tmp_path / "steps" / "eval" / sid / "config.json").read_text())["parents"]
                    == [["finetune", ft]])
    _copy_step(tmp_path, "finetune", ft, "ft0000edited", lr=5e-5)  # the lr edited mid-study
    _copy_step(tmp_path, "eval", old_eval, "ev0000edited", parents=[["finetune", "ft0000edited"]])
    ingest(tmp_path)
    with connect(tmp_path) as con:
        rows = con.sql("SELECT config_id, n_runs FROM config_scores WHERE stage = 'finetune'").fetchall()
        ids = dict(con.execute("SELECT step_id, config_id FROM steps WHERE step_id IN (?, ?)",
                               [old_eval, "ev0000edited"]).fetchall())
    assert len(rows) == 2 and all(n == 1 for _, n in rows), rows  # two configurations of one run each
    assert ids[old_eval] != ids["ev0000edited"]
    from analysis import queries, scores
    with connect(tmp_path) as con:
        agg = scores.aggregate_over_seeds(scores.step_scores(queries.load_stable_scores(con)))
    assert agg.filter(pl.col("stage") == "finetune")["n_runs"].to_list() == [1, 1]


def test_seeds_of_one_configuration_share_a_config_id(root: Path) -> None:
    from analysis.scores import CONFIG_AXES
    ingest(root)
    axes = ", ".join(f'"{a}"' for a in CONFIG_AXES)
    with connect(root) as con:
        per_config = con.sql("SELECT n_runs FROM config_scores").fetchall()
        per_axes = con.sql(f"SELECT count(*) FROM step_scores GROUP BY {axes}").fetchall()
    # config_id splits no configuration of SMALL (seeds 0 and 1; one failed branch)
    assert sorted(per_config) == sorted(per_axes) and max(per_config) == (2,)


def test_a_root_with_glob_characters_ingests_its_own_files_only(tmp_path: Path) -> None:
    spec = SyntheticSpec(scales=("79m",), intro_fractions=(0.5,), image_ratios=(0.1,), seeds=(0,),
                         finetune_epochs=(1,), metric_rows=5)
    odd, twin = tmp_path / "r?o[o]t", tmp_path / "rXoot"  # `?` matches X: a glob would read both
    write_synthetic_study(odd, spec)
    write_synthetic_study(twin, spec)
    ingest(odd)
    ingest(odd)  # again: the reused-rows path attaches the catalog under the odd root
    with connect(odd) as con:
        n_evals = con.execute("SELECT count(*) FROM evals").fetchone()[0]
        steps = con.execute("SELECT count(*) FROM steps").fetchone()[0]
    ingest(twin)
    with connect(twin) as con:
        assert (n_evals, steps) == (con.execute("SELECT count(*) FROM evals").fetchone()[0],
                                    con.execute("SELECT count(*) FROM steps").fetchone()[0])
    assert sorted(p.name for p in odd.iterdir() if "duckdb" in p.name) == [".results.duckdb.lock", "results.duckdb"]


def test_a_step_file_nested_too_deeply_is_named_not_a_traceback(root: Path, capsys) -> None:
    from analysis.cli import main

    result = next(root.glob("steps/trunk/*/result.json"))
    result.write_text("[" * 100_000 + "]" * 100_000)
    assert main(["ingest", "--root", str(root), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{result}: cannot read JSON (nested too deeply)" in err and "Traceback" not in err, err
