"""Benchmark metrics as the benchmarks define them: pure functions over predictions, no torch.

A task's `metric` names a scoring family; each family writes one evals row per metric it defines,
and exactly one of them (the family's first unless the study picks another) is the task's
*primary* metric, the one its stable score (value − chance) is taken from:

- `multiple_choice` — `acc` (highest summed log-likelihood) and `acc_norm` (log-likelihood divided
  by the choice's length in characters), as lm-evaluation-harness computes them.
- `pope` — yes/no as two choices scored by log-likelihood (as Prismatic's evaluation does):
  `acc`, then `f1`, `precision`, `recall` with "yes" the positive class, and `yes_ratio`.
- `vqa` — VQAv2 soft accuracy (`vqa_accuracy`): for each annotator left out, min(matches among the
  others / 3, 1), averaged; normalised as vlm-evaluation's VQAv2 evaluator does (`models.vqa_scores`).
- `textvqa` — the same soft accuracy, normalised as vlm-evaluation's TextVQA (M4C) evaluator does.
- `vizwiz` — `vqa_accuracy` as Prismatic's VizWiz evaluator computes it, plus `unanswerable_f1`
  (answering "unanswerable" as a detector of the questions the annotators marked unanswerable).
- `gqa` — GQA as vlm-evaluation scores it (`exact_match`): the prediction with punctuation removed
  and lower-cased must equal the annotated answer as written (no stripping of spaces).
- `exact_match` — a lenient exact match (the built-in world's, and the default for open answers):
  both sides lower-cased, punctuation removed, spaces collapsed.
- `refexp` — RefCOCO / RefCOCO+ / RefCOCOg: the generated text must be a Python list literal
  [x1, y1, x2, y2] in [0, 1] (vlm-evaluation's parser); `acc_iou50` counts it correct at IoU ≥ 0.5
  with the true box, anything else wrong. `ocid_ref` — OCID-Ref, the same at IoU ≥ 0.25 (`acc_iou25`).
"""

from __future__ import annotations

import ast
import string
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from models.vqa_scores import normalize_vizwiz_answer, textvqa_accuracy, vizwiz_accuracy, vqav2_accuracy


@dataclass(frozen=True, kw_only=True, slots=True)
class Family:
    kind: str  # multiple_choice (scored by log-likelihood) | generate (greedy decoding)
    metrics: tuple[str, ...]  # evals rows it writes; the first is the default primary metric


FAMILIES: dict[str, Family] = {
    "multiple_choice": Family(kind="multiple_choice", metrics=("acc", "acc_norm")),
    "pope": Family(kind="multiple_choice", metrics=("acc", "f1", "precision", "recall", "yes_ratio")),
    "vqa": Family(kind="generate", metrics=("vqa_accuracy",)),
    "textvqa": Family(kind="generate", metrics=("vqa_accuracy",)),
    "vizwiz": Family(kind="generate", metrics=("vqa_accuracy", "unanswerable_f1")),
    "exact_match": Family(kind="generate", metrics=("exact_match",)),
    "gqa": Family(kind="generate", metrics=("exact_match",)),
    "refexp": Family(kind="generate", metrics=("acc_iou50",)),
    "ocid_ref": Family(kind="generate", metrics=("acc_iou25",)),
}
VQA_SCORERS = {"vqa": vqav2_accuracy, "textvqa": textvqa_accuracy, "vizwiz": vizwiz_accuracy}
IOU_THRESHOLDS = {"refexp": ("acc_iou50", 0.5), "ocid_ref": ("acc_iou25", 0.25)}
METRIC_NAMES = tuple(dict.fromkeys(m for f in FAMILIES.values() for m in f.metrics))
UNANSWERABLE = "unanswerable"  # VizWiz's answer for a question the picture cannot answer
vqa_accuracy = vqav2_accuracy  # the VQAv2 scorer under its metric's name

