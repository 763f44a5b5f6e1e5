"""`vlmsweep convert`: fixture files written in each benchmark's public schema become eval JSONL
that the eval readers load with the right metric, group and chance; malformed input is refused with
one line naming the record, exit 2, and nothing written."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.data import eval_tasks, get_tokenizer
from models.data.convert.text import _hellaswag_text
from models.data.errors import BadRecordError
from models.steps import DataSource
from sweep.cli import main

TOK = get_tokenizer(DataSource(name="world", kind="world"))


def _image(folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), 120, np.uint8)).save(folder / name)


def _write(path: Path, value) -> Path:
    path.write_text(json.dumps(value) if not isinstance(value, str) else value)
    return path


def _jsonl(path: Path, records) -> Path:
    return _write(path, "".join(json.dumps(r) + "\n" for r in records))


def _convert(capsys, *argv) -> tuple[int, str]:
    code = main(["convert", *map(str, argv)])
    captured = capsys.readouterr()
    return code, (captured.out + captured.err).strip()


def _task(out: Path, kind: str, image_root: Path | None = None):
    options = (("image_root", str(image_root)),) if image_root else ()
    (task,) = eval_tasks(DataSource(name="evals", kind=kind, paths=(str(out),), options=options), TOK,
                         n_per_task=0, image_size=8, seed=0)
    return task


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines()]


def _vqav2_files(tmp_path: Path, answers: list[str]) -> tuple[Path, Path, Path]:
    images = tmp_path / "val2014"
    _image(images, "COCO_val2014_000000000042.jpg")
    questions = _write(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json", {
        "info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": "val2014",
        "license": {}, "questions": [{"image_id": 42, "question": "What color is the cat?", "question_id": 420}]})
    annotations = _write(tmp_path / "v2_mscoco_val2014_annotations.json", {"annotations": [{
        "question_type": "what color is the", "multiple_choice_answer": "black", "image_id": 42,
        "answer_type": "other", "question_id": 420,
        "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]}]})
    return questions, annotations, images


def test_vqav2_keeps_the_ten_answers_for_soft_accuracy(tmp_path, capsys):
    q, a, images = _vqav2_files(tmp_path, ["black"] * 7 + ["dark gray"] * 3)
    out = tmp_path / "evals" / "vqav2.jsonl"
    code, text = _convert(capsys, "vqav2", "--questions", q, "--annotations", a, "--images", images, "--out", out)
    assert code == 0 and "wrote 1 vqav2 records" in text
    # The images lie outside the eval file's folder: its source must name their root.
    assert f'give its data source image_root = "{images}"' in text
    with pytest.raises(BadRecordError, match="lies outside the image root"):
        _task(out, "vqa_jsonl")
    (rec,) = _records(out)
    assert rec["answers"] == ["black"] * 7 + ["dark gray"] * 3 and rec["metric"] == "vqa" and rec["chance"] == 0.0
    assert rec["image"] == "../val2014/COCO_val2014_000000000042.jpg"  # relative to the output file
    task = _task(out, "vqa_jsonl", image_root=images)
    assert (task.name, task.group, task.kind, task.metric, task.chance) == ("vqav2", "vl", "generate", "vqa", 0.0)


def test_gqa_textvqa_vizwiz(tmp_path, capsys):
    _image(tmp_path / "gqa", "n161313.jpg")
    gqa = _write(tmp_path / "testdev_balanced_questions.json", {"201307251": {
        "semantic": [], "entailed": [], "equivalent": [], "question": "Is it overcast?", "imageId": "n161313",
        "isBalanced": True, "answer": "no", "fullAnswer": "No, it is clear.", "types": {}}})
    _image(tmp_path / "train_images", "003a8ae2ef43b901.jpg")
    textvqa = _write(tmp_path / "TextVQA_0.5.1_val.json", {"dataset_type": "val", "dataset_name": "textvqa",
                                                           "dataset_version": "0.5.1", "data": [{
        "question": "what brand is this?", "image_id": "003a8ae2ef43b901", "image_classes": ["Bottle"],
        "image_width": 1024, "image_height": 664, "answers": ["coca cola"] * 9 + ["coke"],
        "question_tokens": ["what", "brand"], "question_id": 34602, "set_name": "val"}]})
    _image(tmp_path / "vizwiz", "VizWiz_val_00000000.jpg")
    vizwiz = _write(tmp_path / "val.json", [{
        "image": "VizWiz_val_00000000.jpg", "question": "What is this?", "answer_type": "unanswerable",
        "answerable": 0, "answers": [{"answer": "unanswerable", "answer_confidence": "yes"}] * 10}])
    for fmt, args, metric in (("gqa", ["--questions", gqa, "--images", tmp_path / "gqa"], "exact_match"),
                              ("textvqa", ["--annotations", textvqa, "--images", tmp_path / "train_images"], "vqa"),
                              ("vizwiz", ["--annotations", vizwiz, "--images", tmp_path / "vizwiz"], "vizwiz")):
        out = tmp_path / f"{fmt}.jsonl"
        assert _convert(capsys, fmt, *args, "--out", out)[0] == 0
        task = _task(out, "vqa_jsonl")
        assert (task.name, task.group, task.metric, task.chance) == (fmt, "vl", metric, 0.0)
    assert _records(tmp_path / "gqa.jsonl")[0]["answers"] == ["no"]
    assert _task(tmp_path / "vizwiz.jsonl", "vqa_jsonl").items[0].answerable is False


def test_pope_becomes_yes_no_choices(tmp_path, capsys):
    images = tmp_path / "val2014"
    _image(images, "COCO_val2014_000000310196.jpg")
    split = _jsonl(tmp_path / "coco_pope_adversarial.json", [
        {"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a snowboard in the image?",
         "label": "yes"},
        {"question_id": 2, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a dog in the image?",
         "label": "no"}])
    out = tmp_path / "pope_adversarial.jsonl"
    assert _convert(capsys, "pope", "--questions", split, "--images", images, "--out", out)[0] == 0
    task = _task(out, "vqa_jsonl")
    assert (task.kind, task.metric, task.chance) == ("multiple_choice", "pope", 0.5)
    assert [it.label for it in task.items] == [0, 1] and task.items[0].choice_texts == ["yes", "no"]


def test_refcoco_boxes_are_normalised_xyxy(tmp_path, capsys):
    _image(tmp_path / "train2014", "COCO_train2014_000000581857.jpg")
    refs = tmp_path / "refs(unc).p"
    refs.write_bytes(pickle.dumps([
        {"ref_id": 0, "ann_id": 7, "image_id": 581857, "split": "val", "category_id": 1, "sent_ids": [0, 1],
         "sentences": [{"sent": "the lady in blue", "sent_id": 0}, {"sent": "woman left", "sent_id": 1}]},
        {"ref_id": 1, "ann_id": 7, "image_id": 581857, "split": "train", "sentences": [{"sent": "x"}]}], protocol=2))
    instances = _write(tmp_path / "instances.json", {
        "images": [{"id": 581857, "file_name": "COCO_train2014_000000581857.jpg", "width": 640, "height": 400}],
        "annotations": [{"id": 7, "image_id": 581857, "bbox": [64, 40, 256, 200], "category_id": 1}]})
    out = tmp_path / "refcoco.jsonl"
    assert _convert(capsys, "refcoco", "--refs", refs, "--instances", instances, "--images",
                    tmp_path / "train2014", "--out", out)[0] == 0
    recs = _records(out)
    assert len(recs) == 2 and recs[0]["box"] == [0.1, 0.1, 0.5, 0.6] and recs[0]["metric"] == "refexp"
    task = _task(out, "vqa_jsonl")
    assert task.metric == "refexp" and task.items[0].box == (0.1, 0.1, 0.5, 0.6) and task.chance == 0.0


def test_text_benchmarks_follow_lm_eval_harness_prompts(tmp_path, capsys):
    arc = _jsonl(tmp_path / "ARC-Easy-Test.jsonl", [
        {"id": "Mercury_1", "question": {"stem": "Which is a liquid?", "choices": [
            {"text": "ice", "label": "A"}, {"text": "water", "label": "B"}, {"text": "steam", "label": "C"},
            {"text": "rock", "label": "D"}]}, "answerKey": "B"},
        {"id": "Mercury_2", "question": "What melts?", "choices": {"text": ["ice", "rock"], "label": ["1", "2"]},
         "answerKey": "1"}])  # the Hugging Face layout
    hellaswag = _jsonl(tmp_path / "hellaswag_val.jsonl", [{
        "ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
        "label": 3, "endings": ["is using wrap.", "is ripping level tiles off.", "is holding a rubik's cube.",
                                "starts pulling up roofing on a roof."], "split": "val", "source_id": "x"}])
    piqa = _jsonl(tmp_path / "valid.jsonl", [{"goal": "To boil water", "sol1": "heat it", "sol2": "cool it"}])
    labels = _write(tmp_path / "valid-labels.lst", "0\n")
    generic = _jsonl(tmp_path / "copa.jsonl", [{"q": {"text": "The man broke his toe because"},
                                                "options": ["he dropped a hammer", "he sang"], "answer": "he sang"}])
    for fmt, args in (("arc", ["--file", arc]), ("hellaswag", ["--file", hellaswag]),
                      ("piqa", ["--file", piqa, "--labels", labels]),
                      ("mc", ["--file", generic, "--context", "q.text", "--choices", "options", "--label", "answer",
                              "--chance", "0.5"])):
        assert _convert(capsys, fmt, *args, "--out", tmp_path / f"{fmt}.jsonl")[0] == 0
    a = _records(tmp_path / "arc.jsonl")
    assert a[0]["context"] == "Question: Which is a liquid?\nAnswer:" and a[0]["label"] == 1 and a[1]["label"] == 0
    assert a[0]["chance"] == pytest.approx((1 / 4 + 1 / 2) / 2)  # the mean of 1/number of choices
    (h,) = _records(tmp_path / "hellaswag.jsonl")
    assert h["context"] == "Roof shingle removal: A man is sitting on a roof. He" and h["label"] == 3
    assert _records(tmp_path / "piqa.jsonl")[0]["context"] == "Question: To boil water\nAnswer:"
    assert _records(tmp_path / "mc.jsonl")[0]["label"] == 1 and _records(tmp_path / "mc.jsonl")[0]["chance"] == 0.5
    task = _task(tmp_path / "arc.jsonl", "mc_jsonl")
    assert (task.group, task.kind, task.metric) == ("text", "multiple_choice", "multiple_choice")
    assert task.items[0].choice_texts == ["ice", "water", "steam", "rock"]


def test_hellaswag_drops_wikihow_tags_like_lm_eval_harness():
    assert _hellaswag_text("Personal Care: [header] How to dye hair [title] Buy dye. You") == \
        "Personal Care: How to dye hair. Buy dye. You"


@pytest.mark.parametrize("fmt, build, message", [
    ("vqav2", lambda p: ["--questions", _vqav2_files(p, ["a"] * 10)[0], "--annotations",
                         _write(p / "a.json", {"annotations": []}), "--images", p / "val2014"],
     "question_id 420: no annotation for this question"),
    ("vqav2", lambda p: ["--questions", _vqav2_files(p, ["a"] * 10)[0], "--annotations",
                         _vqav2_files(p, ["a"] * 10)[1], "--images", p / "nowhere"], "does not exist"),
    ("gqa", lambda p: ["--questions", _write(p / "q.json", {"77": {"question": "?", "imageId": "i"}}),
                       "--images", p], "question '77': image"),
    ("pope", lambda p: ["--questions", _jsonl(p / "s.json", [{"image": "x.jpg", "text": "?", "label": "maybe"}]),
                        "--images", p], "line 1: field 'label' must be 'yes' or 'no'"),
    ("arc", lambda p: ["--file", _jsonl(p / "arc.jsonl", [{"question": {"stem": "?", "choices": [
        {"text": "a", "label": "A"}, {"text": "b", "label": "B"}]}, "answerKey": "E"}])],
     "line 1: answerKey 'E' is not one of the choice labels"),
    ("hellaswag", lambda p: ["--file", _write(p / "h.jsonl", "{not json\n")], "line 1: not valid JSON"),
    ("piqa", lambda p: ["--file", _jsonl(p / "v.jsonl", [{"goal": "g", "sol1": "a", "sol2": "b"}] * 2),
                        "--labels", _write(p / "l.lst", "1\n")], "missing"),
    ("mc", lambda p: ["--file", _jsonl(p / "m.jsonl", [{"c": "x", "o": ["a", "b"], "l": 5}]), "--context", "c",
                      "--choices", "o", "--label", "l"], "line 1: label 5 is out of range for 2 choices"),
])
def test_malformed_input_is_refused_naming_the_record(tmp_path, capsys, fmt, build, message):
    out = tmp_path / "out" / "task.jsonl"
    code, text = _convert(capsys, fmt, *build(tmp_path), "--out", out)
    assert code == 2 and message in text and len(text.splitlines()) == 1, text
    assert not out.parent.exists() or not any(out.parent.iterdir())  # not even a temp file
