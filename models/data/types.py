"""The data layer's output types: training batches, and evaluation tasks with their items.

Plain numpy and lists (the trainer converts to torch), so the data layer never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

IGNORE = -100  # target value where no loss is taken (pad, image positions, prompts)
LOSS_TEXT, LOSS_CAPTION, LOSS_INSTRUCTION, LOSS_NONE = 0, 1, 2, -1


class LazyImage:
    """An image made only when a rank trains on its row: `fn(*args)` (the world renders, a file
    source decodes), so a rank of a multi-rank step leaves the other ranks' images undone."""

    __slots__ = ("fn", "args")

    def __init__(self, fn, *args) -> None:
        self.fn, self.args = fn, args

    def __call__(self) -> np.ndarray:
        return self.fn(*self.args)


def materialise(image: "np.ndarray | LazyImage") -> np.ndarray:
    return image() if isinstance(image, LazyImage) else image


@dataclass(kw_only=True, slots=True)
class Batch:
    """One training batch. `loss_kind[b, t]` describes the target at `targets[b, t]`."""

    tokens: np.ndarray  # int64 [B, L]; image positions hold image_id, one per image token
    targets: np.ndarray  # int64 [B, L]; next-token targets, IGNORE where no loss
    loss_kind: np.ndarray  # int8 [B, L]; 0 text, 1 caption, 2 instruction response, -1 none
    images: np.ndarray  # uint8 [N, H, W, 3] as decoded, in order of appearance (row-major); the
    # model normalises them on its device (models.vision.pixels)
    n_tokens: int  # non-pad tokens
    n_image_tokens: int  # tokens from image data: placeholders + caption/instruction tokens + EOS
    skipped_records: int = 0  # bad records skipped while producing this batch


@dataclass(kw_only=True, slots=True)
class EvalItem:
    prompt_tokens: list[int]  # image placeholders first (when `image` is set), then text
    image: np.ndarray | None  # float32 [3, H, W]
    choices: list[list[int]] = field(default_factory=list)  # multiple choice continuations
    label: int = 0  # index of the right choice
    answers: list[str] = field(default_factory=list)  # generate: accepted answers, as annotated
    max_new_tokens: int = 0
    choice_texts: list[str] = field(default_factory=list)  # the choices as written (acc_norm, POPE)
    answerable: bool | None = None  # VizWiz: whether the annotators could answer
    box: tuple[float, float, float, float] | None = None  # refexp: the true [x1, y1, x2, y2] in [0, 1]
    # multiple-choice text items whose choices follow the prompt after a space (mc_jsonl files, the
    # world's text tasks): the prompt as written, for few-shot contexts and lm-eval, which score strings
    prompt_text: str | None = None


@dataclass(kw_only=True, slots=True)
class EvalTask:
    """A benchmark: its items, its metric family (`models.metrics.FAMILIES`) and its chance level
    (stable score = the primary metric − chance).

    Chance is the mean of 1/len(choices) over items for multiple choice, and for generation the
    accuracy of always giving the most common answer among the items.
    """

    name: str
    group: Literal["vl", "text"]
    chance: float
    kind: Literal["multiple_choice", "generate"]
    items: list[EvalItem]
    metric: str = "multiple_choice"  # how items are scored and which evals rows the task writes
    # few-shot examples are drawn from these (a training split); empty: from the task's own items
    fewshot_pool: list[EvalItem] = field(default_factory=list)


def chance_level(kind: str, items: list[EvalItem]) -> float:
    if not items:
        return 0.0
    if kind == "multiple_choice":
        return float(np.mean([1.0 / len(it.choices) for it in items]))
    if not all(it.answers for it in items):  # boxes: no answer to guess
        return 0.0
    firsts = [it.answers[0] for it in items]
    return max(firsts.count(a) for a in set(firsts)) / len(firsts)