def clean_exact(text: str) -> str:
    """GQA's comparison form: punctuation removed, lower case, single spaces."""
    return " ".join(text.translate(str.maketrans("", "", string.punctuation)).lower().split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    pred = clean_exact(prediction)
    return float(any(clean_exact(a) == pred for a in answers))


def gqa_match(prediction: str, answers: Sequence[str]) -> float:
    """vlm-evaluation's GQA rule: punctuation out of the prediction, lower case, equal to the answer."""
    pred = prediction.translate(str.maketrans("", "", string.punctuation)).lower()
    return float(any(a == pred for a in answers))


def binary_scores(predicted: Sequence[bool], actual: Sequence[bool]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (positive = True) and the share predicted positive."""
    p, a = np.asarray(predicted, dtype=bool), np.asarray(actual, dtype=bool)
    tp, fp, fn = int((p & a).sum()), int((p & ~a).sum()), int((~p & a).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"acc": float((p == a).mean()) if len(p) else 0.0, "precision": precision, "recall": recall,
            "f1": f1, "yes_ratio": float(p.mean()) if len(p) else 0.0}


def mc_predictions(logliks: Sequence[float], lengths: Sequence[int]) -> tuple[int, int]:
    """(argmax of log-likelihood, argmax of log-likelihood per character); ties go to the first."""
    ll = np.asarray(logliks, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):  # an empty choice: ll / 0, as lm-eval divides
        normed = ll / np.asarray(lengths, dtype=np.float64)
    return int(np.argmax(ll)), int(np.argmax(normed))


def parse_box(text: str) -> tuple[float, float, float, float] | None:
    """The box of generated text as vlm-evaluation parses it: the whole text a Python literal, a list
    of four numbers in [0, 1] with x1 < x2 and y1 < y2; anything else is None (scored wrong)."""
    try:
        box = ast.literal_eval(text)
        if not (isinstance(box, list) and len(box) == 4 and all(0 <= v <= 1 for v in box)
                and box[0] < box[2] and box[1] < box[3]):
            return None
    except (ValueError, SyntaxError, TypeError):
        return None
    return tuple(float(v) for v in box)  # type: ignore[return-value]


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two [x1, y1, x2, y2] boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# --- per task: predictions → metric values → evals rows -----------------------------------------

def _choice_lengths(item: Any) -> list[int]:
    texts = getattr(item, "choice_texts", None) or []
    return [len(t) for t in texts] if texts else [len(c) for c in item.choices]


def _yes_index(item: Any) -> int:
    texts = [t.strip().lower() for t in (getattr(item, "choice_texts", None) or [])]
    if sorted(texts) != ["no", "yes"]:
        raise ValueError(f"a pope item's choices must be 'yes' and 'no', got {texts}")
    return texts.index("yes")


def _score_mc(family: str, items: Sequence[Any], logliks: Sequence[Sequence[float]]) -> dict[str, float]:
    preds = [mc_predictions(ll, _choice_lengths(it)) for ll, it in zip(logliks, items)]
    if family == "pope":
        yes = [_yes_index(it) for it in items]
        return binary_scores([p == y for (p, _), y in zip(preds, yes)],
                             [it.label == y for it, y in zip(items, yes)])
    return {"acc": float(np.mean([p == it.label for (p, _), it in zip(preds, items)])),
            "acc_norm": float(np.mean([q == it.label for (_, q), it in zip(preds, items)]))}


def _score_generated(family: str, items: Sequence[Any], texts: Sequence[str]) -> dict[str, float]:
    if family in VQA_SCORERS:
        score = VQA_SCORERS[family]
        out = {"vqa_accuracy": float(np.mean([score(t, it.answers) for t, it in zip(texts, items)]))}
        if family == "vizwiz":
            said = [normalize_vizwiz_answer(t) == UNANSWERABLE for t in texts]
            truth = [getattr(it, "answerable", True) is False for it in items]
            out["unanswerable_f1"] = binary_scores(said, truth)["f1"]
        return out
    if family in ("exact_match", "gqa"):
        match = gqa_match if family == "gqa" else exact_match
        return {"exact_match": float(np.mean([match(t, it.answers) for t, it in zip(texts, items)]))}
    metric, threshold = IOU_THRESHOLDS[family]
    hits = [(box := parse_box(t)) is not None and box_iou(box, it.box) >= threshold
            for t, it in zip(texts, items)]
    return {metric: float(np.mean(hits))}


def primary_metric(family: str, chosen: str | None = None) -> str:
    """The metric a task's stable score uses: `chosen` (the study's) if the family has it, else its first."""
    metrics = FAMILIES[family].metrics
    if chosen is not None and chosen not in metrics:
        raise ValueError(f"metric {chosen!r} is not one that a {family!r} task reports "
                         f"({', '.join(metrics)})")
    return chosen or metrics[0]


def task_rows(*, task: str, group: str, family: str, chance: float, items: Sequence[Any],
              outputs: Sequence[Any], stable_metric: str | None = None) -> list[dict[str, Any]]:
    """One evals row per metric of the family; `outputs` are per-choice log-likelihoods (multiple
    choice) or decoded texts (generation), one per item. `primary_metric` marks the stable-score row."""
    if family not in FAMILIES:
        raise ValueError(f"unknown metric {family!r}; known: {', '.join(FAMILIES)}")
    primary_metric(family, stable_metric)  # a bad choice fails before any scoring
    n = len(items)
    if n == 0:
        values = {m: 0.0 for m in FAMILIES[family].metrics}
    elif FAMILIES[family].kind == "multiple_choice":
        values = _score_mc(family, items, outputs)
    else:
        values = _score_generated(family, items, outputs)
    return metric_rows(task=task, group=group, family=family, chance=chance, n=n, values=values,
                       stable_metric=stable_metric)


def metric_rows(*, task: str, group: str, family: str, chance: float, n: int, values: dict[str, float],
                stable_metric: str | None = None) -> list[dict[str, Any]]:
    """The evals rows of a task whose metric values are computed (here, or by lm-evaluation-harness)."""
    primary = primary_metric(family, stable_metric)
    return [{"task": task, "group": group, "metric": m, "value": float(values[m]), "chance": float(chance),
             "n": n, "primary_metric": m == primary} for m in FAMILIES[family].metrics]
