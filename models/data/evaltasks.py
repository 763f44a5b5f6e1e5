"""Evaluation tasks from a source: the world's benchmarks, or VQA / multiple-choice JSONL files.

VQA JSONL records: `image` (a path relative to the file; optional for text-only questions) and
`question`, then either `answers` (the annotators' answers), `choices` + `label` (scored by
log-likelihood), or `box` ([x1, y1, x2, y2] in [0, 1], a referring expression's target); with an
image the prompt is `<image>… <user> template(question) <assistant>`, without one the templated
question as is (`models.data.prompts`: the study's template for the task, else the file's, else for
a record with an image vlm-evaluation's template for its metric family). Generated answers stop after
the record's `max_new_tokens` (default 128).
Multiple-choice JSONL records: `context`, `choices`, `label` (each choice follows a space).

Every record may carry `metric` (a family of `models.metrics.FAMILIES`; default `exact_match` for
open answers, `refexp` for boxes, `multiple_choice` for choices), `chance` and `prompt` (a template
that replaces the family's); all records of a file must agree, and the `vlmsweep convert`
converters write metric and chance. Each file is one task, named by the source's `task` option
(single file) or the file name; its group is the source's `group` option, else VL when its records
have images. Chance is the source's `chance` option, else the records',
else a uniform guess over the choices, or for open answers the share of the most common answer.
"""

from __future__ import annotations

import dataclasses
import glob
from pathlib import Path

import numpy as np

from models.data import files
from models.data import prompts as pr
from models.data import readers as rd
from models.data.errors import BadRecordError, DataError
from models.data.sources import resolve_paths
from models.data.types import EvalItem, EvalTask, chance_level
from models.data.world.bench import TEXT_TASKS, VL_TASKS, build_task
from models.data.world.entities import make_world, world_identity
from models.data.world.render import normalise
from models.metrics import FAMILIES

WORLD_DEFAULT_ITEMS = 200  # items per world task when n_per_task is 0
GROUPS = ("vl", "text")


def world_tasks(source, tok, *, groups, tasks, n_per_task, image_size, image_tokens, seed) -> list[EvalTask]:
    known = VL_TASKS + TEXT_TASKS
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise DataError(f"unknown world task(s) {unknown}; known: {', '.join(known)}")
    names = [t for t in (VL_TASKS if "vl" in groups else ()) + (TEXT_TASKS if "text" in groups else ())
             if not tasks or t in tasks]
    key = (world_identity(source), type(tok).__name__, tok.vocab_size, n_per_task or WORLD_DEFAULT_ITEMS,
           image_size, image_tokens, seed)
    # A copy of each task (the study's chance override is set on it); its items are only read.
    return [dataclasses.replace(_world_task(t, key, tok)) for t in names]


_WORLD_TASKS: dict[tuple, EvalTask] = {}
WORLD_TASKS_KEPT = 64  # tasks kept per process (~13 per eval step)


def _world_task(name: str, key: tuple, tok) -> EvalTask:
    """World task `name`, built once per worker process: the demo's evals of one seed all ask the
    same items, and drawing them is ~3 s of a VL eval's ~10 s of CPU. `key` identifies `tok`."""
    if (name, key) not in _WORLD_TASKS:
        if len(_WORLD_TASKS) >= WORLD_TASKS_KEPT:
            _WORLD_TASKS.clear()
        identity, _, _, n, image_size, image_tokens, seed = key
        _WORLD_TASKS[name, key] = build_task(name, make_world(*identity), tok, n=n, image_size=image_size,
                                             image_tokens=image_tokens, seed=seed)
    return _WORLD_TASKS[name, key]


def task_name(source, path: str, n_paths: int) -> str:
    """A file's task name: the source's `task` option for a single file, else the file's stem."""
    return source.option("task") if n_paths == 1 and source.option("task") else Path(path).name.split(".")[0]


