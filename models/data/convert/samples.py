"""Tiny files in each benchmark's official layout, one writer per `convert` format.

`write_<format>(folder, n, seed)` writes `n` records (and their images) the way the benchmark
publishes them, under `folder`, and returns the converter's keyword inputs (`convert(format,
out, **inputs)`). `vlmsweep rehearse` uses them to check a study's eval files end to end before
the real ones exist here; the converter tests can too. `SAMPLES` maps each format to its writer.
The contents are random but seeded: same (n, seed), same bytes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable

from models.data.convert.samples_refer import SAMPLE_WRITERS

WORDS = ("red", "blue", "green", "cat", "dog", "ball", "table", "two", "three", "left", "right", "small")


def _image(folder: Path, name: str, rng: random.Random, size: int = 16) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    colour = tuple(rng.randrange(256) for _ in range(3))
    Image.new("RGB", (size, size), colour).save(folder / name, format="JPEG")


def _json(path: Path, value) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return str(path)


def _jsonl(path: Path, records: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _words(rng: random.Random, k: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(k))


def write_vqav2(folder: Path, n: int, seed: int) -> dict[str, str]:
    """VQAv2: v2_OpenEnded_mscoco_val2014_questions.json, v2_mscoco_val2014_annotations.json, val2014/."""
    rng, images = random.Random(seed), folder / "val2014"
    questions, annotations = [], []
    for i in range(n):
        image_id, qid = 100 + i, 1000 + i
        _image(images, f"COCO_val2014_{image_id:012d}.jpg", rng)
        questions.append({"image_id": image_id, "question": f"what color is the {_words(rng, 1)}?",
                          "question_id": qid})
        answers = [rng.choice(WORDS[:3]) for _ in range(10)]
        annotations.append({"question_type": "what color is the", "multiple_choice_answer": answers[0],
                            "image_id": image_id, "answer_type": "other", "question_id": qid,
                            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                                        for j, a in enumerate(answers)]})
    q = _json(folder / "v2_OpenEnded_mscoco_val2014_questions.json",
              {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": "val2014",
               "license": {}, "questions": questions})
    a = _json(folder / "v2_mscoco_val2014_annotations.json", {"annotations": annotations})
    return {"questions": q, "annotations": a, "images": str(images)}


def write_gqa(folder: Path, n: int, seed: int) -> dict[str, str]:
    """GQA: testdev_balanced_questions.json ({question_id: {imageId, question, answer, …}}), images/."""
    rng, images = random.Random(seed), folder / "images"
    questions = {}
    for i in range(n):
        image_id = f"n{161313 + i}"
        _image(images, f"{image_id}.jpg", rng)
        questions[str(201307251 + i)] = {
            "semantic": [], "entailed": [], "equivalent": [], "question": f"is the {_words(rng, 1)} small?",
            "imageId": image_id, "isBalanced": True, "answer": rng.choice(("yes", "no")),
            "fullAnswer": "", "types": {}}
    return {"questions": _json(folder / "testdev_balanced_questions.json", questions), "images": str(images)}


def write_vizwiz(folder: Path, n: int, seed: int) -> dict[str, str]:
    """VizWiz: val.json (a list of {image, question, answers, answerable, answer_type}), val/."""
    rng, images = random.Random(seed), folder / "val"
    records = []
    for i in range(n):
        name = f"VizWiz_val_{i:08d}.jpg"
        _image(images, name, rng)
        answerable = i % 3 != 0
        answer = rng.choice(WORDS) if answerable else "unanswerable"
        records.append({"image": name, "question": "what is this?", "answerable": int(answerable),
                        "answer_type": "other" if answerable else "unanswerable",
                        "answers": [{"answer": answer, "answer_confidence": "yes"}] * 10})
    return {"annotations": _json(folder / "val.json", records), "images": str(images)}


def write_textvqa(folder: Path, n: int, seed: int) -> dict[str, str]:
    """TextVQA: TextVQA_0.5.1_val.json ({"data": [...]}) and train_images/ ({image_id}.jpg)."""
    rng, images = random.Random(seed), folder / "train_images"
    data = []
    for i in range(n):
        image_id = f"{0x3a8ae2ef43b901 + i:016x}"
        _image(images, f"{image_id}.jpg", rng)
        data.append({"question": "what does the sign say?", "image_id": image_id, "image_classes": ["Sign"],
                     "image_width": 16, "image_height": 16, "answers": [rng.choice(WORDS)] * 10,
                     "question_tokens": ["what", "does"], "question_id": 34602 + i, "set_name": "val"})
    doc = {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": data}
    return {"annotations": _json(folder / "TextVQA_0.5.1_val.json", doc), "images": str(images)}


def write_pope(folder: Path, n: int, seed: int) -> dict[str, str]:
    """POPE: one split's file (coco_pope_<split>.json, a JSON object per line) over COCO val2014/."""
    rng, images = random.Random(seed), folder / "val2014"
    records = []
    for i in range(n):
        name = f"COCO_val2014_{310196 + i:012d}.jpg"
        _image(images, name, rng)
        records.append({"question_id": i + 1, "image": name,
                        "text": f"Is there a {rng.choice(WORDS[3:7])} in the image?", "label": ("yes", "no")[i % 2]})
    return {"questions": _jsonl(folder / "coco_pope_random.json", records), "images": str(images)}


