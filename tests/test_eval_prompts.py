"""Prompts and decoding limits: vlm-evaluation's per benchmark by default, the study's per task when
it names one (then part of the eval step's id); bad templates and limits are refused by name."""

from __future__ import annotations

import json

import pytest

from models.data import eval_tasks, get_tokenizer
from models.data import prompts as pr
from models.data.errors import BadRecordError, DataError
from models.data.evaltasks import gather
from models.steps import DataSource
from sweep.errors import StudyError
from sweep.plan import plan_study
from sweep.spec import load_study

TOK = get_tokenizer(DataSource(name="world", kind="world"))


def _source(tmp_path, name, records, kind="vqa_jsonl") -> DataSource:
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "im.png")
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return DataSource(name=name, kind=kind, paths=(str(path),))


def _task(source, **kw):
    (task,) = eval_tasks(source, TOK, n_per_task=0, image_size=32, seed=0, image_tokens=2, **kw)
    return task


def _text(item) -> list[int]:
    """The prompt's text tokens: without the image placeholders, <user> and <assistant>."""
    return [t for t in item.prompt_tokens if t not in (TOK.image_id, TOK.user_id, TOK.assistant_id)]


@pytest.mark.parametrize("metric, template", [
    ("vqa", pr.VQA_PROMPT), ("textvqa", pr.VQA_PROMPT), ("exact_match", pr.VQA_PROMPT),
    ("vizwiz", pr.VIZWIZ_PROMPT)])
def test_each_benchmark_gets_vlm_evaluations_prompt_and_128_new_tokens(tmp_path, metric, template):
    rec = {"question": "what colour is it?", "answers": ["red"] * 10, "metric": metric}
    (item,) = _task(_source(tmp_path, "t", [rec | {"image": "im.png"}])).items
    assert _text(item) == TOK.encode(pr.render(template, "what colour is it?"))
    assert item.max_new_tokens == pr.MAX_NEW_TOKENS == 128
    (bare,) = _task(_source(tmp_path, "t", [rec])).items  # a text-only question stays as it is
    assert bare.prompt_tokens == TOK.encode("what colour is it?")


def test_referring_expressions_are_quoted_in_the_box_prompt(tmp_path):
    task = _task(_source(tmp_path, "refcoco", [{"question": "the red cup", "box": [0.1, 0.1, 0.5, 0.5],
                                                "image": "im.png"}]))
    assert pr.render(pr.REFEXP_PROMPT, "the red cup").endswith('describes: "the red cup"')
    assert _text(task.items[0]) == TOK.encode(pr.render(pr.REFEXP_PROMPT, "the red cup"))


def test_the_studys_template_and_the_records_replace_the_familys(tmp_path):
    rec = {"question": "what colour is it?", "answers": ["red"], "metric": "vqa", "image": "im.png"}
    source = _source(tmp_path, "vqav2", [rec])
    task = _task(source, prompts=(("vqav2", "Q: {question} A:"),))
    assert _text(task.items[0]) == TOK.encode("Q: what colour is it? A:")
    bare = _task(_source(tmp_path, "bare", [rec | {"prompt": "{question}", "max_new_tokens": 4}]))
    assert _text(bare.items[0]) == TOK.encode("what colour is it?") and bare.items[0].max_new_tokens == 4
    mc = _task(_source(tmp_path, "arc", [{"context": "Question: sky? Answer:", "choices": ["blue", "red"],
                                          "label": 0}], kind="mc_jsonl"), prompts=(("arc", "Quiz. {question}"),))
    assert mc.items[0].prompt_tokens == TOK.encode("Quiz. Question: sky? Answer:")
    with pytest.raises(BadRecordError, match="must hold {question}"):
        _task(_source(tmp_path, "broken", [rec | {"prompt": "no slot"}]))


def test_the_studys_decoding_limit_reaches_every_item_and_only_generation(tmp_path):
    vqa = _source(tmp_path, "vqav2", [{"question": "q", "answers": ["a"], "metric": "vqa"}] * 3)
    (task,) = gather([(vqa, eval_tasks(vqa, TOK, n_per_task=0, image_size=32, seed=0))],
                     max_new_tokens=(("vqav2", 16),))
    assert {it.max_new_tokens for it in task.items} == {16}
    mc = _source(tmp_path, "arc", [{"context": "c", "choices": ["a", "b"], "label": 0}], kind="mc_jsonl")
    with pytest.raises(DataError, match="task 'arc', which is scored by log-likelihood"):
        gather([(mc, eval_tasks(mc, TOK, n_per_task=0, image_size=32, seed=0))], max_new_tokens=(("arc", 16),))


STUDY = """
[study]
name = "prompts"

[data.vl]
kind = "vqa_jsonl"
paths = ["vqav2.jsonl"]

[axes]
scale = ["debug"]
intro_fraction = [0.5]
image_ratio = [0.1]

[eval]
data = ["vl", "world"]
"""


def _study(tmp_path, extra: str):
    (tmp_path / "vqav2.jsonl").write_text(json.dumps({"question": "q", "answers": ["a"], "metric": "vqa"}) + "\n")
    (tmp_path / "study.toml").write_text(STUDY + extra)
    return load_study(tmp_path / "study.toml")


def _eval_ids(study) -> set[str]:
    return {s.step_id for s in plan_study(study).steps if s.kind == "eval"}


def test_study_prompts_and_limits_reach_the_eval_steps_and_their_ids(tmp_path):
    plain = _study(tmp_path, "")
    study = _study(tmp_path, '[eval.prompt]\nvqav2 = "{question}\\nShort answer:"\n[eval.max_new_tokens]\nvqav2 = 8\n')
    steps = [s for s in plan_study(study).steps if s.kind == "eval"]
    assert steps and all(s.config.prompt == (("vqav2", "{question}\nShort answer:"),) for s in steps)
    assert all(s.config.max_new_tokens == (("vqav2", 8),) for s in steps)
    assert _eval_ids(study).isdisjoint(_eval_ids(plain))  # another prompt: another result
    trunks = lambda st: {s.step_id for s in plan_study(st).steps if s.kind != "eval"}
    assert trunks(study) == trunks(plain)  # training is untouched


@pytest.mark.parametrize("extra, message", [
    ('[eval.prompt]\nvqav2 = "Answer briefly."\n', "eval.prompt.vqav2.*must hold {question}"),
    ('[eval.prompt]\ncounting = "{question}?"\n', "task 'counting' of the built-in world, whose prompts are fixed"),
    ('[eval.prompt]\nnope = "{question}"\n', "eval.prompt.*names task 'nope', which no eval source has"),
    ("[eval.max_new_tokens]\nvqav2 = 0\n", "eval.max_new_tokens.vqav2"),
])
def test_bad_prompt_settings_are_refused_by_name(tmp_path, extra, message):
    with pytest.raises(StudyError, match=message):
        _study(tmp_path, extra)