def declared_task_names(source) -> list[str] | None:
    """The task names a source holds, from its description alone (None: a glob matches nothing yet)."""
    if source.kind == "world":
        return list(VL_TASKS + TEXT_TASKS)
    paths: list[str] = []
    for p in source.paths:
        matches = [m for n in files.expand(p)
                   for m in (sorted(glob.glob(n)) if any(c in n for c in files.GLOB_CHARS) else [n])]
        if not matches:
            return None
        paths += matches
    paths = list(dict.fromkeys(paths))
    return [task_name(source, p, len(paths)) for p in paths]


def _records(path: str) -> list[tuple[int, dict]]:
    out = []
    for idx, rec in rd.iter_jsonl(path):
        if isinstance(rec, BadRecordError):
            raise rec
        out.append((idx, rec))
    if not out:
        raise BadRecordError(path, -1, "empty eval file: no records")
    return out


def image_roots(source) -> dict:
    """The source's image confinement, as `check_eval_file`, `vqa_item` and `mc_item` take it."""
    return {"image_root": source.option("image_root"),
            "allow_outside_root": bool(source.option("allow_outside_root", False))}


def _image_path(rec, path, idx, image_root: str | None, allow_outside_root: bool) -> str:
    """An eval record's image: relative to the eval file (as `vlmsweep convert` writes it), inside
    the source's `image_root` (default: the eval file's folder) unless `allow_outside_root`."""
    folder = files.parent(path)
    return files.image_file(rd.field(rec, "image", path, idx), path, idx, base=folder,
                            root=image_root or folder, allow_outside=allow_outside_root)


def _image(rec, path, idx, image_size, image_root=None, allow_outside_root=False):
    if rec.get("image") is None:
        return None
    p = _image_path(rec, path, idx, image_root, allow_outside_root)
    try:
        data = Path(p).read_bytes()
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


def _box(rec, path, idx) -> tuple[float, float, float, float]:
    box = rd.field(rec, "box", path, idx, (list,))
    ok = len(box) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
    if not ok or not (all(0 <= v <= 1 for v in box) and box[0] < box[2] and box[1] < box[3]):
        raise BadRecordError(path, idx, "field 'box' must be [x1, y1, x2, y2] in [0, 1] with x1 < x2, y1 < y2")
    return tuple(float(v) for v in box)  # type: ignore[return-value]


def _family(rec, path, idx, default: str, kind: str) -> str:
    family = rec.get("metric", default)
    if family not in FAMILIES or FAMILIES[family].kind != kind:
        fits = [f for f, spec in FAMILIES.items() if spec.kind == kind]
        raise BadRecordError(path, idx, f"field 'metric' {family!r} does not fit this record; use one of "
                                        f"{', '.join(fits)}")
    return family


def _vqa_fields(rec, path, idx) -> tuple[str, dict, str]:
    """A VQA record's question, its scoring fields (EvalItem's keywords) and its metric family,
    checked without reading its image."""
    question = rd.field(rec, "question", path, idx)
    if "choices" in rec:
        choices, label = _choices(rec, path, idx)
        return question, {"choice_texts": choices, "label": label}, \
            _family(rec, path, idx, "multiple_choice", "multiple_choice")
    if "box" in rec:
        family = _family(rec, path, idx, "refexp", "generate")
        return question, {"box": _box(rec, path, idx),
                          "max_new_tokens": int(rec.get("max_new_tokens", pr.MAX_NEW_TOKENS))}, family
    answers = rd.field(rec, "answers", path, idx, (list, str))
    answers = [answers] if isinstance(answers, str) else answers
    if not answers or not all(isinstance(a, str) for a in answers):
        raise BadRecordError(path, idx, "field 'answers' must be a non-empty list of strings")
    family = _family(rec, path, idx, "exact_match", "generate")
    answerable = rec.get("answerable")
    return question, {"answers": list(answers), "answerable": None if answerable is None else bool(answerable),
                      "max_new_tokens": int(rec.get("max_new_tokens", pr.MAX_NEW_TOKENS))}, family


def _mc_fields(rec, path, idx) -> tuple[str, dict, str]:
    """A multiple-choice record's context, scoring fields and metric family, checked."""
    context = rd.field(rec, "context", path, idx)
    choices, label = _choices(rec, path, idx)
    return context, {"choice_texts": choices, "label": label}, \
        _family(rec, path, idx, "multiple_choice", "multiple_choice")


