"""Fixed held-out sets of a data source, for the validation losses every eval step writes.

The built-in world draws them from random streams that no training stream reads (same
distributions, never trained on); a shard source names its held-out shards in its `heldout`
option (a path or glob), read in file order, and has no held-out set without one. The sets depend
only on the source, so every step that trained on a source is measured on the same tokens.
"""

from __future__ import annotations

import dataclasses

from models.data.packing import TextPacker, encode_caption, rows_to_batch, text_row
from models.data.sources import WorldSource, open_source, world_data
from models.data.types import LOSS_NONE, Batch

HELDOUT_TEXT_TOKENS = 16_384  # text tokens scored per eval (packed into rows of the trunk's length)
HELDOUT_CAPTIONS = 256  # image-caption pairs scored per eval
ROWS_PER_BATCH = 32


def _heldout_samples(source, role: str, image_size: int):
    """A sample stream over the source's held-out set, or None when it has none."""
    if source.kind == "world":
        wd = world_data(source)
        if role == "text":
            return WorldSource(wd.heldout_text)
        return WorldSource(lambda i: wd.heldout_pair(i, image_size))
    if source.kind == "tokens":  # the held-out shards of the text it was tokenised from
        from models.data.tokens import origin_source

        source = origin_source(source)
    path = source.option("heldout")
    if not path:
        return None
    options = dict(source.options) | {"shuffle_shards": False}
    shards = dataclasses.replace(source, paths=(str(path),), options=tuple(sorted(options.items())))
    return open_source(shards, role, image_size=image_size)


def heldout_text(source, tok, *, seq_len: int, tokens: int = HELDOUT_TEXT_TOKENS) -> list[Batch] | None:
    """The first `tokens` held-out text tokens as packed rows of seq_len (None: no held-out set)."""
    samples = _heldout_samples(source, "text", image_size=1)
    if samples is None:
        return None
    packer = TextPacker(samples, tok)
    rows = [text_row(packer, seq_len) for _ in range(max(1, tokens // seq_len))]
    return [rows_to_batch(rows[i:i + ROWS_PER_BATCH], [], pad_id=tok.pad_id, image_counts=[0],
                          image_size=1, skipped=0) for i in range(0, len(rows), ROWS_PER_BATCH)]


def heldout_captions(source, tok, *, seq_len: int, image_size: int, image_tokens: int,
                     n: int = HELDOUT_CAPTIONS) -> list[Batch] | None:
    """`n` held-out pairs, one per row: image placeholders, caption, EOS; loss on the caption."""
    samples = _heldout_samples(source, "pairs", image_size=image_size)
    if samples is None:
        return None
    pairs = [samples.next()[0] for _ in range(n)]
    batches = []
    for i in range(0, n, ROWS_PER_BATCH):
        chunk = pairs[i:i + ROWS_PER_BATCH]
        rows = [encode_caption(tok, caption, image_tokens, seq_len + 1) for _, caption in chunk]
        width = max(len(ids) for ids, _ in rows)
        padded = [(ids + [tok.pad_id] * (width - len(ids)), kinds + [LOSS_NONE] * (width - len(ids)))
                  for ids, kinds in rows]
        batches.append(rows_to_batch(padded, [image for image, _ in chunk], pad_id=tok.pad_id,
                                     image_counts=[len(ids) for ids, _ in rows], image_size=image_size,
                                     skipped=0))
    return batches
