"""A diverged step is a failure, not a result: a non-finite loss or gradient norm ends a training
step as failed (`diverged`) unless the study allows skipped batches or rewinds; loss spikes are
recorded as metrics events; non-finite evals fail the eval step; the children of a diverged step
are blocked and `run` exits non-zero with nothing non-finite in the catalog."""

from __future__ import annotations

import json
import math
import shutil

import polars as pl
import pytest
import torch

import models.synthetic as syn
from models import stepfiles as sf
from models.run import RunOptions, run_step
from models.stages import lm
from models.stages.guard import Diverged
from models.stepfiles import step_dir
from tests.models_helpers import (
    eval_step,
    metrics,
    one_thread,  # noqa: F401  (autouse: one torch thread)
    trunk_step,
)


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> dict:
    """An uninterrupted, finite 12-step trunk."""
    torch.use_deterministic_algorithms(True)
    root = tmp_path_factory.mktemp("clean")
    trunk = trunk_step()
    run_step(trunk, root, data=syn)
    return {"root": root, "trunk": trunk}


@pytest.fixture
def poison(monkeypatch):
    """poison({step: factor}): the LM loss of those optimizer steps times `factor` (nan: non-finite),
    whole batches and micro-batches alike."""
    plan: dict[int, float] = {}
    for name in ("compute_loss", "loss_sum"):
        original = getattr(lm.LMStage, name)

        def patched(self, batch, _original=original):
            loss, parts = _original(self, batch)
            return loss * plan.get(self.step_count + 1, 1.0), parts
        monkeypatch.setattr(lm.LMStage, name, patched)
    return plan.update


def _train_losses(root, step) -> dict[int, float]:
    df = metrics(root, step).filter(pl.col("name") == "train_loss")
    return dict(zip(df["step"].to_list(), df["value"].to_list()))


def test_a_nonfinite_loss_fails_the_step_as_diverged(clean, tmp_path, poison) -> None:
    poison({3: math.nan})
    with pytest.raises(Diverged, match="optimizer step 3"):
        run_step(clean["trunk"], tmp_path, data=syn)
    directory = step_dir(tmp_path, "trunk", clean["trunk"].step_id)
    failure = sf.read_failure(directory)
    assert (failure.reason, failure.optimizer_step, failure.loss) == ("diverged", 3, "nan")
    assert failure.last_finite_loss == pytest.approx(_train_losses(clean["root"], clean["trunk"])[2], abs=1e-6)
    assert "NaN" not in (directory / sf.FAILURE).read_text()  # valid JSON: no bare NaN
    assert not (directory / sf.RESULT).exists() and not (directory / sf.METRICS).exists()


@pytest.mark.parametrize("micro_batch", [0, 3])
def test_skipped_batches_are_honoured_then_the_step_fails(clean, tmp_path, poison, micro_batch) -> None:
    poison({3: math.nan})
    options = RunOptions(nonfinite_skip_batches=1, micro_batch=micro_batch)
    result = run_step(clean["trunk"], tmp_path, options, data=syn)
    assert result[sf.SKIPPED_METRIC] == 1
    rows = metrics(tmp_path, clean["trunk"])
    assert rows.filter(pl.col("name") == sf.SKIPPED_METRIC)["step"].to_list() == [3]
    losses = _train_losses(tmp_path, clean["trunk"])
    assert sorted(losses) == [s for s in range(1, 13) if s != 3]  # no loss row for the skipped step
    assert all(math.isfinite(v) for v in rows["value"].to_list())
    # the steps before the skip are the clean run's; the update of step 3 was never taken
    reference = _train_losses(clean["root"], clean["trunk"])
    assert losses[2] == pytest.approx(reference[2], abs=1e-5)
    assert losses[4] != pytest.approx(reference[4], abs=1e-6)
    # a second non-finite step is past the allowance of one
    poison({3: math.nan, 6: math.inf})
    other = tmp_path / "again"
    with pytest.raises(Diverged, match=r"optimizer step 6 .*after 1 skipped batch"):
        run_step(clean["trunk"], other, options, data=syn)


def test_a_rewind_restores_the_last_checkpoint(clean, tmp_path, poison) -> None:
    poison({6: math.nan})
    options = RunOptions(nonfinite_rewinds=1, checkpoint_every_steps=4)
    result = run_step(clean["trunk"], tmp_path, options, data=syn)
    assert result[sf.REWIND_METRIC] == 1
    rewinds = metrics(tmp_path, clean["trunk"]).filter(pl.col("name") == sf.REWIND_METRIC)
    assert rewinds["step"].to_list() == [6] and rewinds["value"].to_list() == [4.0]
    losses, reference = _train_losses(tmp_path, clean["trunk"]), _train_losses(clean["root"], clean["trunk"])
    assert [losses[s] for s in range(1, 6)] == pytest.approx([reference[s] for s in range(1, 6)], abs=1e-6)
    assert sorted(losses) == [s for s in range(1, 13) if s != 6]
    # a rewind without one left: the second bad step fails the step
    poison({6: math.nan, 9: math.nan})
    with pytest.raises(Diverged, match="after 0 skipped batch.*1 rewind"):
        run_step(clean["trunk"], tmp_path / "again", options, data=syn)


