"""Batch streams: determinism, exact resume at arbitrary positions, ratio accuracy, loss masks."""

from __future__ import annotations

import numpy as np
import pytest

from models.data import DataError, caption_pairs, finetune_epochs, get_tokenizer, mixed_stream, text_stream
from models.data.types import IGNORE
from models.steps import DataSource

WORLD = DataSource(name="world", kind="world", options=(("seed", 0),))
OTHER = DataSource(name="world", kind="world", options=(("seed", 1),))
TOK = get_tokenizer(WORLD)


def mixed(ratio=0.3, share=0.2, batch_size=4, seq_len=64, source=WORLD):
    return mixed_stream(source, source, source, TOK, batch_size=batch_size, seq_len=seq_len,
                        image_ratio=ratio, instruction_share=share, image_size=32, image_tokens=16,
                        seed=0)


def same(a, b) -> bool:
    return (np.array_equal(a.tokens, b.tokens) and np.array_equal(a.targets, b.targets)
            and np.array_equal(a.loss_kind, b.loss_kind) and np.array_equal(a.images, b.images)
            and (a.n_tokens, a.n_image_tokens) == (b.n_tokens, b.n_image_tokens))


def test_text_stream_packs_documents_with_next_token_targets():
    b = next(text_stream(WORLD, TOK, batch_size=3, seq_len=40, seed=0))
    assert b.tokens.shape == b.targets.shape == (3, 40) and b.tokens.dtype == np.int64
    assert np.array_equal(b.targets[:, :-1], b.tokens[:, 1:])
    assert (b.loss_kind == 0).all() and TOK.eos_id in b.tokens and b.n_tokens == 120
    assert b.images.shape[0] == 0 and b.n_image_tokens == 0
    # rows continue one stream: the last target of a row is the next row's first token
    assert np.array_equal(b.targets[:-1, -1], b.tokens[1:, 0])


@pytest.mark.parametrize("make", [
    lambda s: text_stream(s, TOK, batch_size=2, seq_len=48, seed=0),
    lambda s: mixed(source=s),
])
def test_same_seed_same_batches_other_seed_differs(make):
    a, b, c = make(WORLD), make(WORLD), make(OTHER)
    for _ in range(5):
        x, y, z = next(a), next(b), next(c)
        assert same(x, y)
    assert not same(x, z)


@pytest.mark.parametrize("kind", ["text", "mixed"])
@pytest.mark.parametrize("cut", [1, 3, 7])
def test_resume_equals_the_uninterrupted_stream(kind, cut):
    make = (lambda: text_stream(WORLD, TOK, batch_size=3, seq_len=50, seed=0)) if kind == "text" \
        else (lambda: mixed(ratio=0.4, share=0.3, batch_size=3))
    whole = [next(s) for s in [make()] for _ in range(cut + 6)]
    first = make()
    for _ in range(cut):
        next(first)
    import json
    state = json.loads(json.dumps(first.state_dict()))  # the state must be JSON-able
    resumed = make()
    next(resumed)  # a stream with history of its own must still resume exactly
    resumed.load_state_dict(state)
    for k in range(cut, cut + 6):
        assert same(next(resumed), whole[k]), f"batch {k} differs after resuming at {cut}"


@pytest.mark.parametrize("ratio,share,batch_size", [(0.01, 0.0, 16), (0.1, 0.5, 4), (0.3, 0.2, 8),
                                                    (0.5, 1.0, 2), (0.9, 0.1, 4)])
def test_image_token_share_holds_over_any_100_batches(ratio, share, batch_size):
    stream = mixed(ratio=ratio, share=share, batch_size=batch_size)
    batches = [next(stream) for _ in range(150)]
    img = np.array([b.n_image_tokens for b in batches], float)
    tot = np.array([b.n_tokens for b in batches], float)
    for start in (0, 25, 50):
        window = slice(start, start + 100)
        assert abs(img[window].sum() / tot[window].sum() - ratio) < 0.01
    instr = sum(int((b.loss_kind == 2).any(axis=1).sum()) for b in batches)
    assert (instr > 0) == (share > 0)
    counts = stream.state_dict()["counts"]
    assert abs(counts["instruction"] / counts["image_part"] - share) < 0.02


def test_pure_text_and_pure_image_mixes():
    text_only = next(mixed(ratio=0.0, share=0.0))
    assert text_only.n_image_tokens == 0 and text_only.images.shape[0] == 0
    image_only = next(mixed(ratio=1.0, share=0.0))
    assert image_only.n_image_tokens == image_only.n_tokens > 0
    assert (image_only.loss_kind != 0).all()


