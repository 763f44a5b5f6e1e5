"""Zero-shot evaluation of a model on VL and text tasks (no Lightning).

Multiple choice: the summed log-likelihood of each choice's tokens given the prompt (and image).
Generation: greedy decoding up to max_new_tokens; decoding stops at EOS or at any of `stop_ids`
(e.g. `<user>`: an instruction-tuned model ends a turn by opening the next one). `models.metrics`
turns those into the task's evals rows (its metric family's metrics, one of them primary).

`evaluate` batches: every (item, choice) sequence of a task is right-padded into batches of
`batch_size` rows scored by one forward each, and greedy decoding advances a batch of prompts one
token per forward with a per-row stop. Causal attention makes right padding exact: a position
never sees the pads after it. `choice_logprobs` / `greedy_decode` are the one-item reference.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from models.metrics import task_rows
from models.vlm import VLM


def _prompt(item: Any, image_id: int, image_tokens: int) -> list[int]:
    """The prompt with exactly `image_tokens` placeholders first when the item has an image."""
    text = [t for t in item.prompt_tokens if t != image_id]
    return ([image_id] * image_tokens + text) if item.image is not None else text


def _image(item: Any, device: torch.device) -> torch.Tensor | None:
    if item.image is None:
        return None
    return torch.as_tensor(np.asarray(item.image, dtype=np.float32), device=device).unsqueeze(0)


@torch.no_grad()
def choice_logprobs(model: VLM, prompt: list[int], choices: Sequence[list[int]],
                    image: torch.Tensor | None, image_id: int) -> list[float]:
    """Summed log P(choice tokens | prompt, image) for each choice, in one right-padded batch."""
    device = next(model.parameters()).device
    seqs = [prompt + list(c) for c in choices]
    width = max(map(len, seqs)) - 1
    tokens = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        tokens[i, :len(s) - 1] = torch.tensor(s[:-1])
    images = None if image is None else image.expand(len(seqs), *image.shape[1:])
    logp = torch.log_softmax(model(tokens.to(device), images, image_id).float(), dim=-1).cpu()
    scores = []
    for i, c in enumerate(choices):
        positions = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(c))
        scores.append(float(logp[i, positions, torch.tensor(list(c))].sum()))
    return scores


@torch.no_grad()
def greedy_decode(model: VLM, prompt: list[int], image: torch.Tensor | None, image_id: int,
                  max_new_tokens: int, eos_id: int, stop_ids: Sequence[int] = ()) -> list[int]:
    """Greedy continuation up to EOS or a stop id (no KV cache: prompts are short, models small)."""
    stops = {eos_id, *stop_ids}
    device = next(model.parameters()).device
    tokens = list(prompt)
    limit = model.lm.config.max_seq_len
    for _ in range(max_new_tokens):
        if len(tokens) >= limit:
            break
        logits = model(torch.tensor([tokens], device=device), image, image_id)
        nxt = int(logits[0, -1].argmax())
        if nxt in stops:
            break
        tokens.append(nxt)
    return tokens[len(prompt):]


def _pad_id(image_id: int, eos_id: int) -> int:
    # Any id but the image placeholder will do: right pads are never attended to by real positions.
    return next(t for t in (eos_id, 0, 1) if t != image_id)


def _forward_rows(model: VLM, rows: list[list[int]], images: list[torch.Tensor | None],
                  image_id: int, pad: int) -> torch.Tensor:
    """Logits [len(rows), max len, V] of right-padded rows; images in row order (None: no image)."""
    device = next(model.parameters()).device
    tokens = torch.full((len(rows), max(map(len, rows))), pad, dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, :len(row)] = torch.tensor(row)
    present = [im for im in images if im is not None]
    stacked = torch.cat(present).to(device) if present else None
    return model(tokens.to(device), stacked, image_id)


@torch.no_grad()
def batched_choice_scores(model: VLM, items: Sequence[Any], *, image_id: int, image_tokens: int,
                          pad: int, batch_size: int) -> list[list[float]]:
    """`choice_logprobs` for every item, its (item, choice) sequences scored `batch_size` at a time."""
    device = next(model.parameters()).device
    flat = [(i, j, _prompt(it, image_id, image_tokens), list(c))
            for i, it in enumerate(items) for j, c in enumerate(it.choices)]
    scores = [[0.0] * len(it.choices) for it in items]
    for start in range(0, len(flat), batch_size):
        chunk = flat[start:start + batch_size]
        rows = [(p + c)[:-1] for _, _, p, c in chunk]
        images = [_image(items[i], device) for i, _, _, _ in chunk]
        logp = torch.log_softmax(_forward_rows(model, rows, images, image_id, pad).float(), -1).cpu()
        for r, (i, j, prompt, choice) in enumerate(chunk):
            positions = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(choice))
            scores[i][j] = float(logp[r, positions, torch.tensor(choice)].sum())
    return scores


@torch.no_grad()
def batched_greedy(model: VLM, items: Sequence[Any], *, image_id: int, image_tokens: int,
                   eos_id: int, pad: int, batch_size: int,
                   stop_ids: Sequence[int] = ()) -> list[list[int]]:
    """`greedy_decode` for every item: one forward per new token for a batch, rows stop alone."""
    stops = {eos_id, *stop_ids}
    device = next(model.parameters()).device
    limit = model.lm.config.max_seq_len
    outs: list[list[int]] = [[] for _ in items]
    for start in range(0, len(items), batch_size):
        idx = list(range(start, min(start + batch_size, len(items))))
        seqs = {i: _prompt(items[i], image_id, image_tokens) for i in idx}
        images = {i: _image(items[i], device) for i in idx}
        active = [i for i in idx if items[i].max_new_tokens > 0 and len(seqs[i]) < limit]
        while active:
            logits = _forward_rows(model, [seqs[i] for i in active], [images[i] for i in active],
                                   image_id, pad)
            still = []
            for r, i in enumerate(active):
                nxt = int(logits[r, len(seqs[i]) - 1].argmax())
                if nxt in stops:
                    continue
                seqs[i].append(nxt)
                outs[i].append(nxt)
                if len(outs[i]) < items[i].max_new_tokens and len(seqs[i]) < limit:
                    still.append(i)
            active = still
    return outs


def task_metric(task: Any) -> str:
    """A task's metric family; tasks that name none score choices by `acc`, answers by exact match."""
    return getattr(task, "metric", None) or ("multiple_choice" if task.kind == "multiple_choice"
                                             else "exact_match")


