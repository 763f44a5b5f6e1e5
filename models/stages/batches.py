"""Batches on their way to a training step: data-layer batches as tensors, a global batch cut into
this rank's rows (DDP) and into micro-batches, and the stream wrapper a DataLoader iterates.

Resumability: each batch travels with the data stream's state *after* it, so a checkpoint taken
after optimizer step s records exactly where step s+1's batch starts, however far Lightning
prefetches. The stream's file records are parsed, decoded and tokenised ahead by data worker
processes (`models.data.workers`) when the run has any; packing stays here, so the batches are the
same for every worker count. Each batch carries `data_wait_s`, the seconds the training process
spent getting it (packing plus any wait for the workers): the step's metrics record it.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from models.data.types import IGNORE, LOSS_NONE


def to_tensors(batch: Any) -> dict[str, torch.Tensor | int]:
    """A data-layer Batch (numpy arrays) as tensors; images may be empty and keep their dtype."""
    out: dict[str, torch.Tensor | int] = {
        "tokens": torch.as_tensor(np.asarray(batch.tokens, dtype=np.int64)),
        "targets": torch.as_tensor(np.asarray(batch.targets, dtype=np.int64)),
        "loss_kind": torch.as_tensor(np.asarray(batch.loss_kind, dtype=np.int64)),
        "skipped_records": int(getattr(batch, "skipped_records", 0)),
    }
    images = getattr(batch, "images", None)
    if images is not None and len(images):  # uint8 from files and the world, float32 synthetic
        out["images"] = torch.as_tensor(np.ascontiguousarray(images))
    return out


def _take_rows(batch: dict[str, Any], spans: list[slice], image_id: int,
               image_tokens: int) -> list[dict[str, Any]]:
    """The batch's rows in each of `spans`, with the images those rows hold (images are stored row
    after row; their offsets are counted once for every span)."""
    if "images" in batch:
        per_row = (batch["tokens"] == image_id).sum(1) // image_tokens
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), per_row.cumsum(0)]).tolist()
    out = []
    for rows in spans:
        part = {k: (v[rows] if isinstance(v, torch.Tensor) and k != "images" else v)
                for k, v in batch.items()}
        if "images" in batch:
            part["images"] = batch["images"][offsets[rows.start]:offsets[rows.stop]]
        out.append(part)
    return out


def _pad_rows(batch: dict[str, Any], rows: int, image_id: int) -> dict[str, Any]:
    """The batch with `rows` more rows that score nothing (targets IGNORE, no image)."""
    tokens = batch["tokens"]
    filler = 0 if image_id != 0 else 1  # any token but the image placeholder
    extra = {"tokens": torch.full((rows, tokens.shape[1]), filler, dtype=tokens.dtype),
             "targets": torch.full((rows, tokens.shape[1]), IGNORE, dtype=batch["targets"].dtype),
             "loss_kind": torch.full((rows, tokens.shape[1]), LOSS_NONE, dtype=batch["loss_kind"].dtype)}
    return batch | {k: torch.cat([batch[k], v]) for k, v in extra.items()}


def split_rows(batch: dict[str, Any], rank: int, world: int, image_id: int,
               image_tokens: int) -> dict[str, Any]:
    """Rank `rank`'s rows of a global batch (DDP), with the images those rows hold.

    A batch of fewer rows than a multiple of the ranks (a fine-tune's last length-sorted group,
    bad records skipped) is padded with rows that score nothing: the loss is normalised by the
    global count of scored positions, so they change neither the loss nor the gradient.
    """
    if world == 1:
        return batch
    n = batch["tokens"].shape[0]
    if n % world:
        batch = _pad_rows(batch, world - n % world, image_id)
        n += world - n % world
    return _take_rows(batch, [slice(rank * n // world, (rank + 1) * n // world)], image_id,
                      image_tokens)[0]


def micro_batches(batch: dict[str, Any], size: int, image_id: int, image_tokens: int) -> dict[str, Any]:
    """The batch as consecutive chunks of at most `size` rows: {"micro": [chunk, …]}.

    The step accumulates their gradients, each chunk's loss sum over the whole batch's scored
    positions, so it computes the whole batch's gradient (up to float summation order).
    """
    n = batch["tokens"].shape[0]
    if size <= 0 or n <= size:
        return batch
    spans = [slice(i, min(i + size, n)) for i in range(0, n, size)]
    return {"micro": _take_rows(batch, spans, image_id, image_tokens),
            "skipped_records": batch.get("skipped_records", 0)}


class StreamDataset(IterableDataset):
    """Yields (tensors, stream state after this batch) from a BatchStream, finite or infinite;
    the tensors hold `data_wait_s`. With `pin`, images go to pinned memory, so that the copy to
    the GPU (Lightning's, non-blocking) overlaps the step."""

    def __init__(self, stream: Any, split: Callable[[dict], dict] | None = None, pin: bool = False) -> None:
        self.stream, self.split, self.pin = stream, split, pin

    def __iter__(self) -> Iterator[tuple[dict, dict]]:
        it = iter(self.stream)
        while True:
            start = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            tensors = to_tensors(batch)
            if self.pin and "images" in tensors:
                tensors["images"] = tensors["images"].pin_memory()
            tensors = self.split(tensors) if self.split else tensors
            tensors["data_wait_s"] = time.perf_counter() - start
            yield tensors, self.stream.state_dict()


def _first(item: Any) -> Any:
    return item


def make_loader(stream: Any, split: Callable[[dict], dict] | None = None, pin: bool = False) -> DataLoader:
    # num_workers=0: the stream's position (packing state) stays in this process to checkpoint it
    # exactly; the parallel work runs in the stream's own data workers (models.data.workers).
    return DataLoader(StreamDataset(stream, split, pin), batch_size=None, num_workers=0,
                      collate_fn=_first)
