"""`[eval] text_harness = "lm-eval"` and `[eval.num_fewshot]` from the study file to evals.parquet.

The options reach the eval step's config (and so its id), the step scores the world's text
multiple-choice tasks through lm-evaluation-harness with the same results as the project's scorer,
keeps the tasks lm-eval does not take (generation) on the project's scorer, and a study asking for
lm-eval without the extra is refused in one line naming it.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import polars as pl
import pytest

import models.data as data
import models.stages.eval_step as eval_step
from models.harness import run as harness_run
from models.presets import get_preset
from models.run import run_step
from models.stepfiles import step_dir
from models.steps import DataSource, EvalConfig, Step, TrunkConfig
from sweep.cli import main
from sweep.plan import plan_study
from sweep.spec import load_study
from tests.models_helpers import one_thread  # noqa: F401  (autouse: one torch thread)

WORLD = DataSource(name="world", kind="world", options=(("seed", 0),))
DEBUG = get_preset("debug")
STUDY = """
[study]
name = "t"
root = "out"

[axes]
scale = ["debug"]
intro_fraction = [1.0]
image_ratio = [0.5]

[eval]
n_per_task = 6
"""


def _evals(study_text: str, tmp_path) -> list[Step]:
    path = tmp_path / "study.toml"
    path.write_text(study_text)
    return [s for s in plan_study(load_study(path)).steps if s.kind == "eval"]


def test_the_options_reach_every_eval_step_and_its_id(tmp_path):
    pytest.importorskip("lm_eval")
    plain = _evals(STUDY, tmp_path)
    harness = _evals(STUDY + 'text_harness = "lm-eval"\n', tmp_path)
    shots = _evals(STUDY + 'text_harness = "lm-eval"\n[eval.num_fewshot]\nfact_recall = 2\n', tmp_path)
    assert {s.config.text_harness for s in plain} == {"vlmsweep"}
    assert {s.config.text_harness for s in harness} == {"lm-eval"}
    assert {s.config.num_fewshot for s in shots} == {(("fact_recall", 2),)}
    for a, b, c in zip(plain, harness, shots):
        assert len({a.step_id, b.step_id, c.step_id}) == 3


@pytest.mark.parametrize("edit,key,message", [
    ('text_harness = "hf"\n', "eval.text_harness", "not one of"),
    ('[eval.num_fewshot]\nhellaswag = 2\n', "eval.num_fewshot", "names task 'hellaswag'"),
    ('[eval.num_fewshot]\nfact_recall = 6\n', "eval.num_fewshot.fact_recall", "n_per_task is 6"),
    ('[eval.num_fewshot]\nfact_recall = -1\n', "eval.num_fewshot.fact_recall", "out of range"),
    ('[eval.num_fewshot]\narithmetic = 1\n', "eval.num_fewshot.arithmetic", "text multiple-choice"),
    ('[eval.num_fewshot]\ncounting = 1\n', "eval.num_fewshot.counting", "text multiple-choice"),
])
def test_bad_options_are_refused_with_their_key(tmp_path, capsys, edit, key, message):
    study = tmp_path / "study.toml"
    study.write_text(STUDY + edit)
    assert main(["plan", str(study)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{study}: {key}:" in err and message in err, err


def test_a_missing_lm_eval_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # find_spec: not installed
    study = tmp_path / "study.toml"
    study.write_text(STUDY + 'text_harness = "lm-eval"\n')
    assert main(["plan", str(study)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "eval.text_harness" in err and "vlmsweep[lmeval]" in err, err
    study.write_text(STUDY)  # the default needs no extra
    assert main(["plan", str(study)]) == 0


def test_the_eval_step_scores_text_through_lm_eval_as_the_project_does(tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    trunk = Step(kind="trunk", config=TrunkConfig(lm=DEBUG.model.lm, train=DEBUG.train, data=WORLD,
                                                 tokens=6 * 4 * 32, seed=0), meta={"checkpoint_fractions": []})
    run_step(trunk, tmp_path, data=data)
    calls: dict[str, list] = {"lm_eval": [], "fewshot": []}
    real_run, real_shots = harness_run.run_tasks, eval_step.with_fewshot

    def spy_run(lm, built):
        calls["lm_eval"] += [(name, t.config.num_fewshot) for name, t in built.items()]
        return real_run(lm, built)

    def spy_shots(task, k, tok):
        calls["fewshot"].append((task.name, k))
        return real_shots(task, k, tok)

    monkeypatch.setattr(harness_run, "run_tasks", spy_run)
    monkeypatch.setattr(eval_step, "with_fewshot", spy_shots)
    base = EvalConfig(data=(WORLD,), tasks=(), groups=("text",), n_per_task=6, num_fewshot=(("fact_recall", 2),))
    frames = {}
    for harness in ("vlmsweep", "lm-eval"):
        step = Step(kind="eval", config=dataclasses.replace(base, text_harness=harness),
                    parents=(("trunk", trunk.step_id),))
        run_step(step, tmp_path, data=data)
        frames[harness] = pl.read_parquet(step_dir(tmp_path, "eval", step.step_id) / "evals.parquet").sort(
            "task", "metric")
    # lm-eval scored the two multiple-choice tasks (fact recall with its 2 examples); arithmetic
    # (generation) and the held-out loss stayed with the project in both runs
    assert sorted(calls["lm_eval"]) == [("fact_recall", 2), ("story_completion", 0)]
    assert sorted(calls["fewshot"]) == [("arithmetic", 0), ("arithmetic", 0), ("fact_recall", 2),
                                        ("story_completion", 0)]
    ours, theirs = frames["vlmsweep"], frames["lm-eval"]
    assert ours.drop("value").equals(theirs.drop("value"))  # same schema, tasks, metrics, n, primary
    assert set(ours["task"]) == {"fact_recall", "story_completion", "arithmetic", "heldout_text"}
    assert ours["value"].to_list() == pytest.approx(theirs["value"].to_list(), abs=1e-6)


def test_a_fewshot_folder_is_resolved_checked_and_part_of_the_source(tmp_path, capsys):
    (tmp_path / "evals").mkdir()
    record = {"context": "Question: which?\nAnswer:", "choices": ["one", "two"], "label": 0}
    (tmp_path / "evals" / "piqa.jsonl").write_text(json.dumps(record) + "\n")
    text = STUDY.replace("[eval]", '[data.text]\nkind = "mc_jsonl"\npaths = ["evals/piqa.jsonl"]\n'
                                   'fewshot = "train"\n\n[eval]\ndata = ["world", "text"]')
    study = tmp_path / "study.toml"
    study.write_text(text)
    assert main(["plan", str(study)]) == 2  # the folder lacks piqa.jsonl
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fewshot folder has no piqa.jsonl" in err, err
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "piqa.jsonl").write_text(json.dumps(record | {"label": 3}) + "\n")
    assert main(["plan", str(study)]) == 2  # a bad training record is named like an eval record
    assert "piqa.jsonl" in capsys.readouterr().err
    (tmp_path / "train" / "piqa.jsonl").write_text(json.dumps(record) + "\n")
    assert main(["plan", str(study)]) == 0
    # examples from the training split: k may reach the number of items asked
    study.write_text(text + "[eval.num_fewshot]\npiqa = 6\n")
    assert main(["plan", str(study)]) == 0
    sources = {s.name: s for e in _evals(text, tmp_path) for s in e.config.data}
    assert sources["text"].option("fewshot") == str(tmp_path / "train")
    other = _evals(text.replace('fewshot = "train"', 'fewshot = "train2"'), tmp_path)
    assert {e.step_id for e in other}.isdisjoint(e.step_id for e in _evals(text, tmp_path))