def vqa_item(rec, path, idx, tok, image_size, image_tokens, template=None, *, image_root: str | None = None,
             allow_outside_root: bool = False) -> tuple[EvalItem, str]:
    """One VQA record's item; its question goes into `template` (None: its family's template when the
    record has an image: vlm-evaluation's prompts are for VL questions; else the bare question)."""
    question, fields, family = _vqa_fields(rec, path, idx)
    if template is None:
        template = pr.family_template(family) if rec.get("image") is not None else pr.QUESTION
    question = pr.render(template, question)
    image = _image(rec, path, idx, image_size, image_root, allow_outside_root)
    # With an image, the instruction format; without, the question is a completion prompt as is.
    prompt = ([tok.image_id] * image_tokens + [tok.user_id] + tok.encode(question) + [tok.assistant_id]
              if image is not None else tok.encode(question))
    if "choice_texts" in fields:
        fields["choices"] = [tok.encode(c) for c in fields["choice_texts"]]
    return EvalItem(prompt_tokens=prompt, image=image, **fields), family


def mc_item(rec, path, idx, tok, image_size, image_tokens, template=None, *, image_root: str | None = None,
            allow_outside_root: bool = False) -> tuple[EvalItem, str]:
    """One multiple-choice record's item; its context goes into `template` (None: as it is)."""
    context, fields, family = _mc_fields(rec, path, idx)
    context = context if template is None else pr.render(template, context)
    image = _image(rec, path, idx, image_size, image_root, allow_outside_root)
    prompt = ([tok.image_id] * image_tokens if image is not None else []) + tok.encode(context)
    fields["choices"] = [tok.encode(" " + c) for c in fields["choice_texts"]]
    return EvalItem(prompt_tokens=prompt, image=image, prompt_text=context if image is None else None,
                    **fields), family


def check_eval_file(path: str, kind: str, records: list[tuple[int, dict]] | None = None, *,
                    image_root: str | None = None, allow_outside_root: bool = False) -> int:
    """Check every record of a `vqa_jsonl` / `mc_jsonl` file, not only the ones a step samples: the
    same field rules the items are built with, one metric and chance per file, and that each image
    file exists (images are decoded only when an item is built). Returns the record count; raises
    BadRecordError naming file and record."""
    records = _records(path) if records is None else records
    _agreed(records, "metric", path)
    _agreed(records, "chance", path)
    _agreed(records, "prompt", path)
    fields = _vqa_fields if kind == "vqa_jsonl" else _mc_fields
    families = set()
    for idx, rec in records:
        families.add(fields(rec, path, idx)[2])
        if rec.get("image") is not None:
            image = _image_path(rec, path, idx, image_root, allow_outside_root)
            if not Path(image).is_file():
                raise BadRecordError(path, idx, f"image {str(image)!r} does not exist")
    if len(families) > 1:
        raise DataError(f"{path}: mixes records scored as {sorted(families)}; split the file")
    return len(records)


def _agreed(records, key: str, path: str):
    """The value every record gives `key` (None when none does); a record that differs is an error."""
    first = next(((i, r[key]) for i, r in records if key in r), None)
    if first is None:
        return None
    for idx, rec in records:
        if rec.get(key) != first[1]:
            raise BadRecordError(path, idx, f"field {key!r} is {rec.get(key)!r}, but record {first[0]} "
                                            f"says {first[1]!r}; a file is one task with one {key}")
    if key == "chance" and (not isinstance(first[1], (int, float)) or not 0 <= first[1] <= 1):
        raise BadRecordError(path, first[0], f"field 'chance' must be a number in [0, 1], got {first[1]!r}")
    if key == "prompt" and (not isinstance(first[1], str) or pr.template_problem(first[1])):
        raise BadRecordError(path, first[0], pr.template_problem(str(first[1])) or "field 'prompt' must be text")
    return first[1]


