"""VQAv2, TextVQA and VizWiz accuracy against faithful ports of the evaluators the paper ran.

The reference functions below follow the upstream code's structure step by step (TRI's
vlm-evaluation: its VQAv2 refactor of the official evaluator, the M4C/EvalAI TextVQA evaluator, the
VizWiz evaluator it ships), quirks included: annotator answers kept as dicts and compared as dicts,
`re.UNICODE` passed where `re.sub` takes its count, `setdefault` on the number map, a dict of
unique-answer scores. They share only the word tables with `models.vqa_scores`; those are pinned
by the crafted cases. Crafted cases, then 5,000 random answer sets per scorer: no difference.
Boxes likewise: 5,000 generated texts through ports of its `parse_bbox` and `compute_iou`.
"""

from __future__ import annotations

import random
import re

import pytest

from models import vqa_scores as vs
from models.metrics import task_rows

_PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")


def _ref_punctuation(in_text: str, comma_strip: re.Pattern) -> str:
    out_text = in_text
    for p in _PUNCT:
        if (p + " " in in_text or " " + p in in_text) or (re.search(comma_strip, in_text) is not None):
            out_text = out_text.replace(p, "")
        else:
            out_text = out_text.replace(p, " ")
    return _PERIOD_STRIP.sub("", out_text, re.UNICODE)  # noqa: B034 - the evaluators' own call


def _ref_digit_article(in_text: str, contractions: dict) -> str:
    manual_map = dict(vs.NUMBER_WORDS)
    out_text = []
    for word in in_text.lower().split():
        word = manual_map.setdefault(word, word)
        if word not in ("a", "an", "the"):
            out_text.append(word)
    for word_id, word in enumerate(out_text):
        if word in contractions:
            out_text[word_id] = contractions[word]
    return " ".join(out_text)


def _prediction(raw: str, comma_strip: re.Pattern, contractions: dict) -> str:
    res = raw.replace("\n", " ").replace("\t", " ").strip()
    return _ref_digit_article(_ref_punctuation(res, comma_strip), contractions)


def ref_vqav2(raw_prediction: str, raw_answers: list[str]) -> float:
    """vlm-evaluation's VQAEvaluator.evaluate for one question (answer dicts carry answer_id)."""
    answers = [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(raw_answers)]
    result = _prediction(raw_prediction, re.compile(r"(\d)(,)(\d)"), vs.CONTRACTIONS)
    for answer in answers:
        answer["answer"] = _ref_punctuation(answer["answer"], re.compile(r"(\d)(,)(\d)"))
    accuracies = []
    for answer in answers:
        matching = [other for other in answers if (other != answer) and (other["answer"] == result)]
        accuracies.append(min(1, len(matching) / 3))
    return sum(accuracies) / len(accuracies)


def _ref_evalai(item: str) -> str:
    item = item.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return _prediction(item, re.compile(r"(?<=\d)(\,)+(?=\d)"), vs.CONTRACTIONS)


def ref_textvqa(raw_prediction: str, raw_answers: list[str]) -> float:
    """TextVQAAccuracyEvaluator.eval_pred_list for one entry."""
    answers = [_ref_evalai(a) for a in raw_answers]
    assert len(answers) == 10
    gt_answers = list(enumerate(answers))
    scores = {}
    for unique in set(answers):
        accs = []
        for gt in gt_answers:
            others = [item for item in gt_answers if item != gt]
            accs.append(min(1, float(len([item for item in others if item[1] == unique])) / 3))
        scores[unique] = sum(accs) / len(accs)
    return scores.get(_ref_evalai(raw_prediction), 0.0)


def ref_vizwiz(raw_prediction: str, raw_answers: list[str]) -> float:
    """VizWiz's VQAEval.evaluate for one question: the annotators' answers are not processed."""
    res = _prediction(raw_prediction, re.compile(r"(\d)(\,)(\d)"), vs.VIZWIZ_CONTRACTIONS)
    gts = [{"answer": a, "answer_confidence": "yes"} for a in raw_answers]
    accs = []
    for i, _ in enumerate(gts):
        others = [item for j, item in enumerate(gts) if i != j]
        accs.append(min(1, float(len([item for item in others if item["answer"] == res])) / 3))
    return float(sum(accs)) / len(accs)


