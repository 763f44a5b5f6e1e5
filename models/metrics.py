"""Benchmark metrics as the benchmarks define them: pure functions over predictions, no torch.

A task's `metric` names a scoring family; each family writes one evals row per metric it defines,
and exactly one of them (the family's first unless the study picks another) is the task's
*primary* metric, the one its stable score (value − chance) is taken from:

- `multiple_choice` — `acc` (highest summed log-likelihood) and `acc_norm` (log-likelihood divided
  by the choice's length in characters), as lm-evaluation-harness computes them.
- `pope` — yes/no as two choices scored by log-likelihood (as Prismatic's evaluation does):
  `acc`, then `f1`, `precision`, `recall` with "yes" the positive class, and `yes_ratio`.
- `vqa` — VQAv2 / TextVQA soft accuracy (`vqa_accuracy`): min(#annotators who gave the answer / 3, 1)
  averaged over the 10 choose 9 annotator subsets, after the official answer normalisation.
- `vizwiz` — `vqa_accuracy`, plus `unanswerable_f1` (answering "unanswerable" as a detector of the
  questions the annotators marked unanswerable).
- `exact_match` — GQA: the answer equals an accepted one after lower-casing and removing punctuation.
- `refexp` — RefCOCO / OCID-Ref: a box [x1, y1, x2, y2] (normalised to [0, 1]) written as text;
  `acc_iou50` counts it correct at IoU ≥ 0.5 with the true box, anything unparsable wrong.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


@dataclass(frozen=True, kw_only=True, slots=True)
class Family:
    kind: str  # multiple_choice (scored by log-likelihood) | generate (greedy decoding)
    metrics: tuple[str, ...]  # evals rows it writes; the first is the default primary metric


FAMILIES: dict[str, Family] = {
    "multiple_choice": Family(kind="multiple_choice", metrics=("acc", "acc_norm")),
    "pope": Family(kind="multiple_choice", metrics=("acc", "f1", "precision", "recall", "yes_ratio")),
    "vqa": Family(kind="generate", metrics=("vqa_accuracy",)),
    "vizwiz": Family(kind="generate", metrics=("vqa_accuracy", "unanswerable_f1")),
    "exact_match": Family(kind="generate", metrics=("exact_match",)),
    "refexp": Family(kind="generate", metrics=("acc_iou50",)),
}
METRIC_NAMES = tuple(dict.fromkeys(m for f in FAMILIES.values() for m in f.metrics))
UNANSWERABLE = "unanswerable"  # VizWiz's answer for a question the picture cannot answer
IOU_THRESHOLD = 0.5

# --- the official VQA answer normalisation (GT-Vision-Lab vqaEval.py, also EvalAI's) ------------

_CONTRACTIONS = dict(pair.split(":") for pair in """
aint:ain't arent:aren't cant:can't couldve:could've couldnt:couldn't couldn'tve:couldn't've
couldnt've:couldn't've didnt:didn't doesnt:doesn't dont:don't hadnt:hadn't hadnt've:hadn't've
hadn'tve:hadn't've hasnt:hasn't havent:haven't hed:he'd hed've:he'd've he'dve:he'd've hes:he's
howd:how'd howll:how'll hows:how's Id've:I'd've I'dve:I'd've Im:I'm Ive:I've isnt:isn't itd:it'd
itd've:it'd've it'dve:it'd've itll:it'll let's:let's maam:ma'am mightnt:mightn't
mightnt've:mightn't've mightn'tve:mightn't've mightve:might've mustnt:mustn't mustve:must've
neednt:needn't notve:not've oclock:o'clock oughtnt:oughtn't ow's'at:'ow's'at 'ows'at:'ow's'at
'ow'sat:'ow's'at shant:shan't shed've:she'd've she'dve:she'd've she's:she's shouldve:should've
shouldnt:shouldn't shouldnt've:shouldn't've shouldn'tve:shouldn't've somebody'd:somebodyd
somebodyd've:somebody'd've somebody'dve:somebody'd've somebodyll:somebody'll somebodys:somebody's
someoned:someone'd someoned've:someone'd've someone'dve:someone'd've someonell:someone'll
someones:someone's somethingd:something'd somethingd've:something'd've something'dve:something'd've
somethingll:something'll thats:that's thered:there'd thered've:there'd've there'dve:there'd've
therere:there're theres:there's theyd:they'd theyd've:they'd've they'dve:they'd've theyll:they'll
theyre:they're theyve:they've twas:'twas wasnt:wasn't wed've:we'd've we'dve:we'd've weve:we've
werent:weren't whatll:what'll whatre:what're whats:what's whatve:what've whens:when's whered:where'd
wheres:where's whereve:where've whod:who'd whod've:who'd've who'dve:who'd've wholl:who'll whos:who's
whove:who've whyll:why'll whyre:why're whys:why's wont:won't wouldve:would've wouldnt:wouldn't
wouldnt've:wouldn't've wouldn'tve:wouldn't've yall:y'all yall'll:y'all'll y'allll:y'all'll
yall'd've:y'all'd've y'alld've:y'all'd've y'all'dve:y'all'd've youd:you'd youd've:you'd've
you'dve:you'd've youll:you'll youre:you're youve:you've""".split())
_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten".split())} | {"none": "0"}
_ARTICLES = frozenset({"a", "an", "the"})
_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
          ",", "?", "!")
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
# The official pattern `(?!<=\d)(\.)(?!\d)` means to spare decimal points; its first group is a
# lookahead, not a lookbehind, so in effect it drops every period not followed by a digit.
_PERIOD = re.compile(r"\.(?!\d)")


def _punctuation(text: str) -> str:
    """Drop a mark where it touches a space (or the text has a 1,000-style number), else space it."""
    out, joined_number = text, _COMMA_IN_NUMBER.search(text) is not None
    for p in _PUNCT:
        out = out.replace(p, "" if (p + " " in text or " " + p in text or joined_number) else " ")
    return _PERIOD.sub("", out)


def _digits_articles(text: str) -> str:
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def normalize_vqa_answer(text: str) -> str:
    """The VQA evaluation's answer normalisation: punctuation, number words, articles, contractions."""
    return _digits_articles(_punctuation(text.replace("\n", " ").replace("\t", " ").strip()))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA soft accuracy of one prediction against the annotators' answers (duplicates kept).

    For each annotator left out in turn, min(matches among the others / 3, 1); the mean over them.
    Both sides are normalised (EvalAI's evaluator; the released annotations are already normal).
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one annotator answer")
    pred = normalize_vqa_answer(prediction)
    same = [normalize_vqa_answer(a) == pred for a in answers]
    hits = sum(same)
    return float(np.mean([min(1.0, (hits - s) / 3.0) for s in same]))


def clean_exact(text: str) -> str:
    """GQA's comparison form: punctuation removed, lower case, single spaces."""
    return " ".join(text.translate(str.maketrans("", "", string.punctuation)).lower().split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    pred = clean_exact(prediction)
    return float(any(clean_exact(a) == pred for a in answers))


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
    return int(np.argmax(ll)), int(np.argmax(ll / np.maximum(np.asarray(lengths, dtype=np.float64), 1.0)))


_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)"
_BOX = re.compile(rf"\[({_NUMBER}),({_NUMBER}),({_NUMBER}),({_NUMBER})\]")


def parse_box(text: str) -> tuple[float, float, float, float] | None:
    """`[x1, y1, x2, y2]` in [0, 1] with x1 < x2, y1 < y2 from generated text (spaces ignored), else None."""
    m = _BOX.search("".join(text.split()))
    if m is None:
        return None
    x1, y1, x2, y2 = (float(g) for g in m.groups())
    if not (all(0.0 <= v <= 1.0 for v in (x1, y1, x2, y2)) and x1 < x2 and y1 < y2):
        return None
    return x1, y1, x2, y2


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
    if family in ("vqa", "vizwiz"):
        out = {"vqa_accuracy": float(np.mean([vqa_accuracy(t, it.answers) for t, it in zip(texts, items)]))}
        if family == "vizwiz":
            said = [normalize_vqa_answer(t) == UNANSWERABLE for t in texts]
            truth = [getattr(it, "answerable", True) is False for it in items]
            out["unanswerable_f1"] = binary_scores(said, truth)["f1"]
        return out
    if family == "exact_match":
        return {"exact_match": float(np.mean([exact_match(t, it.answers) for t, it in zip(texts, items)]))}
    hits = [(box := parse_box(t)) is not None and box_iou(box, it.box) >= IOU_THRESHOLD
            for t, it in zip(texts, items)]
    return {"acc_iou50": float(np.mean(hits))}


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