def test_image_rows_hold_whole_images_with_masked_targets():
    b = next(mixed(ratio=0.6, share=0.5, batch_size=8))
    runs = 0
    for row in range(8):
        is_img = b.tokens[row] == TOK.image_id
        edges = np.flatnonzero(np.diff(np.concatenate([[0], is_img.astype(int), [0]])))
        lengths = edges[1::2] - edges[::2]
        assert (lengths == 16).all()  # every image is one whole run of image_tokens
        runs += len(lengths)
        assert (b.targets[row][np.flatnonzero(is_img)[:-1] if is_img.any() else []] == IGNORE).all()
    assert runs == b.images.shape[0] and b.images.shape[1:] == (32, 32, 3)
    assert b.images.dtype == np.uint8  # as decoded: normalised on the device (models.vision.pixels)
    assert ((b.targets == IGNORE) == (b.loss_kind == -1)).all()
    assert {0, 1, 2} <= set(np.unique(b.loss_kind).tolist())
    # prompts (user questions) carry no loss: a <user> token is never followed by a loss target
    users = np.argwhere(b.tokens == TOK.user_id)
    assert all(b.loss_kind[r, c] == -1 for r, c in users)


def test_mix_rejects_bad_settings():
    with pytest.raises(DataError, match="image_ratio"):
        mixed(ratio=1.5)
    with pytest.raises(DataError, match="image_tokens"):
        mixed_stream(WORLD, WORLD, None, TOK, batch_size=2, seq_len=16, image_ratio=0.5,
                     instruction_share=0.0, image_size=32, image_tokens=16, seed=0)
    with pytest.raises(DataError, match="instruction source"):
        mixed_stream(WORLD, WORLD, None, TOK, batch_size=2, seq_len=64, image_ratio=0.5,
                     instruction_share=0.5, image_size=32, image_tokens=16, seed=0)
    with pytest.raises(DataError, match="cannot serve"):
        mixed_stream(WORLD, DataSource(name="t", kind="jsonl", paths=("/x",)), None, TOK,
                     batch_size=2, seq_len=64, image_ratio=0.5, instruction_share=0.0,
                     image_size=32, image_tokens=16, seed=0)


def test_caption_pairs_for_the_encoder():
    s = caption_pairs(WORLD, TOK, batch_size=6, image_size=32, max_caption_len=20, seed=0)
    b = next(s)
    assert b.tokens.shape == (6, 20) and b.images.shape == (6, 32, 32, 3)
    assert (b.tokens[:, 0] != TOK.pad_id).all() and TOK.image_id not in b.tokens
    state = s.state_dict()
    after = next(s)
    s2 = caption_pairs(WORLD, TOK, batch_size=6, image_size=32, max_caption_len=20, seed=0)
    s2.load_state_dict(state)
    assert same(next(s2), after)


def test_finetune_epochs_are_finite_resumable_and_loss_on_responses_only():
    make = lambda: finetune_epochs(WORLD, TOK, batch_size=8, seq_len=64, image_size=32,
                                   image_tokens=16, epochs=3, seed=0, max_samples=30)
    stream = make()
    assert len(stream) == 12
    batches = list(stream)
    assert len(batches) == 12 and sum(b.tokens.shape[0] for b in batches) == 90
    with pytest.raises(StopIteration):
        next(stream)
    for b in batches:
        assert set(np.unique(b.loss_kind).tolist()) <= {-1, 2}
        assert b.images.shape[0] == b.tokens.shape[0]
        # padded to the batch's longest conversation, rounded up to 8, never past seq_len
        width = b.tokens.shape[1]
        longest = int((np.concatenate([b.tokens, b.targets[:, -1:]], 1) != TOK.pad_id).sum(1).max())
        assert width % 8 == 0 and width <= 64 and width - 8 < longest <= width + 1
    assert len({b.tokens.shape[1] for b in batches}) > 1
    resumed = make()
    resumed.load_state_dict({"batch": 5})
    assert all(same(x, y) for x, y in zip(resumed, batches[5:]))
    # another epoch is another order of the same samples
    assert not same(batches[0], batches[4])


def test_finetune_batches_group_conversations_by_length_and_see_each_once_per_epoch():
    from models.data.finetune import InstructionSet
    from models.data.packing import encode_conversation

    data = InstructionSet(WORLD, 32, 30)
    expected = sorted(tuple(encode_conversation(TOK, data[i][1], 4, 64)[0]) for i in range(30))
    batches = list(finetune_epochs(WORLD, TOK, batch_size=8, seq_len=64, image_size=32,
                                   image_tokens=4, epochs=1, seed=3, max_samples=30))
    assert sorted(len(b.tokens) for b in batches) == [7, 7, 8, 8]  # 30 split into 4 batches
    seen, spans = [], []
    for b in batches:
        full = np.concatenate([b.tokens, b.targets[:, -1:]], 1)
        rows = [tuple(int(t) for t in row if t not in (TOK.pad_id, IGNORE)) for row in full]
        seen += rows
        spans.append((min(map(len, rows)), max(map(len, rows))))
    assert sorted(seen) == expected  # every conversation once
    spans.sort()
    # one megabatch sorted by length, then split: the batches' length ranges do not interleave
    assert all(hi <= next_lo for (_, hi), (next_lo, _) in zip(spans, spans[1:]))
    assert spans[0][0] < spans[-1][1]

