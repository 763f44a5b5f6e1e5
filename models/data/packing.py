"""Token-level building blocks of batches: encoding samples, packing text, assembling rows.

A row is built as L+1 token slots with, for each slot, the loss kind of predicting it (-1 for no
loss); tokens are the first L slots and targets the last L, so a row's final target is the real
next token whenever one is known (text continues into the next row).
"""

from __future__ import annotations

import functools
import itertools
from typing import Iterator, NamedTuple

import numpy as np

from models.data.readers import stack_images
from models.data.tokenizer import encode_chunks
from models.data.types import IGNORE, LOSS_CAPTION, LOSS_INSTRUCTION, LOSS_NONE, LOSS_TEXT, Batch, materialise
from models.data.workers import Gathering


def token_ids(tok, text: "str | list[int]") -> list[int]:
    """`text`'s token ids: encoded here, or as a data worker already encoded them."""
    return tok.encode(text) if isinstance(text, str) else text


def document_pieces(tok, text: "str | np.ndarray | list[int]") -> Iterator[np.ndarray]:
    """A document's token ids a bounded piece at a time, as arrays: encoded here (`encode_chunks`),
    or sliced (views, no copy) from the ids a data worker already encoded
    (`models.data.workers.tokenise`) or a `tokens` shard held."""
    if isinstance(text, str):
        return (np.array(piece, np.int64) for piece in encode_chunks(tok, text))
    step = 1 << 16
    ids = np.asarray(text)
    return (ids[i:i + step] for i in range(0, len(ids), step))


def encode_caption(tok, caption: str, image_tokens: int, max_len: int) -> tuple[list[int], list[int]]:
    """Image placeholders, the caption, EOS; loss on the caption and EOS (truncated to max_len)."""
    cap = caption_sample(tok, caption, image_tokens, max_len).caption
    return [tok.image_id] * image_tokens + cap, [LOSS_NONE] * image_tokens + [LOSS_CAPTION] * len(cap)


class CaptionSample(NamedTuple):
    """An image-caption sample as `encode_caption` lays it out — `image_tokens` placeholders, then
    `caption` (its ids and EOS, truncated), loss on the caption — kept this compact so that a row
    is filled with two slice writes, not from a list of ~200 Python ints."""

    image_tokens: int
    caption: list[int]

    def __len__(self) -> int:
        return self.image_tokens + len(self.caption)

    def write(self, ids: np.ndarray, kinds: np.ndarray, at: int, image_id: int) -> None:
        """Lay the sample out at `at` of a row (`ids`, `kinds`)."""
        cap = at + self.image_tokens
        ids[at:cap] = image_id
        kinds[at:cap] = LOSS_NONE
        ids[cap:cap + len(self.caption)] = self.caption
        kinds[cap:cap + len(self.caption)] = LOSS_CAPTION


def caption_sample(tok, caption: "str | list[int]", image_tokens: int, max_len: int) -> CaptionSample:
    """`encode_caption`'s sample, compact (the same ids and loss kinds)."""
    return CaptionSample(image_tokens, token_ids(tok, caption)[: max(0, max_len - image_tokens - 1)] + [tok.eos_id])


def encode_conversation(tok, turns, image_tokens: int, max_len: int) -> tuple[list[int], list[int]]:
    """Image, then `<user> q <assistant> a` per turn, then EOS; loss on answers and the token that
    ends each answer (so the model learns to stop). Truncated to max_len."""
    ids, kinds = [tok.image_id] * image_tokens, [LOSS_NONE] * image_tokens
    after_answer = False
    for question, answer in turns:
        q = [tok.user_id] + token_ids(tok, question) + [tok.assistant_id]
        a = token_ids(tok, answer)
        ids += q + a
        kinds += [LOSS_INSTRUCTION if after_answer else LOSS_NONE] + [LOSS_NONE] * (len(q) - 1)
        kinds += [LOSS_INSTRUCTION] * len(a)
        after_answer = True
    ids.append(tok.eos_id)
    kinds.append(LOSS_INSTRUCTION)
    return ids[:max_len], kinds[:max_len]


