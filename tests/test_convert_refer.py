"""RefCOCO, RefCOCO+, RefCOCOg and OCID-Ref: files in their published layouts (written by
`models.data.convert.samples_refer`) convert to tasks named for the benchmark, prompted and scored
as vlm-evaluation does (boxes at IoU >= 0.5; OCID-Ref at IoU >= 0.25)."""

from __future__ import annotations

import json
import pickle

import pytest

from models.data import eval_tasks, get_tokenizer
from models.data import prompts as pr
from models.data.convert.samples_refer import SAMPLE_WRITERS
from models.data.convert.vl import OCID_IMAGE_SIZE
from models.metrics import task_rows
from models.steps import DataSource
from sweep.cli import main

TOK = get_tokenizer(DataSource(name="world", kind="world"))


def _convert(tmp_path, fmt: str, n: int = 5):
    inputs = SAMPLE_WRITERS[fmt](tmp_path / "raw", n, 0)
    out = tmp_path / "evals" / f"{fmt}.jsonl"
    argv = ["convert", fmt, *[a for k, v in inputs.items() for a in (f"--{k}", v)], "--out", str(out)]
    assert main(argv) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    source = DataSource(name="vl", kind="vqa_jsonl", paths=(str(out),),
                        options=(("image_root", str(tmp_path)),))  # the images lie in raw/, beside evals/
    (task,) = eval_tasks(source, TOK, n_per_task=0, image_size=16, seed=0)
    return inputs, records, task


@pytest.mark.parametrize("fmt, refs_name", [("refcoco", "refs(unc).p"), ("refcoco+", "refs(unc).p"),
                                            ("refcocog", "refs(umd).p")])
def test_refer_datasets_convert_to_their_own_tasks(tmp_path, fmt, refs_name):
    inputs, records, task = _convert(tmp_path, fmt)
    assert inputs["refs"].endswith(f"{fmt}/{refs_name}")
    refs = pickle.loads(open(inputs["refs"], "rb").read())
    instances = json.loads(open(inputs["instances"]).read())
    assert len(records) == 5 and task.name == fmt and task.metric == "refexp" and task.chance == 0.0
    ann, image = instances["annotations"][0], instances["images"][0]
    x, y, w, h = ann["bbox"]
    want = [round(v, 2) for v in (x / image["width"], y / image["height"], (x + w) / image["width"],
                                  (y + h) / image["height"])]
    assert records[0]["box"] == want and records[0]["question"] == refs[0]["sentences"][0]["sent"]
    # the sentence is quoted inside vlm-evaluation's box prompt
    assert task.items[0].prompt_tokens[-len(TOK.encode(pr.render(pr.REFEXP_PROMPT, records[0]["question"]))) - 1:-1] \
        == TOK.encode(pr.render(pr.REFEXP_PROMPT, records[0]["question"]))
    exact = [str(r["box"]) for r in records]
    assert task_rows(task=fmt, group="vl", family="refexp", chance=0.0, items=task.items,
                     outputs=exact)[0]["value"] == 1.0


def test_ocid_ref_converts_pixel_boxes_and_scores_at_iou_a_quarter(tmp_path):
    inputs, records, task = _convert(tmp_path, "ocid_ref", n=6)
    expressions = json.loads(open(inputs["expressions"]).read())
    first = expressions["0"]
    width, height = OCID_IMAGE_SIZE
    x1, y1, x2, y2 = json.loads(first["bbox"])
    assert records[0]["box"] == [round(v, 2) for v in (x1 / width, y1 / height, x2 / width, y2 / height)]
    assert records[0]["question"] == first["sentence"] and records[0]["clutter"] in ("minimum", "medium", "maximum")
    assert (task.name, task.metric, task.chance) == ("ocid_ref", "ocid_ref", 0.0)
    # a box covering a third of the true one (IoU 1/3) counts for OCID-Ref, not for RefCOCO
    items = [type("Item", (), {"box": (0.0, 0.0, 0.6, 0.6)})()]
    third = ["[0.0, 0.0, 0.6, 0.2]"]
    assert task_rows(task="o", group="vl", family="ocid_ref", chance=0.0, items=items, outputs=third)[0] \
        == pytest.approx({"task": "o", "group": "vl", "metric": "acc_iou25", "value": 1.0, "chance": 0.0, "n": 1,
                          "primary_metric": True})
    assert task_rows(task="r", group="vl", family="refexp", chance=0.0, items=items, outputs=third)[0]["value"] == 0.0


def test_an_ocid_box_outside_its_scene_is_refused_by_record(tmp_path, capsys):
    inputs = SAMPLE_WRITERS["ocid_ref"](tmp_path / "raw", 2, 0)
    data = json.loads(open(inputs["expressions"]).read())
    data["1"]["bbox"] = "[10, 10, 700, 20]"
    open(inputs["expressions"], "w").write(json.dumps(data))
    out = tmp_path / "ocid_ref.jsonl"
    code = main(["convert", "ocid_ref", "--expressions", inputs["expressions"], "--images", inputs["images"],
                 "--out", str(out)])
    assert code == 2 and not out.exists()
    assert "expression '1': field 'bbox' must be [x1, y1, x2, y2] inside a 640x480 scene" in capsys.readouterr().err


def test_textvqa_questions_can_carry_llavas_ocr_tokens(tmp_path, capsys):
    from PIL import Image

    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "img" / "abc.jpg")
    release = tmp_path / "TextVQA_0.5.1_val.json"
    release.write_text(json.dumps({"data": [{"question": "what brand?", "image_id": "abc", "question_id": 1,
                                             "answers": ["coke"] * 10}]}))
    ocr = tmp_path / "llava_textvqa_val_v051_ocr.jsonl"
    ocr.write_text(json.dumps({"question_id": 7, "image": "abc.jpg",
                               "text": "what brand?\nReference OCR token: Coca, Cola"}) + "\n")
    base = ["convert", "textvqa", "--annotations", str(release), "--images", str(tmp_path / "img")]
    assert main([*base, "--out", str(tmp_path / "pure.jsonl")]) == 0
    assert main([*base, "--ocr_questions", str(ocr), "--out", str(tmp_path / "ocr.jsonl")]) == 0
    pure, with_ocr = (json.loads((tmp_path / f"{n}.jsonl").read_text()) for n in ("pure", "ocr"))
    assert pure["question"] == "what brand?" and with_ocr["question"].endswith("Reference OCR token: Coca, Cola")
    ocr.write_text(ocr.read_text() * 2)
    assert main([*base, "--ocr_questions", str(ocr), "--out", str(tmp_path / "bad.jsonl")]) == 2
    assert "has 2 questions for 1" in capsys.readouterr().err and not (tmp_path / "bad.jsonl").exists()
