"""Held-out validation losses: fixed sets per source (the world's own held-out streams, a shard
source's `heldout` shards), the loss as training takes it, and the names analysis reads them by."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from analysis import schema
from models import heldout, stepfiles
from models.config import LMConfig
from models.data import heldout_captions, heldout_text
from models.data.heldout import HELDOUT_TEXT_TOKENS
from models.data.tokenizer import world_tokenizer
from models.data.types import IGNORE, LOSS_CAPTION
from models.data.world import WorldData
from models.steps import DataSource
from models.vlm import VLM

WORLD = DataSource(name="world", kind="world", options=(("seed", 0),))


def test_the_catalog_names_a_column_for_every_held_out_loss() -> None:
    assert set(schema.HELDOUT_LOSSES) == set(stepfiles.HELDOUT_TASKS)


def test_world_heldout_text_is_fixed_and_never_a_training_document() -> None:
    tok = world_tokenizer()
    first, again = heldout_text(WORLD, tok, seq_len=64), heldout_text(WORLD, tok, seq_len=64)
    assert sum(len(b.tokens) for b in first) == HELDOUT_TEXT_TOKENS // 64
    assert all(np.array_equal(a.tokens, b.tokens) for a, b in zip(first, again))
    wd = WorldData.from_seed(0)
    training = {wd.text(i) for i in range(3000)}  # far more than a CPU trunk reads
    assert not any(wd.heldout_text(i) in training for i in range(300))


def test_world_heldout_captions_score_the_caption_only() -> None:
    tok = world_tokenizer()
    batches = heldout_captions(WORLD, tok, seq_len=64, image_size=32, image_tokens=4, n=40)
    assert sum(len(b.tokens) for b in batches) == 40 and sum(len(b.images) for b in batches) == 40
    for b in batches:
        assert ((b.tokens == tok.image_id).sum(axis=1) == 4).all()  # one image per row
        scored = b.targets != IGNORE
        assert (b.loss_kind[scored] == LOSS_CAPTION).all() and scored.sum(axis=1).min() > 3


def test_a_shard_source_uses_its_heldout_shards_and_has_none_without(tmp_path) -> None:
    train, held = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train.write_text("\n".join(json.dumps({"text": "the red cube is big ."}) for _ in range(50)))
    held.write_text("\n".join(json.dumps({"text": f"the blue ball is small {i} ."}) for i in range(50)))
    source = DataSource(name="shards", kind="jsonl", paths=(str(train),))
    tok = world_tokenizer()
    assert heldout_text(source, tok, seq_len=16) is None
    with_val = DataSource(name="shards", kind="jsonl", paths=(str(train),), options=(("heldout", str(held)),))
    rows = np.concatenate([b.tokens for b in heldout_text(with_val, tok, seq_len=16, tokens=64)])
    assert tok.encode("blue")[0] in rows and tok.encode("red")[0] not in rows


def test_mean_loss_is_the_training_loss_over_scored_positions() -> None:
    torch.manual_seed(0)
    tok = world_tokenizer()
    model = VLM(LMConfig(vocab_size=512, d_model=32, n_layers=1, n_heads=2, ffn_hidden=64, max_seq_len=64))
    batches = heldout_text(WORLD, tok, seq_len=32, tokens=256)
    loss, n = heldout.mean_loss(model, batches, tok.image_id, torch.device("cpu"))
    assert n == 256
    tokens = torch.as_tensor(np.concatenate([b.tokens for b in batches]))
    targets = torch.as_tensor(np.concatenate([b.targets for b in batches]))
    with torch.no_grad():
        reference = torch.nn.functional.cross_entropy(model(tokens).flatten(0, 1).float(), targets.flatten())
    assert loss == pytest.approx(float(reference), rel=1e-5)
    assert loss == pytest.approx(np.log(512), rel=0.1)  # an untrained model is near uniform