def test_a_loss_spike_is_a_metrics_event_the_app_marks(clean, tmp_path, poison) -> None:
    from analysis import queries
    from analysis.browse_figures import curves_figure
    from analysis.filters import Filters
    from analysis.store import connect, ingest

    poison({9: 10.0})
    options = RunOptions(spike_factor=3.0, spike_window=4)
    result = run_step(clean["trunk"], tmp_path, options, data=syn)
    spikes = metrics(tmp_path, clean["trunk"]).filter(pl.col("name") == sf.SPIKE_METRIC)
    assert spikes["step"].to_list() == [9] and spikes["value"][0] > 3.0
    assert result[sf.SPIKE_METRIC] == 1
    assert not metrics(clean["root"], clean["trunk"]).filter(pl.col("name") == sf.SPIKE_METRIC).height
    ingest(tmp_path)
    with connect(tmp_path) as con:
        events = queries.training_events(con, Filters())
        curves = queries.curve_points(con, Filters(), names=["train_loss"])
    assert events.select("step", "name").rows() == [(9, sf.SPIKE_METRIC)]
    assert events["loss"][0] == pytest.approx(_train_losses(tmp_path, clean["trunk"])[9])
    fig = curves_figure(curves.with_columns(kind=pl.lit("trunk")), color="kind", events=events)
    marked = [t for t in fig.data if t.name == "loss spike"]
    assert len(marked) == 1 and list(marked[0].y) == [events["loss"][0]]
    from analysis.report import write_report

    write_report(tmp_path, tmp_path / "report", formats=())
    text = (tmp_path / "report" / "findings.md").read_text()
    assert ("- Loss spikes (loss / running median of the steps before) in 1 step(s): "
            f"trunk `{clean['trunk'].step_id}` at step 9 (×") in text


def test_nonfinite_evals_fail_the_eval_step(clean, tmp_path, monkeypatch) -> None:
    shutil.copytree(step_dir(clean["root"], "trunk", clean["trunk"].step_id),
                    step_dir(tmp_path, "trunk", clean["trunk"].step_id))
    import models.stages.eval_step as es

    monkeypatch.setattr(es, "heldout_rows", lambda *a, **k: [{
        "task": "heldout_text", "group": "text", "metric": sf.LOSS_METRIC, "value": math.nan,
        "chance": None, "n": 10, "primary_metric": False}])
    step = eval_step(clean["trunk"])
    step = type(step)(kind="eval", config=type(step.config)(**{**{f: getattr(step.config, f) for f in
                      step.config.__dataclass_fields__}, "groups": ("text",)}), parents=step.parents)
    with pytest.raises(Diverged, match="heldout_text"):
        run_step(step, tmp_path, data=syn)
    directory = step_dir(tmp_path, "eval", step.step_id)
    assert json.loads((directory / sf.FAILURE).read_text())["reason"] == "diverged"
    assert not (directory / sf.EVALS).exists() and not (directory / sf.RESULT).exists()


LR_STUDY = """
[study]
name = "too-hot"
[axes]
scale = ["debug"]
intro_fraction = [0.5]
image_ratio = [0.1]
[model.vision]
kind = "patch"
frozen = false
pretrain = false
[train]
lr = 1e4
trunk_tokens_per_param = 0.2
image_tokens_per_param = 0.05
{extra}
[finetune]
samples = 8
[eval]
n_per_task = 8
"""


