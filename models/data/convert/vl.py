"""Vision-language benchmarks from their published files into the project's `vqa_jsonl` records.

Each record names its image relative to the output file (the images stay where they are), and
carries the metric and chance its benchmark implies (`models.metrics`): VQAv2 and TextVQA soft
accuracy over the ten annotators' answers (each with its evaluator's normalisation), VizWiz the same
plus answerability, GQA exact match (vlm-evaluation's rule),
POPE yes/no as two choices, RefCOCO / RefCOCO+ / RefCOCOg and OCID-Ref a box. Questions and
referring expressions are written bare: the evaluation wraps them in vlm-evaluation's prompt for the
metric family (`models.data.prompts`). Open-answer tasks have chance 0 (DCLM's convention for open
answers); POPE's yes/no splits are balanced, so 0.5.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

from models.data.convert.common import ConvertError, image_ref, need, read_json, read_jsonl

OCID_IMAGE_SIZE = (640, 480)  # every OCID scene is 640 x 480 pixels (vlm-evaluation relies on it too)
OCID_CLUTTER = ((9, "minimum"), (16, "medium"), (20, "maximum"))  # take_id up to 9 / 16 / 20


def _answers(ann: dict, path, where: str) -> list[str]:
    """The annotators' answers of a VQAv2 / VizWiz annotation ([{answer, ...}, ...])."""
    raw = need(ann, "answers", path, where, list)
    if not raw or not all(isinstance(a, dict) and isinstance(a.get("answer"), str) for a in raw):
        raise ConvertError(path, where, "field 'answers' must be a non-empty list of {answer: string}")
    return [a["answer"] for a in raw]


def vqav2(*, questions: str, annotations: str, images: str, out: str) -> list[dict]:
    """VQAv2: the questions JSON, the annotations JSON and the COCO image folder they refer to."""
    qdoc, adoc = read_json(questions), read_json(annotations)
    subtype = need(qdoc, "data_subtype", questions, "<file>")  # e.g. val2014: the image file prefix
    anns: dict[int, dict] = {}
    for i, ann in enumerate(need(adoc, "annotations", annotations, "<file>", list)):
        anns[need(ann, "question_id", annotations, f"annotations[{i}]", int)] = ann
    records = []
    for i, q in enumerate(need(qdoc, "questions", questions, "<file>", list)):
        where = f"questions[{i}]"
        qid = need(q, "question_id", questions, where, int)
        if qid not in anns:
            raise ConvertError(annotations, f"question_id {qid}", "no annotation for this question")
        image = f"COCO_{subtype}_{need(q, 'image_id', questions, where, int):012d}.jpg"
        records.append({"question_id": qid, "question": need(q, "question", questions, where),
                        "image": image_ref(images, image, out, questions, where),
                        "answers": _answers(anns[qid], annotations, f"question_id {qid}"),
                        "metric": "vqa", "chance": 0.0})
    return records


def textvqa(*, annotations: str, images: str, out: str, ocr_questions: str | None = None) -> list[dict]:
    """TextVQA: the release JSON ({"data": [...]}) and its image folder ({image_id}.jpg). With
    `ocr_questions` (LLaVA's question lines, same order, each `text` the question followed by
    "Reference OCR token: ..."), the questions carry the OCR tokens: vlm-evaluation's TextVQA-OCR;
    without, its TextVQA-Pure."""
    data = need(read_json(annotations), "data", annotations, "<file>", list)
    ocr = None if ocr_questions is None else [need(q, "text", ocr_questions, f"line {n}")
                                              for n, q in read_jsonl(ocr_questions)]
    if ocr is not None and len(ocr) != len(data):
        raise ConvertError(ocr_questions, "<file>", f"has {len(ocr)} questions for {len(data)} in {annotations}; "
                                                    "the two files must list the same questions in one order")
    records = []
    for i, q in enumerate(data):
        where = f"data[{i}]"
        answers = need(q, "answers", annotations, where, list)
        if not answers or not all(isinstance(a, str) for a in answers):
            raise ConvertError(annotations, where, "field 'answers' must be a non-empty list of strings")
        rec = _open_answer(q, f"{need(q, 'image_id', annotations, where)}.jpg", answers, "textvqa",
                           images, out, annotations, where)
        records.append(rec if ocr is None else rec | {"question": ocr[i]})
    return records