def test_finetune_text_replay_rows_are_packed_text_and_resume_exactly():
    make = lambda: finetune_epochs(WORLD, TOK, batch_size=6, seq_len=64, image_size=32, image_tokens=4,
                                   epochs=2, seed=0, max_samples=24, replay_source=WORLD,
                                   replay_share=0.25)
    plain = list(finetune_epochs(WORLD, TOK, batch_size=6, seq_len=64, image_size=32, image_tokens=4,
                                 epochs=2, seed=0, max_samples=24))
    stream = make()
    batches = []
    for k in range(len(stream)):
        if k == 3:
            state = stream.state_dict()
        batches.append(next(stream))
    assert len(batches) == len(plain) == 8
    for b, p in zip(batches, plain):
        # 6 conversations as without replay, then round(6 · 0.25 / 0.75) = 2 text rows as wide
        assert b.tokens.shape == (8, p.tokens.shape[1])
        assert np.array_equal(b.tokens[:6], p.tokens) and np.array_equal(b.images, p.images)
        text = b.loss_kind[6:]
        assert (text == 0).all() and (b.targets[6:] != -100).all()
        assert b.n_image_tokens == p.n_tokens and b.n_tokens == p.n_tokens + 2 * b.tokens.shape[1]
        assert TOK.image_id not in b.tokens[6:] and TOK.user_id not in b.tokens[6:]
    # the text rows are consecutive pieces of the world's corpus: row 2's first token is row 1's
    # last target (packed, not restarted), across batches too
    assert batches[0].tokens[7, 0] == batches[0].targets[6, -1]
    assert batches[1].tokens[6, 0] == batches[0].targets[7, -1]
    resumed = make()
    resumed.load_state_dict(state)
    assert all(same(x, y) for x, y in zip(resumed, batches[3:]))


def _rank_batches(make, world: int, n: int) -> list[list]:
    """n batches of each rank's stream (`select_rows`), and the streams' states after them."""
    out = []
    for rank in range(world):
        stream = make()
        stream.select_rows(rank, world)
        out.append(([next(stream) for _ in range(n)], stream.state_dict()))
    return out


@pytest.mark.parametrize(("kind", "world"), [("text", 3), ("mixed", 2), ("finetune", 4)])
def test_each_rank_gets_its_rows_and_renders_only_their_images(kind, world, monkeypatch):
    """Ranks' rows, in rank order, are the global batch (padded to a multiple of the ranks with
    rows that score nothing); every rank's stream state is the global stream's; a rank renders
    only its own rows' images."""
    import models.data.world as world_module

    rendered = []
    render = world_module.render
    monkeypatch.setattr(world_module, "render", lambda *a: rendered.append(1) or render(*a))
    make = {"text": lambda: text_stream(WORLD, TOK, batch_size=4, seq_len=40, seed=0),
            "mixed": lambda: mixed(ratio=0.6, share=0.3, batch_size=4),
            # 18 conversations in groups cut 4, 4, 4, 3, 3 (+1 text row each): 5 or 4 rows
            "finetune": lambda: finetune_epochs(WORLD, TOK, batch_size=4, seq_len=64, image_size=32,
                                                image_tokens=4, epochs=1, seed=0, max_samples=18,
                                                replay_source=WORLD, replay_share=0.2)}[kind]
    whole_stream = make()
    whole = [next(whole_stream) for _ in range(5)]
    rendered.clear()
    ranks = _rank_batches(make, world, 5)
    assert all(state == whole_stream.state_dict() for _, state in ranks)
    for k, batch in enumerate(whole):
        parts = [batches[k] for batches, _ in ranks]
        rows = batch.tokens.shape[0]
        assert [p.tokens.shape[0] for p in parts] == [-(-rows // world)] * world
        tokens = np.concatenate([p.tokens for p in parts])
        targets = np.concatenate([p.targets for p in parts])
        assert np.array_equal(tokens[:rows], batch.tokens) and np.array_equal(targets[:rows], batch.targets)
        assert (targets[rows:] == IGNORE).all() and TOK.image_id not in tokens[rows:]
        assert np.array_equal(np.concatenate([p.images for p in parts]), batch.images)
    assert len(rendered) == sum(b.images.shape[0] for b in whole)  # each image once, by its rank
