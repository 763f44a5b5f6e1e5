"""A plan's inputs, checked before anything trains, so that a bad path or shard costs seconds and
one line, not a half-trained study and a traceback from inside a step.

`check_plan` (by `plan` and `run`): the results root is a directory; every data source the steps
read has files (each path exists, each glob matches); its tokenizer loads and fits the model; eval
files are read whole (every record's fields, not only the sampled ones). `check_shards` (by `run`,
for the steps it will run): the first records of every shard parse, images decoded, so that a shard
of invalid JSON or a cut-off tar ends the run before the first step; a LLaVA file has every
record's fields checked and the images of records spread over the whole file found. Sources read with
`on_bad_record = "skip"` are not shard-checked (their bad records are skipped by choice).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterable, Iterator

from models.data.errors import DataError
from sweep.errors import UserError
from sweep.spec import SHARD_KINDS

EVAL_KINDS = ("vqa_jsonl", "mc_jsonl")
FIRST_RECORDS = 2  # records parsed per shard by check_shards
SAY_SHARDS = 50  # check_shards says what it is doing when there are more shards than this


class DataCheckError(UserError):
    """A plan's input cannot be used: one line naming the file (and how many more problems)."""


def _raise(problems: list[str]) -> None:
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise DataCheckError(problems[0] + more)


def reads(steps: Iterable[Any]) -> Iterator[tuple[Any, str, str, Any]]:
    """(source, role, on_bad_record, model vocab or None) for every data source these steps read;
    roles: text, pairs, instructions, eval (models.data.sources.ROLES plus eval)."""
    for step in steps:
        cfg = step.config
        if step.kind == "encoder":
            yield cfg.data, "pairs", "error", None
        elif step.kind == "trunk":
            yield cfg.data, "text", cfg.on_bad_record, cfg.lm.vocab_size
        elif step.kind == "branch":
            yield cfg.image_data, "pairs", cfg.on_bad_record, None
            if cfg.instruction_data is not None and cfg.instruction_share > 0:
                yield cfg.instruction_data, "instructions", cfg.on_bad_record, None
        elif step.kind == "finetune":
            yield cfg.data, "instructions", "error", None
            if cfg.replay_data is not None and cfg.text_replay > 0:
                yield cfg.replay_data, "text", "error", None
        elif step.kind == "eval":
            for source in cfg.data:  # an eval reads several benchmark sources
                yield source, "eval", "error", None


def check_plan(plan: Any, steps: Iterable[Any] | None = None) -> None:
    """DataCheckError on the first problem of the root or of a source `steps` (default: every
    step of the plan) read."""
    root = Path(plan.root)
    if root.exists() and not root.is_dir():
        raise DataCheckError(f"{root}: the results root is not a directory")
    problems: list[str] = []
    seen: set[Any] = set()
    for source, role, _, vocab in reads(plan.steps if steps is None else steps):
        if (source, role, vocab) in seen or source.kind == "world":
            continue
        seen.add((source, role, vocab))
        try:
            _check_source(source, role, vocab)
        except DataError as exc:
            problems.append(str(exc))
    _raise(list(dict.fromkeys(problems)))


def _check_source(source: Any, role: str, vocab: int | None) -> None:
    from models.data import get_tokenizer
    from models.data.evaltasks import check_eval_file, fewshot_path, image_roots, task_name
    from models.data.sources import resolve_paths

    paths = resolve_paths(source)  # every path exists, every glob matches
    if role == "text":
        get_tokenizer(source, vocab_limit=vocab)
    if source.kind in EVAL_KINDS:
        for path in paths:
            check_eval_file(path, source.kind, **image_roots(source))
            shots = fewshot_path(source, task_name(source, path, len(paths)))
            if shots is not None:  # the task's training split, its few-shot examples
                if not shots.is_file():
                    raise DataError(f"data source {source.name!r}: its fewshot folder has no {shots.name} "
                                    f"for {path}")
                check_eval_file(str(shots), "mc_jsonl")


def check_shards(steps: Iterable[Any], *, records: int = FIRST_RECORDS) -> None:
    """DataCheckError on the first shard whose first `records` records do not parse."""
    from models.data.llavacheck import check_llava_file
    from models.data.sources import check_first_records, resolve_paths

    todo: list[tuple[Any, str, str]] = []
    for source, role, on_bad, _ in reads(steps):
        if source.kind in SHARD_KINDS and on_bad == "error":
            todo += [(source, role, path) for path in resolve_paths(source)]
    todo = list(dict.fromkeys(todo))
    if len(todo) > SAY_SHARDS:
        print(f"checking the first {records} records of {len(todo)} shards", file=sys.stderr, flush=True)
    problems = []
    for source, role, path in todo:
        try:
            if source.kind == "llava":  # every record's fields, a spread sample's images
                check_llava_file(source, path, decoded=records)
            else:
                check_first_records(source, role, path, records=records)
        except DataError as exc:
            problems.append(str(exc))
    _raise(problems)
