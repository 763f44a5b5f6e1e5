"""Zero-shot evaluation of a model on VL and text tasks (no Lightning).

Multiple choice: the choice with the highest summed log-likelihood of its tokens given the prompt
(and image). Generation: greedy decoding up to max_new_tokens, the answer normalised (lowercase,
punctuation and articles a/an/the removed) and matched against the accepted answers. One row per
task: accuracy, its chance level and n.
"""

from __future__ import annotations

import string
from typing import Any, Callable, Sequence

import numpy as np
import torch

from models.vlm import VLM

_ARTICLES = {"a", "an", "the"}
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def normalise_answer(text: str) -> str:
    words = text.lower().translate(_PUNCT).split()
    return " ".join(w for w in words if w not in _ARTICLES)


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
                  max_new_tokens: int, eos_id: int) -> list[int]:
    """Greedy continuation (no KV cache: eval prompts are short and models small)."""
    device = next(model.parameters()).device
    tokens = list(prompt)
    limit = model.lm.config.max_seq_len
    for _ in range(max_new_tokens):
        if len(tokens) >= limit:
            break
        logits = model(torch.tensor([tokens], device=device), image, image_id)
        nxt = int(logits[0, -1].argmax())
        if nxt == eos_id:
            break
        tokens.append(nxt)
    return tokens[len(prompt):]


def evaluate(model: VLM, tasks: Sequence[Any], *, image_id: int, image_tokens: int, eos_id: int,
             decode: Callable[[list[int]], str]) -> list[dict[str, Any]]:
    """One evals row per task: {task, group, metric: accuracy, value, chance, n}."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows = []
    for task in tasks:
        correct = 0
        for item in task.items:
            prompt, image = _prompt(item, image_id, image_tokens), _image(item, device)
            if task.kind == "multiple_choice":
                scores = choice_logprobs(model, prompt, item.choices, image, image_id)
                correct += int(np.argmax(scores)) == item.label
            else:
                out = greedy_decode(model, prompt, image, image_id, item.max_new_tokens, eos_id)
                answers = {normalise_answer(a) for a in item.answers}
                correct += normalise_answer(decode(out)) in answers
        n = len(task.items)
        rows.append({"task": task.name, "group": task.group, "metric": "accuracy",
                     "value": correct / n if n else 0.0, "chance": float(task.chance), "n": n})
    model.train(was_training)
    return rows
