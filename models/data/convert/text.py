"""Multiple-choice text benchmarks from their published JSONL into the project's `mc_jsonl` records.

Prompts and choices follow lm-evaluation-harness's task definitions, so `acc` and `acc_norm` mean
what they mean there: ARC and PIQA ask "Question: …\\nAnswer:", HellaSwag continues its
preprocessed context. The generic converter maps any JSONL's fields. Chance is a blind guess's
expected accuracy (the mean of 1 / number of choices), the "random baseline" of DCLM's core tasks.
"""

from __future__ import annotations

import re

from models.data.convert.common import ConvertError, dig, need, read_jsonl, uniform_chance


def _record(context: str, choices: list, label: int, path, where: str) -> dict:
    if len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise ConvertError(path, where, "needs at least two choices, each a string")
    if not 0 <= label < len(choices):
        raise ConvertError(path, where, f"label {label} is out of range for {len(choices)} choices")
    return {"context": context, "choices": choices, "label": label, "metric": "multiple_choice"}


def _with_chance(records: list[dict], chance: float | None = None) -> list[dict]:
    value = uniform_chance(records) if chance is None and records else chance
    return [r | {"chance": value} for r in records]


def arc(*, file: str) -> list[dict]:
    """ARC (Easy or Challenge): AI2's JSONL ({question: {stem, choices: [{text, label}]}, answerKey})
    or the Hugging Face layout ({question, choices: {text: [...], label: [...]}, answerKey})."""
    records = []
    for number, rec in read_jsonl(file):
        where = f"line {number}"
        q = rec.get("question")
        if isinstance(q, dict):  # AI2's layout
            stem = need(q, "stem", file, where)
            opts = need(q, "choices", file, where, list)
            texts = [need(o, "text", file, where) for o in opts]
            labels = [need(o, "label", file, where) for o in opts]
        else:
            stem = need(rec, "question", file, where)
            texts = dig(rec, "choices.text", file, where, list)
            labels = dig(rec, "choices.label", file, where, list)
        key = need(rec, "answerKey", file, where)
        if key not in labels:
            raise ConvertError(file, where, f"answerKey {key!r} is not one of the choice labels {labels}")
        records.append(_record(f"Question: {stem}\nAnswer:", texts, labels.index(key), file, where))
    return _with_chance(records)


def _hellaswag_text(text: str) -> str:
    """lm-evaluation-harness's HellaSwag cleanup: WikiHow's [title] marks and other [tags] go."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def hellaswag(*, file: str) -> list[dict]:
    """HellaSwag's JSONL (activity_label, ctx_a, ctx_b, endings, label)."""
    records = []
    for number, rec in read_jsonl(file):
        where = f"line {number}"
        ctx = need(rec, "ctx_a", file, where) + " " + need(rec, "ctx_b", file, where).capitalize()
        label = need(rec, "label", file, where, (int, str))
        if isinstance(label, str) and not label.isdigit():
            raise ConvertError(file, where, f"field 'label' must be a choice index, got {label!r}")
        endings = need(rec, "endings", file, where, list)
        if not all(isinstance(e, str) for e in endings):
            raise ConvertError(file, where, "field 'endings' must be a list of strings")
        records.append(_record(_hellaswag_text(need(rec, "activity_label", file, where) + ": " + ctx),
                               [_hellaswag_text(e) for e in endings], int(label), file, where))
    return _with_chance(records)


def _labels_file(path: str) -> list[int]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError as exc:
        raise ConvertError(path, "<file>", f"cannot read ({exc.strerror})") from None
    for number, line in enumerate(lines, 1):
        if line not in ("0", "1"):
            raise ConvertError(path, f"line {number}", f"a PIQA label is 0 or 1, got {line!r}")
    return [int(v) for v in lines]


def piqa(*, file: str, labels: str | None = None) -> list[dict]:
    """PIQA's JSONL (goal, sol1, sol2) with its labels file (one 0/1 per line), or `label` fields."""
    given = _labels_file(labels) if labels else None
    records = []
    for i, (number, rec) in enumerate(read_jsonl(file)):
        where = f"line {number}"
        if given is not None:
            if i >= len(given):
                raise ConvertError(labels, f"line {i + 1}", f"missing: {file} has more records than labels")
            label = given[i]
        else:
            label = need(rec, "label", file, where, int)
        choices = [need(rec, "sol1", file, where), need(rec, "sol2", file, where)]
        records.append(_record(f"Question: {need(rec, 'goal', file, where)}\nAnswer:", choices, label,
                               file, where))
    if given is not None and len(given) != len(records):
        raise ConvertError(labels, "<file>", f"has {len(given)} labels for {len(records)} records")
    return _with_chance(records)


def generic_mc(*, file: str, context: str, choices: str, label: str, chance: float | None = None) -> list[dict]:
    """Any multiple-choice JSONL: `context`, `choices` and `label` name its fields (dotted paths
    reach into objects); the label is a choice's index or its text."""
    records = []
    for number, rec in read_jsonl(file):
        where = f"line {number}"
        options = dig(rec, choices, file, where, list)
        gold = dig(rec, label, file, where, (int, str))
        if isinstance(gold, str):
            if gold in options:
                gold = options.index(gold)
            elif gold.isdigit():
                gold = int(gold)
            else:
                raise ConvertError(file, where, f"label {gold!r} is neither a choice nor an index")
        records.append(_record(dig(rec, context, file, where), options, gold, file, where))
    return _with_chance(records, chance)