def test_a_diverging_study_fails_its_trunk_blocks_the_rest_and_exits_non_zero(tmp_path, capsys) -> None:
    """The issue's case: `[train] lr = 1e4` on the debug preset (NaN from optimizer step 3 on)."""
    import duckdb

    from sweep.cli import main
    from sweep.plan import plan_study
    from sweep.spec import load_study
    from sweep.status import reconcile

    study = tmp_path / "hot.toml"
    study.write_text(LR_STUDY.format(extra=""))
    root = tmp_path / "root"
    assert main(["run", str(study), "--root", str(root), "--backend", "inline"]) == 1
    out = capsys.readouterr().out
    assert "1 failed, 5 blocked" in out and "Diverged" in out
    plan = plan_study(load_study(study), root=root)
    statuses = reconcile(plan)
    trunk = next(s for s in statuses.values() if s.kind == "trunk")
    assert (trunk.state, trunk.cause) == (sf.FAILED, "diverged")
    assert {s.state for s in statuses.values() if s.kind != "trunk"} == {sf.BLOCKED}
    assert main(["ingest", str(study), "--root", str(root)]) == 0
    with duckdb.connect(str(root / "results.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM evals").fetchone() == (0,)
        assert con.execute("SELECT count(*) FROM metrics WHERE NOT isfinite(value)").fetchone() == (0,)
        assert con.execute("SELECT status FROM steps WHERE kind = 'trunk'").fetchall() == [("failed",)]
    assert main(["report", str(study), "--root", str(root), "--out", str(tmp_path / "report")]) == 2
    assert "1 step(s) diverged" in capsys.readouterr().err


def test_on_nonfinite_and_loss_spike_reach_the_training_steps(tmp_path) -> None:
    from sweep.errors import StudyError
    from sweep.plan import plan_study
    from sweep.spec import load_study

    study = tmp_path / "s.toml"
    study.write_text(LR_STUDY.format(extra="on_nonfinite = {skip_batches = 2, rewinds = 1}\n"
                                           "loss_spike = {factor = 4.0, window = 8}")
                     + "[backend]\ncheckpoint_every_steps = 5\n")
    plan = plan_study(load_study(study), root=tmp_path / "root")
    plain = tmp_path / "p.toml"
    plain.write_text(LR_STUDY.format(extra=""))
    ids = {s.step_id for s in plan_study(load_study(plain), root=tmp_path / "root").steps}
    assert {s.step_id for s in plan.steps} == ids  # how a step guards itself is not in its id
    for step in plan.steps:
        if step.kind in ("trunk", "branch", "finetune"):
            options = RunOptions(**step.meta["run"])
            assert (options.nonfinite_skip_batches, options.nonfinite_rewinds) == (2, 1)
            assert (options.spike_factor, options.spike_window) == (4.0, 8)
            assert options.checkpoint_every_steps == 5  # what a rewind goes back to
    for bad, key in (("on_nonfinite = {skip_batches = -1}", "skip_batches"),
                     ("on_nonfinite = {skips = 1}", "skips"), ("loss_spike = {factor = 1.0}", "factor"),
                     ("on_nonfinite = 3", "on_nonfinite")):
        study.write_text(LR_STUDY.format(extra=bad))
        with pytest.raises(StudyError, match=key):
            load_study(study)


def _fake_step(root, kind: str, step_id: str, parents, *, evals=None, metrics_rows=None) -> None:
    """A done step's files as an older version (no guard) could have left them."""
    directory = step_dir(root, kind, step_id)
    sf.write_json(directory / sf.CONFIG, {"step_id": step_id, "kind": kind, "parents": parents,
                                          "config": {}, "meta": {}})
    if evals is not None:
        sf.write_table(directory / sf.EVALS, evals, sf.EVALS_COLUMNS)
    if metrics_rows is not None:
        sf.write_table(directory / sf.METRICS, metrics_rows, sf.METRICS_COLUMNS)
    sf.write_result(directory, {"step_id": step_id, "kind": kind, "status": "done", "params": {}})


def test_ingest_refuses_nonfinite_numbers_and_the_evals_under_them(tmp_path) -> None:
    """Steps written before the guard: a trunk whose loss went NaN (its eval scored 0.5: not a
    result) and an eval whose held-out loss is NaN. Both are stored failed (diverged), no NaN
    reaches the catalog, and no eval under a diverged step is ingested."""
    import duckdb

    from analysis.errors import AnalysisWarning
    from analysis.store import ingest

    def acc(value):
        return {"task": "pope", "group": "vl", "metric": "acc", "value": value, "chance": 0.5, "n": 8,
                "primary_metric": True}
    nan_loss = {**acc(math.nan), "task": "heldout_text", "metric": sf.LOSS_METRIC, "chance": None,
                "primary_metric": False}
    _fake_step(tmp_path, "trunk", "aaaaaaaaaaaa", [], metrics_rows=[
        (1, 128, "train_loss", 6.2), (2, 256, "train_loss", math.nan), (2, 256, "tokens_per_s", math.nan)])
    _fake_step(tmp_path, "eval", "bbbbbbbbbbbb", [["trunk", "aaaaaaaaaaaa"]], evals=[acc(0.5)])
    _fake_step(tmp_path, "trunk", "cccccccccccc", [], metrics_rows=[(1, 128, "train_loss", 6.2)])
    _fake_step(tmp_path, "eval", "dddddddddddd", [["trunk", "cccccccccccc"]], evals=[acc(0.75), nan_loss])
    with pytest.warns(AnalysisWarning, match="not finite") as caught:
        ingest(tmp_path)
    assert sorted(str(w.message)[5:17] for w in caught) == ["aaaaaaaaaaaa", "dddddddddddd"]
    with duckdb.connect(str(tmp_path / "results.duckdb"), read_only=True) as con:
        status = dict(con.execute("SELECT step_id, status || ' ' || coalesce(failure_reason, '') "
                                  "FROM steps").fetchall())
        assert status == {"aaaaaaaaaaaa": "failed diverged", "bbbbbbbbbbbb": "failed diverged",
                          "cccccccccccc": "done ", "dddddddddddd": "failed diverged"}
        assert con.execute("SELECT count(*) FROM evals").fetchone() == (0,)
        assert con.execute("SELECT count(*) FROM heldout_losses").fetchone() == (0,)
        assert con.execute("SELECT count(*) FROM metrics WHERE NOT isfinite(value)").fetchone() == (0,)


def test_status_shows_a_done_steps_training_events(tmp_path) -> None:
    from types import SimpleNamespace

    from sweep.launch.cli import format_table
    from sweep.status import StepStatus

    sf.write_result(step_dir(tmp_path, "trunk", "aaaaaaaaaaaa"),
                    {"status": "done", sf.SPIKE_METRIC: 3, sf.REWIND_METRIC: 1})
    sf.write_result(step_dir(tmp_path, "branch", "bbbbbbbbbbbb"), {"status": "done"})
    plan = SimpleNamespace(study=SimpleNamespace(name="s"), root=tmp_path)
    statuses = {sid: StepStatus(step_id=sid, kind=kind, state=sf.DONE)
                for kind, sid in (("trunk", "aaaaaaaaaaaa"), ("branch", "bbbbbbbbbbbb"))}
    table = format_table(plan, statuses)
    assert "trunk    aaaaaaaaaaaa  3 loss spike(s), 1 rewind(s) (non-finite)" in table
    assert "bbbbbbbbbbbb" not in table


def test_findings_name_the_diverged_steps() -> None:
    from analysis.stability import stability_markdown

    events = pl.DataFrame({"step_id": ["b1"], "kind": ["branch"], "step": [7], "name": [sf.REWIND_METRIC],
                           "value": [4.0]})
    diverged = pl.DataFrame({"step_id": ["t1"], "kind": ["trunk"],
                             "error": ["Diverged: non-finite loss or gradient norm at optimizer step 3"]})
    text = "\n".join(stability_markdown(events, diverged))
    assert "- 1 step(s) diverged" in text
    assert "  - trunk `t1`: non-finite loss or gradient norm at optimizer step 3" in text
    assert "Rewinds to the last checkpoint after a non-finite step in 1 step(s): branch `b1` at step 7." in text
    empty = stability_markdown(events.clear(), diverged.clear())
    assert "No step diverged" in empty[2]


def test_a_resumed_step_keeps_its_skips_and_spikes(clean, tmp_path, poison) -> None:
    """Interrupted after a skipped batch and resumed: the same rows as without the interruption
    (the skip still counts against the allowance, the spike window is rebuilt from the rows)."""
    from tests.models_helpers import interrupting

    poison({3: math.nan, 9: 10.0})
    options = RunOptions(nonfinite_skip_batches=1, spike_factor=3.0, spike_window=4, checkpoint_every_steps=2)
    run_step(clean["trunk"], tmp_path / "whole", options, data=syn)
    from models.checkpoint import Preempted

    with pytest.raises(Preempted):
        run_step(clean["trunk"], tmp_path / "resumed", options, data=interrupting(6))
    run_step(clean["trunk"], tmp_path / "resumed", options, data=syn)
    a, b = metrics(tmp_path / "whole", clean["trunk"]), metrics(tmp_path / "resumed", clean["trunk"])
    assert a.select("step", "name").equals(b.select("step", "name"))
    assert a["value"].to_list() == pytest.approx(b["value"].to_list(), abs=1e-6)
    assert set(a["name"]) >= {sf.SKIPPED_METRIC, sf.SPIKE_METRIC}
    poison({3: math.nan, 9: 10.0, 10: math.nan})  # a second bad batch after the resume: over the allowance
    with pytest.raises(Preempted):
        run_step(clean["trunk"], tmp_path / "again", options, data=interrupting(6))
    with pytest.raises(Diverged, match="optimizer step 10"):
        run_step(clean["trunk"], tmp_path / "again", options, data=syn)
