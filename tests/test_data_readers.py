"""Real-format readers and `write_world`: byte-identical shards, and every reader round-trips
what the world wrote (so the file path gives exactly the world's samples)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.data import eval_tasks, finetune_epochs, get_tokenizer, mixed_stream, text_stream
from models.data.materialize import add_world_arguments, read_world_manifest, run_world, write_world
from models.data.sources import open_source
from models.data.world import WorldData
from models.steps import DataSource

SIZES = dict(text_docs=300, pairs=120, instructions=40, eval_items=12, shards=3)
WORLD = DataSource(name="world", kind="world", options=(("seed", 5),))
TOK = get_tokenizer(WORLD)


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    write_world(out, 5, **SIZES)
    return out, read_world_manifest(out)


def src(manifest, role, **options) -> DataSource:
    s = manifest["sources"][role]
    return DataSource(name=role, kind=s["kind"], paths=tuple(s["paths"]),
                      options=tuple(sorted({"shuffle_shards": False, **s.get("options", {}), **options}.items())))


def test_same_seed_gives_byte_identical_files(world_dir, tmp_path):
    out, manifest = world_dir
    again = write_world(tmp_path / "again", 5, **SIZES)
    assert again["shards"] == manifest["shards"] and again["images_sha256"] == manifest["images_sha256"]
    other = write_world(tmp_path / "other", 6, **SIZES)
    assert other["shards"]["text/text-00000.jsonl.zst"] != manifest["shards"]["text/text-00000.jsonl.zst"]
    assert read_world_manifest(out / "manifest.json") == manifest
    assert manifest["counts"]["pairs"] == 120
    assert sum(v["records"] for k, v in manifest["shards"].items() if k.startswith("pairs/")) == 120


@pytest.mark.parametrize("role", ["text", "text_parquet"])
def test_text_shards_round_trip(world_dir, role):
    _, manifest = world_dir
    stream = open_source(src(manifest, role), "text")
    wd = WorldData.from_seed(5)
    assert [stream.next()[0] for _ in range(300)] == [wd.text(i) for i in range(300)]
    assert stream.next()[0] == wd.text(0)  # the next epoch starts over


@pytest.mark.parametrize("role", ["pairs", "pairs_parquet"])
def test_image_caption_shards_round_trip(world_dir, role):
    _, manifest = world_dir
    stream = open_source(src(manifest, role), "pairs", image_size=32)
    wd = WorldData.from_seed(5)
    for i in range(120):
        (image, caption), _ = stream.next()
        ref_image, ref_caption = wd.pair(i, 32)
        assert caption == ref_caption and np.array_equal(image, ref_image)


def test_images_are_resized_for_the_encoder(world_dir):
    _, manifest = world_dir
    (image, _), _ = open_source(src(manifest, "pairs"), "pairs", image_size=16).next()
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8


def test_llava_file_gives_the_worlds_finetune_batches(world_dir):
    _, manifest = world_dir
    make = lambda s: finetune_epochs(s, TOK, batch_size=8, seq_len=96, image_size=32,
                                     image_tokens=16, epochs=2, seed=3, max_samples=40)
    world = DataSource(name="w", kind="world", options=(("finetune_samples", 40), ("seed", 5)))
    for a, b in zip(make(src(manifest, "instructions")), make(world)):
        assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.images, b.images)


def test_file_mix_equals_world_mix_and_resumes_across_shards(world_dir):
    _, manifest = world_dir
    def make(text, pairs):
        return mixed_stream(text, pairs, None, TOK, batch_size=4, seq_len=64, image_ratio=0.5,
                            instruction_share=0.0, image_size=32, image_tokens=16, seed=0)
    files = make(src(manifest, "text"), src(manifest, "pairs"))
    world = make(WORLD, WORLD)
    for _ in range(6):  # far enough to cross shard boundaries
        a, b = next(files), next(world)
        assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.images, b.images)
    state = files.state_dict()
    expected = [next(files) for _ in range(30)]  # wraps into the next epoch
    resumed = make(src(manifest, "text"), src(manifest, "pairs"))
    resumed.load_state_dict(state)
    assert '"resume"' in json.dumps(state)  # the tar shards resume at a byte offset
    for e in expected:
        r = next(resumed)
        assert np.array_equal(r.tokens, e.tokens) and np.array_equal(r.images, e.images)


def test_shuffled_shard_order_is_seeded_and_resumable(world_dir):
    _, manifest = world_dir
    s = DataSource(name="t", kind="jsonl", paths=tuple(manifest["sources"]["text"]["paths"]))
    make = lambda seed: text_stream(s, TOK, batch_size=2, seq_len=200, seed=seed)
    a, b = make(0), make(0)
    assert all(np.array_equal(next(a).tokens, next(b).tokens) for _ in range(40))
    orders = {tuple(next(make(seed)).tokens[0, :20]) for seed in range(6)}
    assert len(orders) > 1  # the first shard read depends on the seed


def test_materialised_eval_files_equal_the_worlds_tasks(world_dir):
    _, manifest = world_dir
    world = {t.name: t for t in eval_tasks(WORLD, TOK, n_per_task=12, image_size=32, seed=0)}
    for name, ref in world.items():
        s = src(manifest, f"eval_{name}")
        (task,) = eval_tasks(s, TOK, n_per_task=0, image_size=32, seed=0)
        assert (task.name, task.group, task.kind, task.chance) == (name, ref.group, ref.kind, ref.chance)
        for a, b in zip(task.items, ref.items):
            assert a.prompt_tokens == b.prompt_tokens and a.choices == b.choices
            assert a.label == b.label and a.answers == b.answers
            assert (a.image is None) == (b.image is None)
            if a.image is not None:
                np.testing.assert_allclose(a.image, b.image, atol=1e-6)
    (sub,) = eval_tasks(src(manifest, "eval_fact_recall"), TOK, n_per_task=5, image_size=32, seed=1)
    assert len(sub.items) == 5


def test_hugging_face_tokenizer_json(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    vocab = {"[UNK]": 0, "</s>": 1, "a": 2, "dax": 3, "is": 4, "red": 5, ".": 6}
    hf = tokenizers.Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = Whitespace()
    hf.save(str(tmp_path / "tokenizer.json"))
    s = DataSource(name="t", kind="jsonl", paths=("/x",), options=(("tokenizer", str(tmp_path / "tokenizer.json")),))
    tok = get_tokenizer(s)
    assert tok.encode("a dax is red .") == [2, 3, 4, 5, 6]
    assert tok.eos_id == 1 and {tok.pad_id, tok.image_id, tok.user_id, tok.assistant_id} == {7, 8, 9, 10}
    assert tok.vocab_size == 11 and tok.decode([2, 3, tok.image_id]) == "a dax"
    with pytest.raises(ValueError, match="embedding rows"):
        get_tokenizer(s, vocab_limit=8)


def test_cli_pair_writes_a_world(tmp_path, capsys):
    import argparse
    parser = argparse.ArgumentParser()
    add_world_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path), "--seed", "2", "--text-docs", "10", "--pairs",
                              "5", "--instructions", "3", "--eval-items", "2", "--shards", "1"])
    assert run_world(args) == 0 and (tmp_path / "manifest.json").exists()
    assert "wrote world 2" in capsys.readouterr().out


@pytest.mark.parametrize("role", ["pairs", "pairs_parquet", "instructions"])
def test_a_rank_decodes_images_lazily_only_where_no_record_can_be_skipped(world_dir, role):
    """After `make_lazy` (a multi-rank step's stream) a file source defers decoding to the rank
    that trains on the image, with the same pixels; with on_bad_record = "skip" it must not: an
    undecodable image is skipped, and every rank has to see that."""
    from models.data.types import LazyImage

    _, manifest = world_dir
    kind = "instructions" if role == "instructions" else "pairs"
    eager, lazy, skipping = (open_source(src(manifest, role), kind, image_size=32, on_bad_record=bad)
                             for bad in ("error", "error", "skip"))
    lazy.make_lazy()
    skipping.make_lazy()
    for _ in range(5):
        (image, text), _ = eager.next()
        (deferred, lazy_text), _ = lazy.next()
        (skipped, _), _ = skipping.next()
        assert isinstance(deferred, LazyImage) and not isinstance(skipped, LazyImage)
        assert np.array_equal(deferred(), image) and lazy_text == text


@pytest.mark.parametrize("chunk", [1, 7, 1 << 16])
def test_zst_lines_equal_the_plain_lines_at_any_read_size(tmp_path, chunk):
    import zstandard

    from models.data.readers import _lines

    text = "".join(json.dumps({"text": "w " * n}) + "\n" for n in (0, 3, 5000, 1, 70000)) + '{"text": "end"}'
    path = tmp_path / "long.jsonl.zst"
    # two concatenated frames, split inside the long line
    half = len(text) // 2
    path.write_bytes(zstandard.ZstdCompressor().compress(text[:half].encode())
                     + zstandard.ZstdCompressor().compress(text[half:].encode()))
    assert list(_lines(str(path), chunk=chunk)) == text.splitlines(keepends=True)
