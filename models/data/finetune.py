"""Instruction fine-tuning data: a finite dataset seen for a number of epochs, one conversation per
row (padded to the batch's longest, never packed), loss on assistant responses only. Each epoch is
a seeded shuffle cut into megabatches of GROUP_BATCHES batches whose conversations are sorted by
length before they are split (LLaVA's length grouping), so a batch holds rows of similar length.
Batch k is a pure function of (seed, k), so the stream resumes exactly and has a known length.

Text replay (optional): each batch also carries packed rows of the model's own text data, loss on
every token, so that they are `replay_share` of its rows. LLaVA-1.5's mix holds text-only
conversations and VILA re-blends text for the same reason: a fine-tune long or fast enough to teach
the VL tasks otherwise erases what pre-training taught about text.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from models.data import files
from models.data import readers as rd
from models.data.errors import BadRecordError, DataError, check_on_bad_record
from models.data.packing import TextPacker, encode_conversation, rows_to_batch, text_row
from models.data.sources import image_size_for, llava_parser, resolve_paths, world_data
from models.data.streams import BatchStream
from models.data.types import LOSS_NONE, Batch
from models.steps import replay_rows

WORLD_FINETUNE_SAMPLES = 4000  # the world's instruction set size when max_samples is 0
PAD_MULTIPLE = 8  # batch widths are rounded up to this (fewer distinct shapes)
# Batches are cut from megabatches of this many batches' conversations sorted by length, as
# LLaVA groups by length: rows of similar length share a batch, so little of it is padding.
GROUP_BATCHES = 8


class InstructionSet:
    """Random access to a source's conversations: the world's, or LLaVA JSON files."""

    def __init__(self, source, image_size: int, max_samples: int = 0) -> None:
        self.image_size, self.lazy, self.source_kind = image_size_for(source, image_size), False, source.kind
        if source.kind == "world":
            wd = world_data(source)
            # The world generates any number: as many as asked for, else its default size.
            n = int(source.option("finetune_samples", max_samples or WORLD_FINETUNE_SAMPLES))
            # A stream of its own (offset indices), apart from the image stage's instruction mix.
            self._get = lambda i: wd.instruction(10**9 + i, image_size, lazy=self.lazy)
            self._n = n
        elif source.kind == "llava":
            store = files.storage_of(source)
            self._records = [(path, idx, rec) for path in resolve_paths(source)
                             for idx, rec in rd.iter_llava(path, storage=store)]
            self._n = len(self._records)
            self._get, self._parse_llava = self._parse, llava_parser(source, self.image_size)
        else:
            raise DataError(f"data source {source.name!r}: kind {source.kind!r} is not fine-tune "
                            "data; use 'world' or 'llava'")
        if self._n == 0:
            raise DataError(f"data source {source.name!r} holds no fine-tune records")

        self.prefetch = None  # models.data.workers.Prefetch: records parsed by data workers

    def make_lazy(self) -> None:
        """Decode (or render) a conversation's image only when a rank trains on its row."""
        self.lazy = True

    @property
    def parse(self):
        """A LLaVA record → (image, turns), as data workers run it (llava sources only)."""
        return partial(self._parse_llava, lazy=self.lazy)

    def attach(self, prefetch) -> None:
        self.prefetch = prefetch

    def _parse(self, i: int):
        path, idx, rec = self._records[i]
        if isinstance(rec, BadRecordError):
            raise rec
        return self._parse_llava(rec, path, idx, lazy=self.lazy)

    def outcomes(self, indices) -> list[tuple[str, object]]:
        """("ok", sample) or ("bad", BadRecordError) of each index, in order (by the data workers
        when attached)."""
        if self.prefetch is None or not hasattr(self, "_records"):
            out = []
            for i in indices:
                try:
                    out.append(("ok", self[int(i)]))
                except BadRecordError as err:
                    out.append(("bad", err))
            return out
        records = [self._records[int(i)] for i in indices]
        bad = {k: rec for k, (_, _, rec) in enumerate(records) if isinstance(rec, BadRecordError)}
        good = [(rec, path, idx) for k, (path, idx, rec) in enumerate(records) if k not in bad]
        done = iter(self.prefetch.map_records(good))
        return [("bad", bad[k]) if k in bad else next(done) for k in range(len(records))]

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int):
        return self._get(i)


