"""Few-shot contexts for multiple-choice text tasks, built as lm-evaluation-harness builds them.

Each of the k examples is its prompt, a space and its right answer, followed by a blank line
("\\n\\n", lm-eval's `fewshot_delimiter`); the asked item's prompt comes last. The examples are drawn
as lm-eval's default sampler draws them — one `random.Random(FEWSHOT_SEED)` per task, consumed item
by item in order: from the task's few-shot pool (a training split, the source's `fewshot` folder)
`sample(pool, k)`; without one, from the task's own items, `sample(items, k + 1)` with the asked item
(and any item equal to it) dropped and the first k kept, as lm-eval does when the few-shot split is
the test split. The same draw through lm-eval and through the project's scorer gives the same contexts.
"""

from __future__ import annotations

import dataclasses
import random

from models.data.errors import DataError
from models.data.types import EvalTask

FEWSHOT_SEED = 1234  # lm-eval's default `fewshot_random_seed`
TARGET_DELIMITER = " "  # between a prompt and its answer (lm-eval's `target_delimiter`)
FEWSHOT_DELIMITER = "\n\n"  # after each example (lm-eval's `fewshot_delimiter`)


def supports_fewshot(task: EvalTask) -> bool:
    """Whether a task's items can be asked with examples: text multiple choice with prompts as text."""
    return task.kind == "multiple_choice" and all(it.prompt_text is not None and it.image is None
                                                  for it in task.items)


def doc(item) -> dict:
    """An item as lm-eval's document: what the sampler compares and what its task config reads."""
    return {"context": item.prompt_text, "choices": list(item.choice_texts), "label": int(item.label)}


def fewshot_examples(docs: list[dict], k: int, seed: int = FEWSHOT_SEED,
                     pool: list[dict] | None = None) -> list[list[dict]]:
    """For each document in order, the k examples lm-eval's default sampler gives it: from `pool`
    (a training split: k drawn) or, without one, from the documents themselves (k + 1 drawn, the
    asked one dropped)."""
    source = pool or docs
    if k > len(source) - (0 if pool else 1):
        raise DataError(f"{k}-shot needs at least {k + (0 if pool else 1)} items to draw examples from; "
                        f"the {'few-shot pool' if pool else 'task'} has {len(source)}")
    rnd, out = random.Random(seed), []
    for d in docs:
        if pool:
            out.append(rnd.sample(pool, k))
            continue
        picks = [x for x in rnd.sample(docs, k + 1) if x != d][:k]
        if len(picks) < k:  # the pool holds copies of the asked item: draw again without them
            picks = rnd.sample([x for x in docs if x != d], k)
        out.append(picks)
    return out


def fewshot_context(examples: list[dict], context: str) -> str:
    shots = "".join(e["context"] + TARGET_DELIMITER + e["choices"][e["label"]] + FEWSHOT_DELIMITER
                    for e in examples)
    return shots + context


def with_fewshot(task: EvalTask, k: int, tok, seed: int = FEWSHOT_SEED) -> EvalTask:
    """A copy of `task` whose prompts carry k examples each (k = 0: the task itself)."""
    if k == 0:
        return task
    if not supports_fewshot(task):
        raise DataError(f"task {task.name!r}: few-shot needs text multiple-choice items with their "
                        "prompts as text (an mc_jsonl file or a world text task)")
    docs, pool = [doc(it) for it in task.items], [doc(it) for it in task.fewshot_pool]
    items = []
    for item, examples in zip(task.items, fewshot_examples(docs, k, seed, pool)):
        text = fewshot_context(examples, item.prompt_text)
        items.append(dataclasses.replace(item, prompt_text=text, prompt_tokens=tok.encode(text)))
    return dataclasses.replace(task, items=items)