def write_arc(folder: Path, n: int, seed: int) -> dict[str, str]:
    """ARC (AI2's JSONL: question.stem, question.choices [{text, label}], answerKey); OpenBookQA
    and CommonsenseQA publish the same schema."""
    rng = random.Random(seed)
    records = [{"id": f"Mercury_{i}", "question": {"stem": f"which is {_words(rng, 2)}?", "choices": [
        {"text": _words(rng, 2), "label": label} for label in "ABCD"]}, "answerKey": rng.choice("ABCD")}
        for i in range(n)]
    return {"file": _jsonl(folder / "ARC-Easy-Test.jsonl", records)}


def write_hellaswag(folder: Path, n: int, seed: int) -> dict[str, str]:
    """HellaSwag: hellaswag_val.jsonl (activity_label, ctx_a, ctx_b, endings, label)."""
    rng = random.Random(seed)
    records = [{"ind": i, "activity_label": "Playing ball", "ctx_a": f"A {_words(rng, 2)} rolls.", "ctx_b": "it",
                "endings": [_words(rng, 3) + "." for _ in range(4)], "label": rng.randrange(4),
                "split": "val", "source_id": f"x{i}"} for i in range(n)]
    return {"file": _jsonl(folder / "hellaswag_val.jsonl", records)}


def write_piqa(folder: Path, n: int, seed: int) -> dict[str, str]:
    """PIQA: valid.jsonl (goal, sol1, sol2) and valid-labels.lst (one 0/1 per line)."""
    rng = random.Random(seed)
    records = [{"goal": f"to move the {_words(rng, 1)}", "sol1": _words(rng, 3), "sol2": _words(rng, 3)}
               for _ in range(n)]
    labels = folder / "valid-labels.lst"
    file = _jsonl(folder / "valid.jsonl", records)
    labels.write_text("".join(f"{rng.randrange(2)}\n" for _ in range(n)))
    return {"file": file, "labels": str(labels)}


def write_mc(folder: Path, n: int, seed: int) -> dict[str, str]:
    """Any multiple-choice JSONL with a list of choices (here COPA's premise and two choices)."""
    rng = random.Random(seed)
    records = [{"premise": f"the {_words(rng, 2)} fell because", "choices": [_words(rng, 2), _words(rng, 2)],
                "label": rng.randrange(2)} for _ in range(n)]
    return {"file": _jsonl(folder / "copa.jsonl", records), "context": "premise", "choices": "choices",
            "label": "label"}


SAMPLES: dict[str, Callable[[Path, int, int], dict[str, str]]] = {
    "vqav2": write_vqav2, "gqa": write_gqa, "vizwiz": write_vizwiz, "textvqa": write_textvqa,
    "pope": write_pope, "arc": write_arc, "hellaswag": write_hellaswag, "piqa": write_piqa, "mc": write_mc,
    **SAMPLE_WRITERS,  # the REFER family (RefCOCO, RefCOCO+, RefCOCOg) and OCID-Ref
}
