"""The benchmark metrics against worked examples from the benchmarks' own documented rules."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from models.metrics import (
    FAMILIES,
    binary_scores,
    box_iou,
    exact_match,
    mc_predictions,
    parse_box,
    primary_metric,
    task_rows,
    vqa_accuracy,
)
from models.vqa_scores import normalize_vqa_answer


@pytest.mark.parametrize("raw, norm", [
    ("Two", "2"), ("none", "0"), ("ten dogs", "10 dogs"),  # number words become digits
    ("the dog.", "dog"), ("A cat", "cat"), ("an apple", "apple"),  # articles and periods go
    ("dont", "don't"), ("isnt", "isn't"), ("whats", "what's"),  # missing apostrophes restored
    ("yes!", "yes"), ("red, white", "red white"),  # a mark touching a space is dropped
    ("black/white", "black white"), ("t-shirt", "t shirt"),  # a mark inside a word becomes a space
    ("1,000", "1000"), ("3.5", "3.5"), ("2.", "2"),  # 1,000-style numbers join; decimals stay
    ("  Yes\n", "yes"), ("left\tside", "left side"),
])
def test_vqa_normalisation_follows_the_official_rules(raw, norm):
    assert normalize_vqa_answer(raw) == norm


@pytest.mark.parametrize("matches, accuracy", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_averages_the_ten_choose_nine_subsets(matches, accuracy):
    # "an answer is 100% accurate if at least 3 humans gave it"; averaged over the 10 subsets of 9
    # annotators: with 2 matching answers, 8 subsets hold both (2/3) and 2 hold one (1/3): 0.6.
    answers = ["cat"] * matches + ["dog"] * (10 - matches)
    assert vqa_accuracy("Cat.", answers) == pytest.approx(accuracy)


def test_vqa_accuracy_strips_only_punctuation_from_the_annotators_answers():
    # vlm-evaluation's VQAv2 evaluator: "two" and "2 " stay as annotated, so only the two "2" match
    assert vqa_accuracy("2", ["two", "Two", "2 ", "2", "2"] + ["x"] * 5) == pytest.approx(0.6)
    with pytest.raises(ValueError):
        vqa_accuracy("2", [])


def test_gqa_exact_match_ignores_case_and_punctuation():
    assert exact_match("Yes.", ["yes"]) == 1.0
    assert exact_match("t-shirt", ["T-Shirt"]) == 1.0
    assert exact_match("left", ["right"]) == 0.0
    assert exact_match("the table", ["table"]) == 0.0  # no article stripping: GQA is exact


def test_pope_confusion_counts():
    # predicted yes, yes, no, no, yes against truth yes, no, no, yes, yes: TP 2, FP 1, FN 1, TN 1
    s = binary_scores([True, True, False, False, True], [True, False, False, True, True])
    assert s == pytest.approx({"acc": 0.6, "precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "yes_ratio": 0.6})
    never = binary_scores([False] * 4, [True, False, True, False])
    assert never["f1"] == 0.0 and never["precision"] == 0.0 and never["acc"] == 0.5


def test_acc_norm_divides_by_the_choice_length_in_characters():
    # lm-evaluation-harness: pred = argmax(ll), pred_norm = argmax(ll / len(choice string))
    assert mc_predictions([-4.0, -6.0], [len("no"), len("absolutely")]) == (0, 1)
    assert mc_predictions([-3.0, -3.0], [3, 3]) == (0, 0)  # ties go to the first choice
    # an empty choice string: lm-eval divides by 0 (-inf, never picked; nan when ll is 0: picked)
    assert mc_predictions([-1.0, -5.0], [0, 5]) == (0, 1)
    assert mc_predictions([-5.0, 0.0], [5, 0]) == (1, 1)


def test_boxes_parse_from_generated_text_and_score_by_iou():
    assert parse_box("[0.1, 0.2, 0.5, 0.6]") == (0.1, 0.2, 0.5, 0.6)
    assert parse_box("[0, 0.2, 1, 0.6]") == (0.0, 0.2, 1.0, 0.6)
    # vlm-evaluation's parser: the whole text one list literal; anything around it, or a tuple, fails
    assert parse_box("box: [0.1, 0.2, 0.5, 0.6]") is None and parse_box("(0.1, 0.2, 0.5, 0.6)") is None
    assert parse_box("[ 0 . 1 , 0 . 2 , 0 . 5 , 0 . 6 ]") is None and parse_box("['a', 0, 1, 1]") is None
    assert parse_box("[0.5, 0.2, 0.1, 0.6]") is None and parse_box("[0.1, 0.2, 1.5, 0.6]") is None
    assert parse_box("no box") is None
    assert box_iou([0, 0, 1, 0.5], [0, 0, 1, 1]) == pytest.approx(0.5)
    assert box_iou([0, 0, 0.5, 0.5], [0.25, 0, 0.75, 0.5]) == pytest.approx(1 / 3)
    assert box_iou([0, 0, 0.1, 0.1], [0.5, 0.5, 1, 1]) == 0.0


def _mc(label, texts):
    return SimpleNamespace(label=label, choice_texts=texts, choices=[[0]] * len(texts))


def test_task_rows_mark_one_primary_metric_per_task():
    items = [_mc(1, ["no", "absolutely"]), _mc(0, ["yes", "no"])]
    outputs = [[-4.0, -6.0], [-1.0, -2.0]]
    rows = task_rows(task="t", group="text", family="multiple_choice", chance=0.5, items=items, outputs=outputs)
    assert {r["metric"]: (r["value"], r["primary_metric"]) for r in rows} == {
        "acc": (0.5, True), "acc_norm": (1.0, False)}
    chosen = task_rows(task="t", group="text", family="multiple_choice", chance=0.5, items=items,
                       outputs=outputs, stable_metric="acc_norm")
    assert [r["metric"] for r in chosen if r["primary_metric"]] == ["acc_norm"]
    with pytest.raises(ValueError, match="not one that a 'multiple_choice' task reports"):
        primary_metric("multiple_choice", "vqa_accuracy")


def test_pope_rows_score_yes_no_choices():
    items = [_mc(0, ["yes", "no"]), _mc(1, ["yes", "no"]), _mc(1, ["yes", "no"]), _mc(0, ["yes", "no"])]
    outputs = [[-1, -2], [-1, -2], [-2, -1], [-2, -1]]  # predicted yes, yes, no, no
    rows = {r["metric"]: r for r in task_rows(task="pope_random", group="vl", family="pope", chance=0.5,
                                              items=items, outputs=outputs)}
    assert rows["acc"]["value"] == 0.5 and rows["acc"]["primary_metric"]
    assert rows["f1"]["value"] == pytest.approx(0.5) and rows["yes_ratio"]["value"] == 0.5
    assert set(rows) == set(FAMILIES["pope"].metrics)


def test_vizwiz_rows_count_unanswerable_answers():
    items = [SimpleNamespace(answers=["unanswerable"] * 10, answerable=False),
             SimpleNamespace(answers=["red"] * 10, answerable=True)]
    rows = {r["metric"]: r["value"] for r in task_rows(task="vizwiz", group="vl", family="vizwiz", chance=0.0,
                                                       items=items, outputs=["Unanswerable.", "blue"])}
    assert rows == {"vqa_accuracy": 0.5, "unanswerable_f1": 1.0}


def test_refexp_rows_count_boxes_at_iou_half():
    items = [SimpleNamespace(box=(0.0, 0.0, 1.0, 1.0)), SimpleNamespace(box=(0.0, 0.0, 0.5, 0.5))]
    rows = task_rows(task="refcoco", group="vl", family="refexp", chance=0.0, items=items,
                     outputs=["[0, 0, 1, 0.5]", "[0.25, 0, 0.75, 0.5]"])
    assert [(r["metric"], r["value"]) for r in rows] == [("acc_iou50", 0.5)]
