"""`[eval]` with several sources: the plan carries every source and the per-task choices into the
eval steps, and the tasks the sources give keep their group, metric and chance (a task in two
sources, or a file whose records disagree, is refused naming them)."""

from __future__ import annotations

import json

import pytest

from models.data import eval_tasks, get_tokenizer
from models.data.errors import BadRecordError, DataError
from models.data.evaltasks import gather
from models.steps import DataSource
from sweep.plan import plan_study
from sweep.spec import load_study

TOK = get_tokenizer(DataSource(name="world", kind="world"))

STUDY = """
[study]
name = "evals"

[data.vl]
kind = "vqa_jsonl"
paths = ["evals/vl/*.jsonl"]

[data.text]
kind = "mc_jsonl"
group = "text"
paths = ["evals/text/hellaswag.jsonl"]

[axes]
scale = ["debug"]
intro_fraction = [0.5]
image_ratio = [0.1]

[eval]
data = ["vl", "text", "world"]

[eval.stable_metric]
hellaswag = "acc_norm"

[eval.chance]
hellaswag = 0.25
"""


def _jsonl(path, records) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_the_plan_gives_every_eval_step_all_sources_and_the_per_task_choices(tmp_path):
    (tmp_path / "study.toml").write_text(STUDY)
    study = load_study(tmp_path / "study.toml")
    evals = [s for s in plan_study(study).steps if s.kind == "eval"]
    assert evals
    for step in evals:
        assert [s.name for s in step.config.data] == ["vl", "text", "world"]
        assert step.config.stable_metric == (("hellaswag", "acc_norm"),)
        assert step.config.chance == (("hellaswag", 0.25),)
    assert {s.config.groups for s in evals} == {("vl", "text"), ("text",)}  # trunks: text only
    # the glob matches nothing yet, so task names are checked when the files exist: at eval time
    assert study.data["vl"].paths[0].endswith("evals/vl/*.jsonl")


def test_a_task_in_two_sources_is_refused_at_eval_time_too(tmp_path):
    a = DataSource(name="a", kind="mc_jsonl", paths=(_jsonl(tmp_path / "a" / "arc.jsonl", [
        {"context": "q", "choices": ["x", "y"], "label": 0}]),))
    b = DataSource(name="b", kind="mc_jsonl", paths=(_jsonl(tmp_path / "b" / "arc.jsonl", [
        {"context": "q", "choices": ["x", "y"], "label": 1}]),))
    per_source = [(s, eval_tasks(s, TOK, n_per_task=0, image_size=32, seed=0)) for s in (a, b)]
    with pytest.raises(DataError, match="task 'arc' is in two eval sources, 'a' and 'b'"):
        gather(per_source)
    (task,) = gather(per_source[:1], chance=(("arc", 0.5),))
    assert task.chance == 0.5  # the study's chance wins over the records' uniform guess


def test_records_carry_metric_and_chance_and_must_agree(tmp_path):
    good = _jsonl(tmp_path / "gqa.jsonl", [{"question": "is it red ?", "answers": ["yes"], "metric": "exact_match",
                                            "chance": 0.1}] * 2)
    (task,) = eval_tasks(DataSource(name="g", kind="vqa_jsonl", paths=(good,)), TOK, n_per_task=0, image_size=32,
                         seed=0)
    assert (task.group, task.kind, task.metric, task.chance) == ("text", "generate", "exact_match", 0.1)
    vl = DataSource(name="g", kind="vqa_jsonl", paths=(good,), options=(("group", "vl"), ("metric", "vqa")))
    (task,) = eval_tasks(vl, TOK, n_per_task=0, image_size=32, seed=0)
    assert (task.group, task.metric) == ("vl", "vqa")  # the source's options win
    assert eval_tasks(vl, TOK, groups=("text",), n_per_task=0, image_size=32, seed=0) == []
    mixed = _jsonl(tmp_path / "mixed.jsonl", [{"question": "q", "answers": ["a"], "chance": 0.1},
                                              {"question": "q", "answers": ["a"], "chance": 0.2}])
    with pytest.raises(BadRecordError, match=r"mixed.jsonl: record 1: field 'chance' is 0.2, but record 0"):
        eval_tasks(DataSource(name="m", kind="vqa_jsonl", paths=(mixed,)), TOK, n_per_task=0, image_size=32, seed=0)
    wrong = _jsonl(tmp_path / "wrong.jsonl", [{"context": "q", "choices": ["a", "b"], "label": 0, "metric": "vqa"}])
    with pytest.raises(BadRecordError, match="record 0: field 'metric' 'vqa' does not fit"):
        eval_tasks(DataSource(name="w", kind="mc_jsonl", paths=(wrong,)), TOK, n_per_task=0, image_size=32, seed=0)
    both = _jsonl(tmp_path / "both.jsonl", [{"question": "q", "answers": ["a"]}] * 9
                  + [{"question": "q", "choices": ["a", "b"], "label": 0}])
    mixes = r"both.jsonl: mixes records scored as \['exact_match', 'multiple_choice'\]"
    for n in (0, 2):  # a sample of open answers alone must not hide the file's choice record
        with pytest.raises(DataError, match=mixes):
            eval_tasks(DataSource(name="b", kind="vqa_jsonl", paths=(both,)), TOK, n_per_task=n, image_size=32,
                       seed=0)


def test_world_tasks_name_their_metric_families():
    tasks = {t.name: t for t in eval_tasks(DataSource(name="world", kind="world"), TOK, n_per_task=2,
                                           image_size=32, seed=0)}
    assert tasks["pope_random"].metric == "pope" and tasks["counting"].metric == "exact_match"
    assert tasks["fact_recall"].metric == "multiple_choice"
    assert all(len(it.choice_texts) == len(it.choices) for t in tasks.values() for it in t.items
               if t.kind == "multiple_choice")


def test_world_tasks_are_drawn_once_per_process_and_each_eval_gets_its_own_copy(monkeypatch):
    """The demo's evals of one seed ask the same items: a worker draws them once (~3 s of a VL
    eval's ~10 s). Another seed draws again; one eval's chance override never reaches the next."""
    import models.data.evaltasks as et

    drawn = []
    build = et.build_task
    monkeypatch.setattr(et, "build_task", lambda name, *a, **kw: drawn.append(name) or build(name, *a, **kw))
    monkeypatch.setattr(et, "_WORLD_TASKS", {})
    world = DataSource(name="world", kind="world", options=(("n_kinds", 8), ("seed", 5)))
    kw = dict(tasks=("counting", "fact_recall"), n_per_task=3, image_size=32)
    first = gather([(world, eval_tasks(world, TOK, seed=0, **kw))], {"counting": 0.5})
    again = eval_tasks(world, TOK, seed=0, **kw)
    assert drawn == ["counting", "fact_recall"]
    assert [t.items for t in again] == [t.items for t in first]
    assert first[0].chance == 0.5 and again[0].chance != 0.5
    eval_tasks(world, TOK, seed=1, **kw)
    assert drawn == ["counting", "fact_recall"] * 2