def vizwiz(*, annotations: str, images: str, out: str) -> list[dict]:
    """VizWiz: a split's annotation JSON (a list) and its image folder; `answerable` is kept."""
    data = read_json(annotations)
    if not isinstance(data, list):
        raise ConvertError(annotations, "<file>", "a VizWiz annotation file holds a JSON list")
    return [_open_answer(q, need(q, "image", annotations, f"[{i}]"), _answers(q, annotations, f"[{i}]"),
                         "vizwiz", images, out, annotations, f"[{i}]",
                         answerable=bool(need(q, "answerable", annotations, f"[{i}]", (int, bool))))
            for i, q in enumerate(data)]


def _open_answer(q: dict, image: str, answers: list[str], metric: str, images: str, out: str, path: str,
                 where: str, **extra) -> dict:
    """A `vqa_jsonl` record of an open-answer question (chance 0: no blind answer is right)."""
    return {"question_id": q.get("question_id"), "question": need(q, "question", path, where),
            "image": image_ref(images, image, out, path, where), "answers": answers, "metric": metric,
            "chance": 0.0, **extra}


def gqa(*, questions: str, images: str, out: str) -> list[dict]:
    """GQA: a balanced questions JSON ({question_id: {imageId, question, answer, ...}})."""
    data = read_json(questions)
    if not isinstance(data, dict):
        raise ConvertError(questions, "<file>", "a GQA questions file holds a JSON object keyed by question id")
    records = []
    for qid, q in data.items():
        where = f"question {qid!r}"
        image = f"{need(q, 'imageId', questions, where)}.jpg"
        records.append({"question_id": qid, "question": need(q, "question", questions, where),
                        "image": image_ref(images, image, out, questions, where),
                        "answers": [need(q, "answer", questions, where)], "metric": "gqa",
                        "chance": 0.0})
    return records


def pope(*, questions: str, images: str, out: str) -> list[dict]:
    """POPE: one split's file (a JSON object per line: question_id, image, text, label yes|no)."""
    records = []
    for number, q in read_jsonl(questions):
        where = f"line {number}"
        label = need(q, "label", questions, where)
        if label not in ("yes", "no"):
            raise ConvertError(questions, where, f"field 'label' must be 'yes' or 'no', got {label!r}")
        records.append({"question_id": q.get("question_id"), "question": need(q, "text", questions, where),
                        "image": image_ref(images, need(q, "image", questions, where), out, questions, where),
                        "choices": ["yes", "no"], "label": 0 if label == "yes" else 1,
                        "metric": "pope", "chance": 0.5})
    return records


class _PlainUnpickler(pickle.Unpickler):
    """REFER's refs(…).p holds only lists, dicts, strings and numbers: refuse anything else."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not plain data")


def _refs(path: str) -> list:
    try:
        with open(path, "rb") as f:
            refs = _PlainUnpickler(f, encoding="latin1").load()
    except OSError as exc:
        raise ConvertError(path, "<file>", f"cannot read ({exc.strerror})") from None
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise ConvertError(path, "<file>", f"not a REFER refs pickle ({exc})") from None
    if not isinstance(refs, list):
        raise ConvertError(path, "<file>", "a REFER refs file holds a list of refs")
    return refs


def _box(ann: dict, image: dict, path, where: str) -> list[float]:
    """COCO's [x, y, w, h] in pixels → [x1, y1, x2, y2] in [0, 1] (two decimals, as Prismatic)."""
    bbox = need(ann, "bbox", path, where, list)
    if len(bbox) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
        raise ConvertError(path, where, f"field 'bbox' must be [x, y, w, h], got {bbox!r}")
    x, y, w, h = bbox
    width, height = need(image, "width", path, where, int), need(image, "height", path, where, int)
    if w <= 0 or h <= 0 or x + w > width or y + h > height:
        raise ConvertError(path, where, f"box {ann['bbox']} does not fit its {width}x{height} image")
    return [round(v, 2) for v in (x / width, y / height, (x + w) / width, (y + h) / height)]


