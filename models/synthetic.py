"""A tiny seeded data provider with the `models.data` interface, for unit tests and benchmarks.

Batches are pure functions of (seed, position), so state_dict is just the position and resume is
exact. Sequences follow simple learnable rules (arithmetic progressions; captions name an image's
dominant colour) so that losses fall. Real studies use `models.data` (the built-in world or shards).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

VOCAB = 64
FIRST_WORD = 8
COLOURS = ("red", "green", "blue")


class Tokenizer:
    vocab_size, pad_id, eos_id, image_id, user_id, assistant_id = VOCAB, 0, 1, 2, 3, 4

    def encode(self, text: str) -> list[int]:
        return [FIRST_WORD + sum(map(ord, w)) % (VOCAB - FIRST_WORD) for w in text.split()]

    def decode(self, ids: list[int]) -> str:
        return " ".join(f"w{i}" for i in ids)


def get_tokenizer(source: Any = None) -> Tokenizer:
    return Tokenizer()


@dataclass
class Batch:
    tokens: np.ndarray
    targets: np.ndarray
    loss_kind: np.ndarray
    images: np.ndarray
    n_tokens: int
    n_image_tokens: int
    skipped_records: int = 0


def _progression(rng: np.random.Generator, n: int) -> np.ndarray:
    start, stride = rng.integers(0, VOCAB - FIRST_WORD), rng.integers(1, 4)
    return FIRST_WORD + (start + stride * np.arange(n)) % (VOCAB - FIRST_WORD)


def _image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, int]:
    colour = int(rng.integers(0, 3))
    img = rng.random((3, size, size), dtype=np.float32) * 0.3
    img[colour] += 0.7
    return img, colour


@dataclass
class Stream:
    """Infinite (epochs=0) or finite stream of Batches; state is the next batch's index."""

    make: Any  # (rng) -> Batch
    seed: int
    length: int = 0  # 0 = infinite
    position: int = 0

    def __iter__(self) -> Iterator[Batch]:
        while not self.length or self.position < self.length:
            rng = np.random.default_rng([self.seed, self.position])
            self.position += 1
            yield self.make(rng)

    def __next__(self) -> Batch:
        return next(iter(self))

    def __len__(self) -> int:
        return self.length

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])


def _rows(rng, batch_size, seq_len, image_ratio, image_size, image_tokens, kind_for_image):
    tok = Tokenizer()
    tokens = np.zeros((batch_size, seq_len + 1), np.int64)
    kinds = np.zeros((batch_size, seq_len + 1), np.int8)
    images = []
    for r in range(batch_size):
        if rng.random() < image_ratio:
            img, colour = _image(rng, image_size)
            images.append(img)
            tokens[r, :image_tokens] = tok.image_id
            kinds[r, :image_tokens] = -1
            tokens[r, image_tokens:] = FIRST_WORD + colour
            kinds[r, image_tokens:] = kind_for_image
        else:
            tokens[r] = _progression(rng, seq_len + 1)
    targets = tokens[:, 1:].copy()
    targets[kinds[:, 1:] < 0] = -100
    imgs = np.stack(images) if images else np.zeros((0, 3, image_size, image_size), np.float32)
    return Batch(tokens=tokens[:, :-1], targets=targets, loss_kind=kinds[:, 1:], images=imgs,
                 n_tokens=batch_size * seq_len, n_image_tokens=len(images) * image_tokens)


def text_stream(source, tok, *, batch_size, seq_len, seed, on_bad_record="error") -> Stream:
    return Stream(lambda rng: _rows(rng, batch_size, seq_len, 0.0, 1, 0, 0), seed)


def mixed_stream(text_source, image_source, instruction_source, tok, *, batch_size, seq_len,
                 image_ratio, instruction_share, image_size, image_tokens, seed,
                 on_bad_record="error") -> Stream:
    return Stream(lambda rng: _rows(rng, batch_size, seq_len, image_ratio, image_size,
                                    image_tokens, 1), seed)


def finetune_epochs(source, tok, *, batch_size, seq_len, image_size, image_tokens, epochs, seed,
                    max_samples=0, replay_source=None, replay_share=0.0) -> Stream:
    # Synthetic rows stand in for conversations and replayed text alike: no replay rows here.
    samples = max_samples or 4 * batch_size
    per_epoch = -(-samples // batch_size)
    return Stream(lambda rng: _rows(rng, batch_size, seq_len, 1.0, image_size, image_tokens, 2),
                  seed, length=epochs * per_epoch)


def caption_pairs(source, tok, *, batch_size, image_size, max_caption_len, seed) -> Stream:
    def make(rng):
        pairs = [_image(rng, image_size) for _ in range(batch_size)]
        tokens = np.zeros((batch_size, max_caption_len), np.int64)
        tokens[:, 0] = [FIRST_WORD + c for _, c in pairs]
        return Batch(tokens=tokens, targets=tokens, loss_kind=np.zeros_like(tokens, np.int8),
                     images=np.stack([i for i, _ in pairs]), n_tokens=batch_size,
                     n_image_tokens=0)
    return Stream(make, seed)


_HELDOUT_SEED = 10_007  # batch seeds no training stream of these tests reaches


def heldout_text(source, tok, *, seq_len) -> list[Batch]:
    rng = np.random.default_rng(_HELDOUT_SEED)
    return [_rows(rng, 8, seq_len, 0.0, 1, 0, 0)]


def heldout_captions(source, tok, *, seq_len, image_size, image_tokens) -> list[Batch]:
    rng = np.random.default_rng(_HELDOUT_SEED + 1)
    return [_rows(rng, 8, seq_len, 1.0, image_size, image_tokens, 1)]


@dataclass
class EvalItem:
    prompt_tokens: list[int]
    image: np.ndarray | None
    choices: list[list[int]] = field(default_factory=list)
    label: int = 0
    answers: list[str] = field(default_factory=list)
    max_new_tokens: int = 4


@dataclass
class EvalTask:
    name: str
    group: str
    chance: float
    kind: str
    items: list[EvalItem]


def eval_tasks(source, tok, *, groups=("vl", "text"), tasks=(), n_per_task, image_size, seed,
               image_tokens: int = 4, prompts=()) -> list[EvalTask]:
    rng = np.random.default_rng(seed)
    out = []
    if "text" in groups:
        items = []
        for _ in range(n_per_task or 8):
            seq = _progression(rng, 9).tolist()
            wrong = [FIRST_WORD + (seq[-1] - FIRST_WORD + 7) % (VOCAB - FIRST_WORD)]
            label = int(rng.integers(0, 2))
            choices = [wrong, [seq[-1]]] if label else [[seq[-1]], wrong]
            items.append(EvalItem(prompt_tokens=seq[:-1], image=None, choices=choices, label=label))
        out.append(EvalTask(name="progression", group="text", chance=0.5, kind="multiple_choice",
                            items=items))
    if "vl" in groups:
        items = []
        for _ in range(n_per_task or 8):
            img, colour = _image(rng, image_size)
            items.append(EvalItem(prompt_tokens=[Tokenizer.image_id] * image_tokens, image=img,
                                  choices=[[FIRST_WORD + c] for c in range(3)], label=colour,
                                  answers=[f"w{FIRST_WORD + colour}"], max_new_tokens=1))
        out.append(EvalTask(name="colour_mc", group="vl", chance=1 / 3, kind="multiple_choice",
                            items=items))
        out.append(EvalTask(name="colour_vqa", group="vl", chance=0.0, kind="generate",
                            items=items))
    return [t for t in out if not tasks or t.name in tasks]