class TextPacker:
    """Documents of a text source as one token stream, EOS after each; resumable mid-document.

    A document is encoded a bounded piece at a time (`encode_chunks`), as it is consumed, so a
    single huge record costs its text plus one piece's encoding, never its whole encoding; `pos`
    counts the tokens of the current document already taken (what a resume skips). Pieces stay
    arrays (a token shard's are views of its mapping) and rows are filled from them slice by slice:
    no token becomes a Python int on the way to the batch.
    """

    def __init__(self, source, tok) -> None:
        self.source, self.tok = source, tok
        self.chunk: np.ndarray = _EMPTY  # the current piece of the current document's tokens
        self.at = 0  # next token inside `chunk`
        self.pieces: Iterator[np.ndarray] = iter(())  # the document's pieces still to encode
        self.pos, self.doc_state = 0, None
        self.eos = np.array([tok.eos_id], np.int64)

    def _load(self) -> None:
        text, self.doc_state = self.source.next()
        self.pieces = itertools.chain(document_pieces(self.tok, text), [self.eos])
        self.chunk, self.at, self.pos = _EMPTY, 0, 0

    def _fill(self) -> None:
        """Make `chunk[at]` the next token, encoding the next piece or loading the next document."""
        while self.at >= len(self.chunk):
            piece = next(self.pieces, None)
            if piece is None:
                self._load()
            else:
                self.chunk, self.at = piece, 0

    def take(self, n: int, *, peek: bool = False) -> np.ndarray:
        """The next n tokens (int64), and with `peek` the one after them too, not consumed."""
        out = np.empty(n + peek, np.int64)
        got = 0
        while got < n:
            self._fill()
            k = min(n - got, len(self.chunk) - self.at)
            out[got:got + k] = self.chunk[self.at:self.at + k]
            got += k
            self.at += k
            self.pos += k
        if peek:
            out[n] = self.peek()
        return out

    def peek(self) -> int:
        self._fill()
        return int(self.chunk[self.at])

    def state_dict(self) -> dict:
        return {"doc": self.doc_state, "pos": self.pos, "source": self.source.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state["doc"] is None:
            self.source.load_state_dict(state["source"])
            self.chunk, self.at, self.pieces, self.pos, self.doc_state = _EMPTY, 0, iter(()), 0, None
        else:
            self.source.load_state_dict(state["doc"])
            self._load()
            self._skip(int(state["pos"]))

    def _skip(self, n: int) -> None:
        """Drop the first n tokens of the current document (a resume), a piece at a time."""
        while n > 0:
            piece = next(self.pieces, None)
            if piece is None:
                break
            self.chunk, self.at = piece, min(n, len(piece))
            n -= self.at
            self.pos += self.at


_EMPTY = np.zeros(0, np.int64)


def rows_to_batch(rows: list[tuple[list[int], list[int]]], images: list[np.ndarray], *, pad_id: int,
                  image_counts: list[int], image_size: int, skipped: int) -> Batch:
    """Rows of L+1 (ids, kinds) slots → a Batch; `image_counts[b]` = image-data tokens of row b."""
    # A row is lists (samples encoded here) or arrays (packed text): stacked row by row.
    ids = np.stack([np.asarray(r[0], np.int64) for r in rows])
    kinds = np.stack([np.asarray(r[1], np.int8) for r in rows])
    tokens, targets, loss_kind = ids[:, :-1], ids[:, 1:].copy(), kinds[:, 1:].copy()
    targets[loss_kind == LOSS_NONE] = IGNORE
    # uint8 as decoded: normalised on the device (models.vision.pixels), a quarter of the bytes
    # A Gathering: a data worker is stacking them (the stream waits for it when it serves the batch).
    imgs = (images if isinstance(images, Gathering)
            else stack_images([materialise(i) for i in images], image_size) if images
            else np.zeros((0, image_size, image_size, 3), np.uint8))
    return Batch(tokens=np.ascontiguousarray(tokens), targets=targets, loss_kind=loss_kind,
                 images=imgs, n_tokens=int((tokens != pad_id).sum()),
                 n_image_tokens=int(sum(image_counts)), skipped_records=skipped)


def rank_rows(rows: list, row_images: list[list], rank: int, world: int, pad_id: int,
              counts: list[int] | None = None) -> tuple[list, list, list[int]]:
    """Rank `rank`'s share of a global batch's rows (of `world`), the images those rows hold, and
    their image-token counts. A batch of fewer rows than a multiple of the ranks (a fine-tune's
    last length-sorted group) is padded with rows that score nothing and hold no image."""
    counts = list(counts) if counts is not None else [0] * len(rows)
    pad = -len(rows) % world
    if pad:
        width = len(rows[0][0])
        rows = rows + [([pad_id] * width, [LOSS_NONE] * width)] * pad
        row_images, counts = row_images + [[]] * pad, counts + [0] * pad
    per = len(rows) // world
    mine = slice(rank * per, (rank + 1) * per)
    return rows[mine], [image for images in row_images[mine] for image in images], counts[mine]


def text_row(packer: TextPacker, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    return packer.take(seq_len, peek=True), _text_kinds(seq_len + 1)


@functools.lru_cache(maxsize=8)
def _text_kinds(n: int) -> np.ndarray:
    kinds = np.full(n, LOSS_TEXT, np.int8)
    kinds.flags.writeable = False  # shared by every text row of this length
    return kinds