def evaluate(model: VLM, tasks: Sequence[Any], *, image_id: int, image_tokens: int, eos_id: int,
             decode: Callable[[list[int]], str], batch_size: int = 64, stop_ids: Sequence[int] = (),
             stable_metric: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The evals rows of every task: {task, group, metric, value, chance, n, primary_metric}.

    `batch_size` sequences go through the model per forward (1 = item by item, the reference);
    generation ends at `eos_id` or any of `stop_ids`. `stable_metric` (task → metric) picks the
    primary row where a task reports several (e.g. acc_norm rather than acc).
    """
    if batch_size < 1:
        raise ValueError(f"evaluate: batch_size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    pad, rows, chosen = _pad_id(image_id, eos_id), [], dict(stable_metric or {})
    for task in tasks:
        items = list(task.items)
        if task.kind == "multiple_choice":
            outputs: list[Any] = batched_choice_scores(model, items, image_id=image_id, image_tokens=image_tokens,
                                                       pad=pad, batch_size=batch_size)
        else:
            outputs = [decode(out) for out in batched_greedy(
                model, items, image_id=image_id, image_tokens=image_tokens, eos_id=eos_id, pad=pad,
                batch_size=batch_size, stop_ids=stop_ids)]
        rows += task_rows(task=task.name, group=task.group, family=task_metric(task), chance=task.chance,
                          items=items, outputs=outputs, stable_metric=chosen.get(task.name))
    model.train(was_training)
    return rows