class FinetuneStream(BatchStream):
    """`epochs` shuffled passes; StopIteration at the end; len() = number of batches.

    With `replay` (a TextPacker over text data) each batch holds `replay_rows(batch_size,
    replay_share)` text rows after its conversations, as wide as the batch.
    """

    def __init__(self, data: InstructionSet, tok, *, batch_size: int, seq_len: int, image_tokens: int,
                 epochs: int, seed: int, max_samples: int = 0, on_bad_record: str = "error",
                 replay: TextPacker | None = None, replay_share: float = 0.0) -> None:
        if epochs < 1 or batch_size < 1:
            raise DataError(f"epochs and batch_size must be positive, got {epochs}, {batch_size}")
        if image_tokens >= seq_len:
            raise DataError(f"image_tokens ({image_tokens}) must be < seq_len ({seq_len})")
        self.data, self.tok, self.B, self.L = data, tok, batch_size, seq_len
        self.image_tokens, self.epochs, self.seed = image_tokens, epochs, seed
        self.n = min(len(data), max_samples) if max_samples > 0 else len(data)
        self.per_epoch = math.ceil(self.n / batch_size)
        self.on_bad, self.batch = check_on_bad_record(on_bad_record), 0
        self._cached: tuple | None = None
        self.replay = replay
        self.n_replay = replay_rows(batch_size, replay_share) if replay is not None else 0

    def __len__(self) -> int:
        return self.per_epoch * self.epochs

    def _roles(self) -> list:
        roles = [("instructions", self.data)] if self.data.source_kind == "llava" else []
        return roles + ([("text", self.replay.source)] if self.replay is not None else [])

    def _image_sources(self) -> list:
        # A bad record skipped on one rank must be skipped on all: only "error" defers decoding.
        return [self.data] if self.on_bad == "error" else []

    def _megabatch(self, epoch: int, j: int) -> tuple[list[list[tuple]], int]:
        """Megabatch j of `epoch`: its conversations sorted by length into batches, in a seeded
        order, and how many bad records it skipped. Cached: its batches are served in turn."""
        if self._cached is not None and self._cached[0] == (epoch, j):
            return self._cached[1], self._cached[2]
        span = GROUP_BATCHES * self.B
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n)[j * span:(j + 1) * span]
        good, skipped = [], 0
        for status, sample in self.data.outcomes(order):
            if status == "bad":
                if self.on_bad == "error":
                    raise sample
                skipped += 1
                continue
            image, turns = sample
            # A text-only conversation (no image) has no image positions.
            n_image = self.image_tokens if image is not None else 0
            good.append((encode_conversation(self.tok, turns, n_image, self.L), image))
        good.sort(key=lambda g: len(g[0][0]))  # stable: equal lengths keep the shuffled order
        n_batches = math.ceil(len(order) / self.B)
        chunks = np.array_split(np.arange(len(good)), n_batches)
        serve = np.random.default_rng([self.seed, epoch, j]).permutation(n_batches)
        batches = [[good[int(c)] for c in chunks[int(s)]] for s in serve]
        self._cached = ((epoch, j), batches, skipped)
        return batches, skipped

    def _next(self) -> Batch:
        if self.batch >= len(self):
            raise StopIteration
        epoch, b = divmod(self.batch, self.per_epoch)
        batches, skipped = self._megabatch(epoch, b // GROUP_BATCHES)
        entries = batches[b % GROUP_BATCHES]
        skipped = skipped if b % GROUP_BATCHES == 0 else 0  # a megabatch's skips, reported once
        self.batch += 1
        if not entries:
            raise DataError(f"fine-tune batch {self.batch - 1}: every record was bad")
        rows, images = [row for row, _ in entries], [image for _, image in entries]
        # Pad to the batch's longest conversation (a multiple of PAD_MULTIPLE), not to seq_len:
        # under causal attention real positions never see the padding, so only the cost changes.
        longest = max(len(ids) for ids, _ in rows)
        width = min(self.L, -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE) + 1  # L+1: inputs and targets
        conversation_tokens = sum(min(len(ids), width - 1) for ids, _ in rows)  # input positions
        rows = [(ids + [self.tok.pad_id] * (width - len(ids)), kinds + [LOSS_NONE] * (width - len(ids)))
                for ids, kinds in rows]
        rows += [text_row(self.replay, width - 1) for _ in range(self.n_replay)]
        row_images = [[image] if image is not None else [] for image in images]
        row_images += [[] for _ in range(self.n_replay)]
        rows, images, _ = self._mine(rows, row_images, self.tok.pad_id)
        batch = rows_to_batch(rows, images, pad_id=self.tok.pad_id, image_counts=[],
                              image_size=self.data.image_size, skipped=skipped)
        batch.n_image_tokens = conversation_tokens
        return batch

    def _state(self) -> dict:
        state: dict = {"batch": self.batch}
        if self.replay is not None:
            state["replay"] = self.replay.state_dict()
        return state

    def _load_state(self, state: dict) -> None:
        self.batch = int(state["batch"])
        if self.replay is not None and "replay" in state:
            self.replay.load_state_dict(state["replay"])


def instruction_set(source, image_size: int, max_samples: int = 0) -> InstructionSet:
    return InstructionSet(source, image_size, max_samples)


__all__ = ["FinetuneStream", "InstructionSet", "instruction_set"]
