"""LLaVA-1.5's mix file as published: image paths relative to the source's `image_root`
(`coco/train2017/…`, `gqa/images/…`), text-only records (no `image` key) trained as text-only
conversations, multi-turn conversations kept whole, and `run`'s pre-check reading every record's
fields and a spread sample's images before anything trains."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from models.data import finetune_epochs, get_tokenizer, mixed_stream
from models.data.errors import BadRecordError
from models.data.llavacheck import check_llava_file
from models.data.packing import encode_conversation
from models.steps import DataSource
from sweep.cli import main

WORLD = DataSource(name="world", kind="world", options=(("seed", 5),))
TOK = get_tokenizer(WORLD)
IMAGE_TOKENS = 4
FOLDERS = ("coco/train2017", "gqa/images", "ocr_vqa/images", "textvqa/train_images", "vg/VG_100K")


def _png(colour) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buf, format="PNG")
    return buf.getvalue()


def _turns(n: int) -> list[dict]:
    out = []
    for t in range(n):
        out += [{"from": "human", "value": ("<image>\n" if t == 0 else "") + "what is the dax ?"},
                {"from": "gpt", "value": "red " * (t + 1)}]
    return out


def llava_files(tmp_path, n: int = 20):
    """A mix file in one folder, its images under another (LLaVA's image folder layout); every
    fourth record text-only, record 1 a three-turn conversation."""
    root = tmp_path / "images"
    records = []
    for i in range(n):
        rec = {"id": str(i), "conversations": _turns(3 if i == 1 else 1)}
        if i % 4 != 3:
            rel = f"{FOLDERS[i % len(FOLDERS)]}/{i:012d}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(_png((10 * i, 0, 0)))
            rec["image"] = rel
        records.append(rec)
    mix = tmp_path / "json" / "llava_v1_5_mix665k.json"
    mix.parent.mkdir()
    mix.write_text(json.dumps(records))
    source = DataSource(name="llava", kind="llava", paths=(str(mix),),
                        options=(("image_root", str(root)),))
    return source, records


def test_images_resolve_under_image_root_and_text_only_records_have_no_image(tmp_path):
    source, records = llava_files(tmp_path)
    stream = finetune_epochs(source, TOK, batch_size=20, seq_len=96, image_size=16,
                             image_tokens=IMAGE_TOKENS, epochs=1, seed=0)
    batch = next(stream)
    slots = (batch.tokens == TOK.image_id).sum(1)
    assert sorted(slots.tolist()) == sorted([IMAGE_TOKENS] * 15 + [0] * 5)
    assert batch.images.shape[0] == 15  # one image per record that has one, none for the others
    reds = sorted(float(im[0].max()) for im in batch.images)  # red channel, normalised
    assert len(set(reds)) == 15  # each record's own image, not one image for all


def test_every_turn_of_a_multi_turn_conversation_is_kept(tmp_path):
    source, records = llava_files(tmp_path)
    from models.data.sources import llava_fields
    _, turns = llava_fields(records[1], "f", 1)
    assert len(turns) == 3 and turns[2] == ("what is the dax ?", "red red red")
    ids, kinds = encode_conversation(TOK, turns, IMAGE_TOKENS, 200)
    assert ids.count(TOK.user_id) == 3 and ids.count(TOK.assistant_id) == 3


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_split_rows_with_and_without_images(tmp_path, world):
    source, _ = llava_files(tmp_path)
    make = lambda: finetune_epochs(source, TOK, batch_size=8, seq_len=96, image_size=16,
                                   image_tokens=IMAGE_TOKENS, epochs=1, seed=0)
    full = next(make())
    parts = []
    for rank in range(world):
        stream = make()
        stream.select_rows(rank, world)
        part = next(stream)
        assert part.images.shape[0] * IMAGE_TOKENS == int((part.tokens == TOK.image_id).sum())
        parts.append(part)
    assert np.array_equal(np.concatenate([p.images for p in parts]), full.images)


def test_text_only_instructions_in_the_image_mix(tmp_path):
    source, _ = llava_files(tmp_path)
    stream = mixed_stream(WORLD, WORLD, source, TOK, batch_size=4, seq_len=64, image_ratio=0.5,
                          instruction_share=1.0, image_size=16, image_tokens=IMAGE_TOKENS, seed=0)
    for _ in range(8):
        batch = next(stream)
        assert batch.images.shape[0] * IMAGE_TOKENS == int((batch.tokens == TOK.image_id).sum())


def test_the_precheck_reads_every_record_and_a_spread_sample_of_images(tmp_path):
    source, records = llava_files(tmp_path, n=400)
    assert check_llava_file(source, source.paths[0]) == 400
    path = source.paths[0]
    broken = [dict(r) for r in records]
    broken[333]["conversations"] = [{"from": "human", "value": 3}, {"from": "gpt", "value": "red"}]
    (tmp_path / "json" / "llava_v1_5_mix665k.json").write_text(json.dumps(broken))
    with pytest.raises(BadRecordError, match=r"record 333: field 'conversations'"):
        check_llava_file(source, path)
    (tmp_path / "json" / "llava_v1_5_mix665k.json").write_text(json.dumps(records))
    (tmp_path / "images" / records[398]["image"]).unlink()  # near the end: sampled, not the first
    with pytest.raises(BadRecordError) as err:
        check_llava_file(source, path, sample=10)
    assert str(err.value) == (f"{path}: record 398: field 'image': "
                              f"{str(tmp_path / 'images' / records[398]['image'])!r} does not exist")


STUDY = """
[study]
name = "llava"
[axes]
scale = ["debug"]
intro_fraction = [1.0]
image_ratio = [0.2]
[data.llava]
kind = "llava"
paths = ["{mix}"]
image_root = "{root}"
[model.vision]
kind = "patch"
frozen = false
pretrain = false
[train]
trunk_tokens_per_param = 0.2
image_tokens_per_param = 0.05
[finetune]
data = "llava"
samples = 8
"""


def test_run_refuses_a_bad_record_deep_in_the_file_before_anything_trains(tmp_path, capsys):
    source, records = llava_files(tmp_path, n=200)
    records[150].pop("conversations")
    mix = source.paths[0]
    (tmp_path / "json" / "llava_v1_5_mix665k.json").write_text(json.dumps(records))
    study = tmp_path / "study.toml"
    study.write_text(STUDY.format(mix=mix, root=tmp_path / "images"))
    root = tmp_path / "root"
    assert main(["run", str(study), "--root", str(root), "--backend", "inline"]) == 2
    err = capsys.readouterr().err
    assert f"{mix}: record 150: field 'conversations' is missing" in err and "Traceback" not in err
    assert not (root / "steps").exists()


@pytest.mark.slow
def test_a_study_fine_tunes_on_the_mix_file_with_text_only_records(tmp_path, capsys):
    source, _ = llava_files(tmp_path, n=24)
    study = tmp_path / "study.toml"
    study.write_text(STUDY.format(mix=source.paths[0], root=tmp_path / "images"))
    root = tmp_path / "root"
    assert main(["run", str(study), "--root", str(root), "--backend", "inline"]) == 0, capsys.readouterr().err
    assert len(list((root / "steps" / "finetune").glob("*/result.json"))) == 1
