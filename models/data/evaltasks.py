"""Evaluation tasks from a source: the world's benchmarks, or VQA / multiple-choice JSONL files.

VQA JSONL records: `image` (a path relative to the file; optional for text-only questions),
`question`, `answers` (accepted answers) and optionally `choices` + `label` for multiple choice;
with an image the prompt is `<image>… <user> question <assistant>`, without one the question as is.
Multiple-choice JSONL records: `context`, `choices`, `label`. Each file is one task, named by the
source's `task` option (single file) or the file name. Chance is the source's `chance` option when
given (a benchmark's blind-answer rate), else a uniform guess over the choices, or for open answers
the share of the most common answer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.data import readers as rd
from models.data.errors import BadRecordError, DataError
from models.data.sources import resolve_paths, world_data
from models.data.types import EvalItem, EvalTask, chance_level, normalise_answer
from models.data.world.bench import TEXT_TASKS, VL_TASKS, build_task
from models.data.world.render import normalise

WORLD_DEFAULT_ITEMS = 200  # items per world task when n_per_task is 0


def world_tasks(source, tok, *, groups, tasks, n_per_task, image_size, image_tokens, seed) -> list[EvalTask]:
    known = VL_TASKS + TEXT_TASKS
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise DataError(f"unknown world task(s) {unknown}; known: {', '.join(known)}")
    names = [t for t in (VL_TASKS if "vl" in groups else ()) + (TEXT_TASKS if "text" in groups else ())
             if not tasks or t in tasks]
    world = world_data(source).world
    return [build_task(t, world, tok, n=n_per_task or WORLD_DEFAULT_ITEMS, image_size=image_size,
                       image_tokens=image_tokens, seed=seed) for t in names]


def _records(path: str) -> list[tuple[int, dict]]:
    out = []
    for idx, rec in rd.iter_jsonl(path):
        if isinstance(rec, BadRecordError):
            raise rec
        out.append((idx, rec))
    if not out:
        raise BadRecordError(path, -1, "empty eval file: no records")
    return out


def check_eval_file(path: str, kind: str, records: list[tuple[int, dict]] | None = None) -> int:
    """Check every record of a `vqa_jsonl` / `mc_jsonl` file, not only the ones a step samples:
    the fields each item needs and that its image file exists (images are decoded only when an
    item is built). Returns the record count; raises BadRecordError naming file and record."""
    records = _records(path) if records is None else records
    kinds = set()
    for idx, rec in records:
        if kind == "mc_jsonl":
            rd.field(rec, "context", path, idx)
            _choices(rec, path, idx)
            kinds.add("multiple_choice")
        else:
            rd.field(rec, "question", path, idx)
            kinds.add("multiple_choice" if "choices" in rec else "generate")
            if "choices" in rec:
                _choices(rec, path, idx)
            else:
                _answers(rec, path, idx)
        if rec.get("image") is not None:
            image = rd.image_path(path, rd.field(rec, "image", path, idx))
            if not image.is_file():
                raise BadRecordError(path, idx, f"image {str(image)!r} does not exist")
    if len(kinds) > 1:
        raise DataError(f"{path}: mixes multiple-choice and open-answer records; split the file")
    return len(records)


def _answers(rec, path, idx) -> list[str]:
    answers = rd.field(rec, "answers", path, idx, (list, str))
    answers = [answers] if isinstance(answers, str) else answers
    if not answers or not all(isinstance(a, str) for a in answers):
        raise BadRecordError(path, idx, "field 'answers' must be a non-empty list of strings")
    return answers


def _image(rec, path, idx, image_size):
    rel = rec.get("image")
    if rel is None:
        return None
    p = rd.image_path(path, rd.field(rec, "image", path, idx))
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise BadRecordError(path, idx, f"image {str(p)!r} unreadable ({exc.strerror})") from None
    return normalise(rd.decode_image(data, image_size, path, idx))


def _choices(rec, path, idx) -> tuple[list[str], int]:
    choices = rd.field(rec, "choices", path, idx, (list,))
    label = rd.field(rec, "label", path, idx, (int,))
    if len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise BadRecordError(path, idx, "field 'choices' must be a list of at least two strings")
    if not 0 <= label < len(choices):
        raise BadRecordError(path, idx, f"field 'label' {label} is out of range for {len(choices)} choices")
    return choices, label


def vqa_item(rec, path, idx, tok, image_size, image_tokens) -> tuple[EvalItem, str]:
    question = rd.field(rec, "question", path, idx)
    image = _image(rec, path, idx, image_size)
    # With an image, the instruction format; without, the question is a completion prompt as is.
    prompt = ([tok.image_id] * image_tokens + [tok.user_id] + tok.encode(question) + [tok.assistant_id]
              if image is not None else tok.encode(question))
    if "choices" in rec:
        choices, label = _choices(rec, path, idx)
        return EvalItem(prompt_tokens=prompt, image=image, choices=[tok.encode(c) for c in choices],
                        label=label), "multiple_choice"
    answers = _answers(rec, path, idx)
    return EvalItem(prompt_tokens=prompt, image=image, answers=[normalise_answer(a) for a in answers],
                    max_new_tokens=int(rec.get("max_new_tokens", 8))), "generate"


def mc_item(rec, path, idx, tok, image_size, image_tokens) -> tuple[EvalItem, str]:
    context = rd.field(rec, "context", path, idx)
    choices, label = _choices(rec, path, idx)
    image = _image(rec, path, idx, image_size)
    prompt = ([tok.image_id] * image_tokens if image is not None else []) + tok.encode(context)
    return EvalItem(prompt_tokens=prompt, image=image, label=label,
                    choices=[tok.encode(" " + c) for c in choices]), "multiple_choice"


def file_tasks(source, tok, *, groups, tasks, n_per_task, image_size, image_tokens, seed) -> list[EvalTask]:
    paths = resolve_paths(source)
    out = []
    for path in paths:
        name = source.option("task") if len(paths) == 1 and source.option("task") else \
            Path(path).name.split(".")[0]
        if tasks and name not in tasks:
            continue
        records = _records(path)
        check_eval_file(path, source.kind, records)  # every record, not only the sampled ones
        if n_per_task and n_per_task < len(records):
            pick = np.sort(np.random.default_rng(seed).choice(len(records), n_per_task, replace=False))
            records = [records[i] for i in pick]
        make = vqa_item if source.kind == "vqa_jsonl" else mc_item
        built = [make(rec, path, idx, tok, image_size, image_tokens) for idx, rec in records]
        kinds = {k for _, k in built}
        if len(kinds) > 1:
            raise DataError(f"{path}: mixes multiple-choice and open-answer records; split the file")
        items = [it for it, _ in built]
        group = "vl" if any(it.image is not None for it in items) else "text"
        if group in groups:
            kind = kinds.pop()
            chance = source.option("chance")
            out.append(EvalTask(name=name, group=group, kind=kind, items=items,
                                chance=chance_level(kind, items) if chance is None else float(chance)))
    return out