SCORERS = [(vs.vqav2_accuracy, ref_vqav2), (vs.textvqa_accuracy, ref_textvqa), (vs.vizwiz_accuracy, ref_vizwiz)]
CRAFTED = [
    ("Cat.", ["cat"] * 10),  # unanimous annotators
    ("2", ["two"] * 10), ("two", ["2"] * 10), ("Two", ["2"] * 3 + ["3"] * 7),  # number words
    ("the dog", ["dog"] * 4 + ["a dog"] * 6), ("A cat", ["cat"] * 2 + ["the cat"] * 8),  # articles
    ("yes!", ["yes"] * 5 + ["yes!"] * 5), ("t-shirt", ["t shirt"] * 3 + ["t-shirt"] * 7),  # punctuation
    ("red, white", ["red white"] * 6 + ["red, white"] * 4), ("black/white", ["black white"] * 10),
    ("dont", ["don't"] * 9 + ["dont"]), ("whats", ["what's"] * 10), ("cant", ["can't"] * 10),  # contractions
    ("hadn'tve", ["hadn`t`ve"] * 10), ("dont", ["don`t"] * 10), ("it's red", ["it 's red"] * 10),
    ("1,000", ["1000"] * 10), ("1,000 cats", ["1,000 cats"] * 5 + ["1000 cats"] * 5),  # commas in numbers
    ("3.5", ["3.5"] * 10), ("2.", ["2"] * 10), ("U.S.A.", ["usa"] * 10), ("  Yes\n", ["yes"] * 10),
    ("Unanswerable.", ["unanswerable"] * 10), ("what's that?", ["what's that"] * 10),
]


@pytest.mark.parametrize("prediction, answers", CRAFTED)
@pytest.mark.parametrize("ours, reference", SCORERS, ids=["vqav2", "textvqa", "vizwiz"])
def test_crafted_cases_score_as_the_reference(ours, reference, prediction, answers):
    assert ours(prediction, answers) == pytest.approx(reference(prediction, answers), abs=1e-12)


def test_the_scorers_differ_where_the_evaluators_do():
    ten_two = ["two"] * 10
    assert vs.vqav2_accuracy("2", ten_two) == 0.0  # annotators: punctuation only, so "two" stays
    assert vs.textvqa_accuracy("2", ten_two) == 1.0  # EvalAI's processor maps both sides
    assert vs.vizwiz_accuracy("dont", ["don't"] * 10) == 0.0  # VizWiz writes "don`t"
    assert vs.vizwiz_accuracy("cant", ["can't"] * 10) == 1.0  # … but keeps "can't"
    assert vs.vqav2_accuracy("Yes", ["Yes"] * 10) == 0.0  # the prediction is lower-cased, answers not
    assert vs.normalize_vqa_answer("." * 40 + "x") == "." * 8 + "x"  # at most 32 periods removed


_WORDS = ["two", "2", "Two", "ten", "10", "none", "0", "zero", "the dog", "dog", "a dog", "Dog.", "dogs",
          "don't", "dont", "don`t", "Dont", "can't", "cant", "1,000", "1000", "1, 000", "yes", "Yes", "no",
          "3.5", "it's", "its", "cat's", "t-shirt", "t shirt", "tshirt", "left", "unanswerable",
          "Unanswerable", "black and white", "black/white", "what's", "whats", "wheres", "where's",
          "hadn'tve", "U.S.A.", "usa", "an apple", "apple", "(red)", "red", "well-known", "a.m.", "5 p.m."]
_DECOR = ["", "", "", ".", "!", "?", " ", "\n", ",", "'s"]


def _random_set(rng: random.Random) -> tuple[str, list[str]]:
    pool = rng.sample(_WORDS, rng.randint(1, 4))
    answers = [rng.choice(pool) + (rng.choice(_DECOR) if rng.random() < 0.2 else "") for _ in range(10)]
    prediction = rng.choice(pool if rng.random() < 0.7 else _WORDS)
    if rng.random() < 0.4:
        prediction = rng.choice(["The ", "a ", " ", "", ""]) + prediction + rng.choice(_DECOR)
    if rng.random() < 0.2:
        prediction = prediction.upper() if rng.random() < 0.5 else prediction.capitalize()
    return prediction, answers


@pytest.mark.parametrize("ours, reference", SCORERS, ids=["vqav2", "textvqa", "vizwiz"])
def test_random_answer_sets_score_as_the_reference(ours, reference):
    rng = random.Random(28)
    sets = [_random_set(rng) for _ in range(5000)]
    differ = [(p, a) for p, a in sets if abs(ours(p, a) - reference(p, a)) > 1e-12]
    assert differ == []
    assert len({reference(p, a) for p, a in sets}) > 3  # the sets exercise partial credit, not only 0/1