def refcoco(*, refs: str, instances: str, images: str, out: str, split: str = "val") -> list[dict]:
    """RefCOCO / RefCOCO+ / RefCOCOg in the REFER layout: the dataset's refs(…).p (refs(unc).p for
    RefCOCO and RefCOCO+, refs(umd).p for RefCOCOg), its instances.json and the COCO train2014
    images; one record per sentence of each ref in `split` (vlm-evaluation scores `val`)."""
    inst = read_json(instances)
    by_image = {need(im, "id", instances, f"images[{i}]", int): im
                for i, im in enumerate(need(inst, "images", instances, "<file>", list))}
    by_ann = {need(a, "id", instances, f"annotations[{i}]", int): a
              for i, a in enumerate(need(inst, "annotations", instances, "<file>", list))}
    records = []
    for i, ref in enumerate(_refs(refs)):
        where = f"ref {i}"
        if need(ref, "split", refs, where) != split:
            continue
        ann = by_ann.get(need(ref, "ann_id", refs, where, int))
        image = by_image.get(need(ref, "image_id", refs, where, int))
        if ann is None or image is None:
            raise ConvertError(refs, where, f"its ann_id or image_id is not in {Path(instances).name}")
        box = _box(ann, image, instances, f"annotation {ann['id']}")
        file = image_ref(images, need(image, "file_name", instances, f"image {image['id']}"), out, refs, where)
        for j, sent in enumerate(need(ref, "sentences", refs, where, list)):
            text = need(sent, "sent", refs, f"{where} sentences[{j}]")
            records.append({"question": text, "image": file, "box": box, "metric": "refexp", "chance": 0.0})
    return records


def _pixel_box(value, path, where: str) -> list:
    """OCID-Ref's box: [x1, y1, x2, y2] in pixels, published as a JSON string (or a list)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = None
    ok = isinstance(value, list) and len(value) == 4 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    width, height = OCID_IMAGE_SIZE
    if not ok or not (value[0] < value[2] <= width and value[1] < value[3] <= height):
        raise ConvertError(path, where, f"field 'bbox' must be [x1, y1, x2, y2] inside a {width}x{height} "
                                        f"scene, got {value!r}")
    return value


def ocid_ref(*, expressions: str, images: str, out: str) -> list[dict]:
    """OCID-Ref: its expressions JSON ({id: {scene_path, bbox, sentence, take_id, ...}}, e.g.
    val_expressions.json) and the OCID dataset folder the scene paths are relative to. Scored at
    IoU >= 0.25 (the `ocid_ref` family); `clutter` keeps the take's clutter level."""
    data = read_json(expressions)
    if not isinstance(data, dict):
        raise ConvertError(expressions, "<file>", "an OCID-Ref expressions file holds a JSON object keyed by id")
    width, height = OCID_IMAGE_SIZE
    records = []
    for key, ex in data.items():
        where = f"expression {key!r}"
        x1, y1, x2, y2 = _pixel_box(need(ex, "bbox", expressions, where, (str, list)), expressions, where)
        take = need(ex, "take_id", expressions, where, int)
        if not 0 <= take <= OCID_CLUTTER[-1][0]:
            raise ConvertError(expressions, where, f"field 'take_id' must be in [0, 20], got {take}")
        records.append({"question_id": key, "question": need(ex, "sentence", expressions, where),
                        "image": image_ref(images, need(ex, "scene_path", expressions, where), out, expressions, where),
                        "box": [round(v, 2) for v in (x1 / width, y1 / height, x2 / width, y2 / height)],
                        "clutter": next(name for last, name in OCID_CLUTTER if take <= last),
                        "metric": "ocid_ref", "chance": 0.0})
    return records