def _file_task(source, path, name, records, tok, image_size, image_tokens, template=None) -> EvalTask:
    """The task of `records`, drawn from a file `check_eval_file` passed whole (one metric family)."""
    make = vqa_item if source.kind == "vqa_jsonl" else mc_item
    built = [make(rec, path, idx, tok, image_size, image_tokens, template, **image_roots(source))
             for idx, rec in records]
    family = source.option("metric") or built[0][1]
    kind = FAMILIES[family].kind
    items = [it for it, _ in built]
    if any((kind == "multiple_choice") != bool(it.choices) for it in items):
        raise DataError(f"{path}: the source's metric {family!r} does not fit its records")
    group = source.option("group") or ("vl" if any(it.image is not None for it in items) else "text")
    chance = source.option("chance")
    chance = _agreed(records, "chance", path) if chance is None else chance
    return EvalTask(name=name, group=group, kind=kind, items=items, metric=family,
                    chance=chance_level(kind, items) if chance is None else float(chance))


def file_tasks(source, tok, *, groups, tasks, n_per_task, image_size, image_tokens, seed,
               prompts=()) -> list[EvalTask]:
    """One task per file; `prompts` (task -> template) replace the families' templates."""
    paths, templates = resolve_paths(source), dict(prompts)
    out = []
    for path in paths:
        name = task_name(source, path, len(paths))
        if tasks and name not in tasks:
            continue
        if source.option("group") and source.option("group") not in groups:
            continue  # known without reading: a trunk's text-only eval skips a VL source's files
        records = _records(path)
        check_eval_file(path, source.kind, records, **image_roots(source))  # every record, not only the sampled
        if n_per_task and n_per_task < len(records):
            pick = np.sort(np.random.default_rng(seed).choice(len(records), n_per_task, replace=False))
            records = [records[i] for i in pick]
        template = templates.get(name, _agreed(records, "prompt", path))
        task = _file_task(source, path, name, records, tok, image_size, image_tokens, template)
        if task.group in groups:
            task.fewshot_pool = fewshot_pool(source, name)
            out.append(task)
    return out


def fewshot_path(source, name: str) -> Path | None:
    """The file a task's few-shot examples come from: `<fewshot folder>/<task>.jsonl` (None: no folder)."""
    folder = source.option("fewshot")
    return None if folder is None else Path(folder) / f"{name}.jsonl"


def fewshot_pool(source, name: str) -> list[EvalItem]:
    """A task's few-shot pool from the source's `fewshot` folder (every record, checked), or []."""
    path = fewshot_path(source, name)
    if path is None:
        return []
    if not path.is_file():
        raise DataError(f"data source {source.name!r}: its fewshot folder has no {path.name} for task "
                        f"{name!r} ({path})")
    records = _records(str(path))
    check_eval_file(str(path), "mc_jsonl", records)
    pool = []
    for idx, rec in records:  # text only, untokenized: examples are joined into prompts as text
        context, fields, _ = _mc_fields(rec, str(path), idx)
        pool.append(EvalItem(prompt_tokens=[], image=None, prompt_text=context, **fields))
    return pool


def gather(per_source, chance=(), max_new_tokens=()) -> list[EvalTask]:
    """The tasks of several sources [(source, tasks)], with the study's chance and decoding-limit
    overrides applied.

    A task name in two sources is an error naming both: its rows could not be told apart. A limit
    on new tokens for a task scored by log-likelihood is an error too: it would change nothing.
    """
    seen: dict[str, str] = {}
    out = []
    overrides, limits = dict(chance), dict(max_new_tokens)
    for source, tasks in per_source:
        for task in tasks:
            if task.name in seen:
                raise DataError(f"task {task.name!r} is in two eval sources, {seen[task.name]!r} and "
                                f"{source.name!r}; rename one file or set a source's 'task' option")
            seen[task.name] = source.name
            if task.name in overrides:
                task.chance = float(overrides[task.name])
            if task.name in limits:
                task = _limited(task, limits[task.name])
            out.append(task)
    return out


def _limited(task: EvalTask, limit: int) -> EvalTask:
    """A copy of a generation task whose items decode at most `limit` new tokens."""
    if task.kind != "generate":
        raise DataError(f"[eval.max_new_tokens] names task {task.name!r}, which is scored by "
                        "log-likelihood of its choices and generates nothing")
    return dataclasses.replace(task, items=[dataclasses.replace(it, max_new_tokens=int(limit))
                                            for it in task.items])
