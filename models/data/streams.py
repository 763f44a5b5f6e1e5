"""Infinite, deterministic, exactly resumable batch streams: packed text, and the image-stage mix.

The mix decides row by row. A row is either packed text, or whole image samples (image
placeholders + caption, or + a conversation) with the tail that cannot hold another whole sample
filled with the text stream's next tokens (counted as text), or with padding (not counted) when
that keeps the share nearer its target, as at high ratios. "Image tokens" are every token of an
image sample: placeholders, caption or conversation, and its EOS. Each row goes to whichever type
keeps the running share of image tokens nearest `image_ratio`, and each image sample to whichever
type keeps the running instruction share of image tokens nearest `instruction_share`, so both
shares hold to within one row (one sample) at every point of the stream. All decisions depend only
on counters kept in the state, so a resumed stream yields exactly the uninterrupted batches.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from models.data.errors import DataError
from models.data.packing import (
    CaptionSample,
    TextPacker,
    caption_sample,
    encode_conversation,
    rank_rows,
    rows_to_batch,
    text_row,
    token_ids,
)
from models.data.sources import decodes_file
from models.data.types import LOSS_NONE, LOSS_TEXT, Batch, materialise
from models.data.workers import DataWorkerError, Gathering

LOOKAHEAD = 1  # batches packed beyond the one served, with data workers


class BatchStream:
    """An iterator of Batch with `state_dict`/`load_state_dict` for exact resume.

    `select_rows(rank, world)`: each batch holds only rank `rank`'s share of the global batch's
    rows. The stream still walks every row (packing and mixing decide row by row, so its state is
    the global batch's, whatever the rank count), but it turns only its own rows into arrays, and
    its sources skip decoding or rendering the other rows' images where they can
    (`models.data.sources`: `make_lazy`).

    With data workers (`pool`), a batch is served one batch late: a worker stacks its images while
    this process packs the next (`models.data.workers.WorkerPool.gather`); `state_dict` is the
    state after the batch served, and an error met packing the next batch is raised after it, so
    every batch, state and failure point is the in-process path's. Subclasses implement `_next`,
    `_state` and `_load_state`.
    """

    rank, world = 0, 1
    image_size: int | None = None  # the target a batch's images are stacked at (streams with images)
    pool = None  # a models.data.workers.WorkerPool parsing this stream's file records ahead

    def __iter__(self) -> "BatchStream":
        return self

    def select_rows(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world
        if world > 1:
            for source in self._image_sources():
                source.make_lazy()

    def _image_sources(self) -> list:
        return []

    def worker_parts(self) -> list[tuple[str, Any]]:
        """(role, source) of each file source whose records data workers may parse."""
        return [(role, s) for role, s in self._roles() if getattr(s, "parallel", True) and hasattr(s, "attach")]

    def _roles(self) -> list[tuple[str, Any]]:
        return []

    def _mine(self, rows: list, row_images: list[list], pad_id: int,
              counts: list[int] | None = None) -> tuple[list, list, list[int]]:
        rows, images, counts = rank_rows(rows, row_images, self.rank, self.world, pad_id, counts)
        if self.pool is not None and any(decodes_file(im) for im in images):
            images = self.pool.materialise([im if decodes_file(im) else materialise(im) for im in images])
        if self.pool is not None:  # stacked by a worker while the next batch is packed
            images = self.pool.gather(images, self.image_size) or images
        return rows, images, counts

    _ahead: deque | None = None
    _served: dict | None = None
    _failed: BaseException | None = None

    def __next__(self) -> Batch:
        if self.pool is None:
            return self._next()
        if self._ahead is None:
            self._ahead = deque()
        while len(self._ahead) <= LOOKAHEAD and self._failed is None:
            try:
                batch = self._next()
            except DataWorkerError:  # the pool is gone: nothing packed can be finished
                raise
            except Exception as exc:  # noqa: BLE001 — raised where the stream would have: after
                self._failed = exc    # the batches packed before it are served
                break
            self._ahead.append((batch, self._state()))
        if not self._ahead:
            failed, self._failed = self._failed, None
            raise failed if failed is not None else StopIteration
        batch, self._served = self._ahead.popleft()
        if isinstance(batch.images, Gathering):
            batch.images = batch.images.result()
        return batch

    def state_dict(self) -> dict:
        return self._served if self._ahead else self._state()

    def load_state_dict(self, state: dict) -> None:
        for batch, _ in self._ahead or ():  # a worker may still write a packed batch's images
            if isinstance(batch.images, Gathering):
                batch.images.discard()
        self._ahead, self._served, self._failed = None, None, None
        self._load_state(state)

    def _next(self) -> Batch:
        raise NotImplementedError

    def _state(self) -> dict:
        raise NotImplementedError

    def _load_state(self, state: dict) -> None:
        raise NotImplementedError


def _skipped(*sources) -> int:
    return sum(s.skipped for s in sources if s is not None)


class TextStream(BatchStream):
    """Packed documents, EOS-separated, every position a text target."""

    def __init__(self, source, tok, *, batch_size: int, seq_len: int) -> None:
        if batch_size < 1 or seq_len < 1:
            raise DataError(f"batch_size and seq_len must be positive, got {batch_size}, {seq_len}")
        self.source, self.tok, self.packer = source, tok, TextPacker(source, tok)
        self.batch_size, self.seq_len, self.batches = batch_size, seq_len, 0

    def _next(self) -> Batch:
        before = self.source.skipped
        rows = [text_row(self.packer, self.seq_len) for _ in range(self.batch_size)]
        self.batches += 1
        rows, _, _ = self._mine(rows, [[] for _ in rows], self.tok.pad_id)
        return rows_to_batch(rows, [], pad_id=self.tok.pad_id, image_counts=[0], image_size=1,
                             skipped=self.source.skipped - before)

    def _roles(self) -> list[tuple[str, Any]]:
        return [("text", self.source)]

    def _state(self) -> dict:
        return {"batches": self.batches, "text": self.packer.state_dict()}

    def _load_state(self, state: dict) -> None:
        self.batches = int(state["batches"])
        self.packer.load_state_dict(state["text"])


class MixedStream(BatchStream):
    """The image stage's mix of text, image-caption and instruction data (see module docstring)."""

    def __init__(self, text, pairs, instructions, tok, *, batch_size: int, seq_len: int,
                 image_ratio: float, instruction_share: float, image_size: int,
                 image_tokens: int) -> None:
        _check_mix(text, instructions, seq_len, image_ratio, instruction_share, image_tokens)
        self.text, self.pairs, self.instructions, self.tok = text, pairs, instructions, tok
        self.packer = TextPacker(text, tok) if text is not None else None
        self.B, self.L, self.ratio, self.share = batch_size, seq_len, image_ratio, instruction_share
        self.image_size, self.image_tokens = image_size, image_tokens
        self.counts = {"image": 0, "total": 0, "instruction": 0, "image_part": 0, "batches": 0}
        self.row_estimate = float(seq_len)  # image tokens the last image row held
        self.pending = None  # (role, ids, kinds, image, state_before): drawn, did not fit
        # An image row before it is filled: padding that scores nothing (copied for each row).
        self._blank = (np.full(seq_len + 1, tok.pad_id, np.int64), np.full(seq_len + 1, LOSS_NONE, np.int8))

    def _next(self) -> Batch:
        before = _skipped(self.text, self.pairs, self.instructions)
        rows, row_images, counts = [], [], []
        for _ in range(self.B):
            images: list = []
            row, n_image = self._image_row(images) if self._wants_image_row() else (
                text_row(self.packer, self.L), 0)
            rows.append(row)
            row_images.append(images)
            counts.append(n_image)
            self.counts["image"] += n_image
            self.counts["total"] += int(np.count_nonzero(row[0][:self.L] != self.tok.pad_id))
        self.counts["batches"] += 1
        rows, images, counts = self._mine(rows, row_images, self.tok.pad_id, counts)
        return rows_to_batch(rows, images, pad_id=self.tok.pad_id, image_counts=counts,
                             image_size=self.image_size,
                             skipped=_skipped(self.text, self.pairs, self.instructions) - before)

    def _image_sources(self) -> list:
        return [s for s in (self.pairs, self.instructions) if s is not None]

    def _roles(self) -> list[tuple[str, Any]]:
        return [(r, s) for r, s in (("text", self.text), ("pairs", self.pairs),
                                    ("instructions", self.instructions)) if s is not None]

    def _deviation(self) -> float:
        return self.counts["image"] - self.ratio * self.counts["total"]

    def _wants_image_row(self) -> bool:
        """Text row, or image row (text- or pad-filled), whichever lands nearest the ratio."""
        if self.ratio <= 0.0:
            return False
        dev, e, L = self._deviation(), self.row_estimate, self.L
        text = abs(dev - self.ratio * L) if self.packer is not None else float("inf")
        return min(abs(dev + e - self.ratio * L), abs(dev + e * (1 - self.ratio))) < text

    def _draw(self):
        use_instr = self.share > 0 and self.counts["instruction"] <= self.share * self.counts["image_part"]
        role, source = ("instructions", self.instructions) if use_instr else ("pairs", self.pairs)
        sample, state = source.next()
        image, text = sample
        ids, kinds = self._encode(role, text, image)
        return role, ids, kinds, image, state

    def _encode(self, role: str, text, image) -> tuple[list[int] | CaptionSample, list[int] | None]:
        """A text-only conversation (a LLaVA record without an image) gets no image positions. A
        caption comes as a `CaptionSample` (its kinds implied), a conversation as (ids, kinds)."""
        if role == "instructions":
            return encode_conversation(self.tok, text, self.image_tokens if image is not None else 0, self.L)
        return caption_sample(self.tok, text, self.image_tokens, self.L), None

    def _image_row(self, images: list) -> tuple[tuple[np.ndarray, np.ndarray], int]:
        row_ids, row_kinds = self._blank[0].copy(), self._blank[1].copy()
        n_image = 0
        while True:
            drawn = self.pending or self._draw()
            self.pending = None
            n = len(drawn[1])
            if n_image + n > self.L:
                self.pending = drawn
                break
            role, s_ids, s_kinds, image, _ = drawn
            if s_kinds is None:
                s_ids.write(row_ids, row_kinds, n_image, self.tok.image_id)
            else:
                row_ids[n_image:n_image + n], row_kinds[n_image:n_image + n] = s_ids, s_kinds
            n_image += n
            if image is not None:
                images.append(image)
            self.counts["image_part"] += n
            if role == "instructions":
                self.counts["instruction"] += n
        self.row_estimate = float(n_image)
        dev = self._deviation()
        # Fill the tail with text unless padding keeps the image share nearer its target
        # (high ratios: a text tail would cap the share below what was asked).
        if self.packer is not None and (abs(dev + n_image - self.ratio * self.L)
                                        <= abs(dev + n_image * (1 - self.ratio))):
            row_ids[n_image:] = self.packer.take(self.L - n_image, peek=True)
            row_kinds[n_image:] = LOSS_TEXT
        return (row_ids, row_kinds), n_image

    def _state(self) -> dict:
        pending = None if self.pending is None else {"role": self.pending[0], "state": self.pending[4]}
        return {"counts": dict(self.counts), "row_estimate": self.row_estimate, "pending": pending,
                "text": self.packer.state_dict() if self.packer else None,
                "pairs": self.pairs.state_dict(),
                "instructions": self.instructions.state_dict() if self.instructions else None}

    def _load_state(self, state: dict) -> None:
        self.counts = {k: int(v) for k, v in state["counts"].items()}
        self.row_estimate = float(state["row_estimate"])
        if self.packer is not None:
            self.packer.load_state_dict(state["text"])
        self.pairs.load_state_dict(state["pairs"])
        if self.instructions is not None:
            self.instructions.load_state_dict(state["instructions"])
        self.pending = None
        if state["pending"] is not None:  # re-read the drawn sample from where it started
            role = state["pending"]["role"]
            source = self.pairs if role == "pairs" else self.instructions
            source.load_state_dict(state["pending"]["state"])
            (image, text), st = source.next()
            self.pending = (role, *self._encode(role, text, image), image, st)


def _check_mix(text, instructions, seq_len, ratio, share, image_tokens) -> None:
    if not 0.0 <= ratio <= 1.0:
        raise DataError(f"image_ratio must be in [0, 1], got {ratio}")
    if not 0.0 <= share <= 1.0:
        raise DataError(f"instruction_share must be in [0, 1], got {share}")
    if image_tokens < 1 or image_tokens >= seq_len:
        raise DataError(f"image_tokens ({image_tokens}) must be in [1, seq_len={seq_len})")
    if text is None and ratio < 1.0:
        raise DataError("a mix with image_ratio < 1 needs a text source")
    if instructions is None and share > 0.0:
        raise DataError("instruction_share > 0 needs an instruction source")


class CaptionPairStream(BatchStream):
    """Image-caption pairs for contrastive encoder pre-training: captions padded right."""

    def __init__(self, source, tok, *, batch_size: int, image_size: int, max_caption_len: int) -> None:
        self.source, self.tok, self.B, self.Lc = source, tok, batch_size, max_caption_len
        self.image_size, self.batches = image_size, 0

    def _next(self) -> Batch:
        before = self.source.skipped
        rows, images = [], []
        for _ in range(self.B):
            (image, caption), _ = self.source.next()
            ids = (token_ids(self.tok, caption)[: self.Lc - 1] + [self.tok.eos_id])
            pad = self.Lc + 1 - len(ids)
            rows.append((ids + [self.tok.pad_id] * pad, [1] * len(ids) + [LOSS_NONE] * pad))
            images.append(image)
        self.batches += 1
        batch = rows_to_batch(rows, images, pad_id=self.tok.pad_id, image_counts=[],
                              image_size=self.image_size, skipped=self.source.skipped - before)
        batch.n_image_tokens = batch.n_tokens
        return batch

    def _roles(self) -> list[tuple[str, Any]]:
        return [("pairs", self.source)]

    def _state(self) -> dict:
        return {"batches": self.batches, "source": self.source.state_dict()}

    def _load_state(self, state: dict) -> None:
        self.batches = int(state["batches"])
        self.source.load_state_dict(state["source"])