def test_task_rows_use_each_benchmarks_scorer():
    items = [type("Item", (), {"answers": ["two"] * 10, "answerable": True})()]
    values = {family: task_rows(task="t", group="vl", family=family, chance=0.0, items=items,
                                outputs=["2"])[0]["value"] for family in ("vqa", "textvqa", "vizwiz")}
    assert values == {"vqa": 0.0, "textvqa": 1.0, "vizwiz": 0.0}


def ref_parse_bbox(gen_bbox: str):
    """vlm-evaluation's refcoco.parse_bbox."""
    import ast

    try:
        bbox_xyxy = ast.literal_eval(gen_bbox)
        assert isinstance(bbox_xyxy, list) and len(bbox_xyxy) == 4, "Invalid BBox"
        assert all(0 <= coord <= 1 for coord in bbox_xyxy), "Invalid Normalized BBox"
        assert (bbox_xyxy[0] < bbox_xyxy[2]) and (bbox_xyxy[1] < bbox_xyxy[3]), "Invalid BBox Format"
        return bbox_xyxy
    except (AssertionError, ValueError, SyntaxError, TypeError):
        return None


def ref_iou(pred, gt) -> float:
    """vlm-evaluation's refcoco.compute_iou."""
    int_x1, int_y1 = max(pred[0], gt[0]), max(pred[1], gt[1])
    int_x2, int_y2 = min(pred[2], gt[2]), min(pred[3], gt[3])
    pred_area = (pred[2] - pred[0]) * (pred[3] - pred[1])
    gt_area = (gt[2] - gt[0]) * (gt[3] - gt[1])
    intersection = max(0, int_x2 - int_x1) * max(0, int_y2 - int_y1)
    return intersection / (pred_area + gt_area - intersection)


def _random_box_text(rng: random.Random) -> str:
    coords = [round(rng.random(), rng.choice([1, 2, 3])) for _ in range(4)]
    if rng.random() < 0.8:  # mostly well-ordered boxes, so that IoUs get compared too
        (coords[0], coords[2]), (coords[1], coords[3]) = sorted(coords[::2]), sorted(coords[1::2])
    if rng.random() < 0.1:
        coords[rng.randrange(4)] = rng.choice([0, 1, 1.5, -0.1, True])
    body = ", ".join(str(c) for c in coords) if rng.random() < 0.8 else ",".join(str(c) for c in coords)
    text = rng.choice(["[{}]", "[{}]", "[{}]", "({})", "[{}", "box: [{}]", " [{}]\n", "[[{}]]", "['{}']"]).format(body)
    return text if rng.random() < 0.95 else rng.choice(["", "no box", "[0.1, 0.2, 0.3]", "[a, b, c, d]"])


def test_boxes_parse_and_score_as_vlm_evaluation():
    from models.metrics import box_iou, parse_box

    rng = random.Random(28)
    texts = [_random_box_text(rng) for _ in range(5000)]
    assert sum(ref_parse_bbox(t) is not None for t in texts) > 1000  # many valid, many not
    for text in texts:
        ours, ref = parse_box(text), ref_parse_bbox(text)
        assert (ours is None) == (ref is None), text
        if ref is not None:
            assert list(ours) == pytest.approx([float(v) for v in ref])
            truth = (0.1, 0.2, 0.6, 0.7)
            assert box_iou(ours, truth) == pytest.approx(ref_iou(ref, truth)), text


def ref_gqa(raw_prediction: str, gold: str) -> float:
    """vlm-evaluation's GQA path: GQAScorer.convert_results' cleaning, then eval.py's `predicted == gold`."""
    import string

    predicted = raw_prediction.translate(str.maketrans("", "", string.punctuation)).lower()
    return 1.0 if predicted == gold else 0.0


@pytest.mark.parametrize("prediction, gold", [
    ("Yes.", "yes"), ("T-shirt", "t-shirt"), ("yes\n", "yes"), (" left", "left"), ("Left side!", "left side"),
    ("the table", "table"), ("2", "two")])
def test_gqa_scores_as_vlm_evaluation(prediction, gold):
    out = task_rows(task="gqa", group="vl", family="gqa", chance=0.0,
                    items=[type("Item", (), {"answers": [gold]})()], outputs=[prediction])
    assert out[0]["metric"] == "exact_match" and out[0]["value"] == ref_gqa(prediction, gold)
