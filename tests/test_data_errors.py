"""Bad data: every corrupt-input case gives an error naming the shard and record, or — with
on_bad_record="skip" — a counted skip in the batch; never a hang, never a silently wrong batch."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
import zstandard

from models.data import (
    BadRecordError,
    DataError,
    EmptySourceError,
    caption_pairs,
    eval_tasks,
    finetune_epochs,
    get_tokenizer,
    text_stream,
)
from models.steps import DataSource

TOK = get_tokenizer(DataSource(name="w", kind="world"))


def text_source(*paths) -> DataSource:
    return DataSource(name="t", kind="jsonl", paths=tuple(str(p) for p in paths),
                      options=(("shuffle_shards", False),))


def write_jsonl(path, lines) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def good(n) -> list[str]:
    return [json.dumps({"text": f"a dax is red . {i}"}) for i in range(n)]


def read_text(source, on_bad="error", batches=3):
    stream = text_stream(source, TOK, batch_size=2, seq_len=8, seed=0, on_bad_record=on_bad)
    return [next(stream) for _ in range(batches)]


def test_invalid_json_names_shard_and_record(tmp_path):
    p = tmp_path / "a.jsonl"
    write_jsonl(p, good(3) + ["{not json"] + good(3))
    with pytest.raises(BadRecordError, match=r"a\.jsonl: record 3: not valid JSON") as err:
        read_text(text_source(p))
    assert err.value.index == 3 and err.value.shard == str(p)
    skipped = sum(b.skipped_records for b in read_text(text_source(p), "skip", batches=6))
    assert skipped >= 1


def test_missing_field_names_the_field(tmp_path):
    p = tmp_path / "a.jsonl"
    write_jsonl(p, good(2) + [json.dumps({"body": "x"})])
    with pytest.raises(BadRecordError, match=r"record 2: field 'text' is missing"):
        read_text(text_source(p), batches=10)


def test_truncated_zstd_shard(tmp_path):
    data = zstandard.ZstdCompressor().compress("".join(line + "\n" for line in good(200)).encode())
    p = tmp_path / "a.jsonl.zst"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadRecordError, match=r"a\.jsonl\.zst: record \d+: unreadable"):
        read_text(text_source(p), batches=400)


def test_empty_shard_errors_or_is_skipped(tmp_path):
    empty, full = tmp_path / "0.jsonl", tmp_path / "1.jsonl"
    empty.write_text("")
    write_jsonl(full, good(5))
    with pytest.raises(BadRecordError, match=r"0\.jsonl: the shard: empty shard"):
        read_text(text_source(empty, full))
    batches = read_text(text_source(empty, full), "skip")
    assert batches[0].skipped_records == 1


def test_all_bad_source_raises_instead_of_hanging(tmp_path):
    p = tmp_path / "a.jsonl"
    write_jsonl(p, [json.dumps({"x": 1})] * 3)
    with pytest.raises(EmptySourceError, match="no readable record"):
        read_text(text_source(p), "skip")


def test_missing_files_are_named():
    with pytest.raises(DataError, match="no file matches"):
        read_text(text_source("/nonexistent/*.jsonl"))


def tar_bytes(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def png() -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def pairs(path, on_bad="error", n=4):
    s = DataSource(name="p", kind="webdataset", paths=(str(path),))
    stream = caption_pairs(s, TOK, batch_size=2, image_size=32, max_caption_len=8, seed=0,
                           on_bad_record=on_bad)
    return [next(stream) for _ in range(n)]


def test_undecodable_image_in_a_tar(tmp_path):
    p = tmp_path / "s.tar"
    p.write_bytes(tar_bytes([("0.png", png()), ("0.txt", b"a red dax"),
                             ("1.png", b"garbage"), ("1.txt", b"a dax")]))
    with pytest.raises(BadRecordError, match=r"s\.tar: record 1: undecodable image"):
        pairs(p)
    assert sum(b.skipped_records for b in pairs(p, "skip")) >= 1


def test_caption_missing_in_a_tar(tmp_path):
    p = tmp_path / "s.tar"
    p.write_bytes(tar_bytes([("0.png", png()), ("0.txt", b"a red dax"), ("1.png", png())]))
    with pytest.raises(BadRecordError, match=r"record 1: .* no \.txt or \.json caption"):
        pairs(p)


def test_truncated_tar(tmp_path):
    data = tar_bytes([(f"{i}.{ext}", png() if ext == "png" else b"a dax")
                      for i in range(6) for ext in ("png", "txt")])
    p = tmp_path / "s.tar"
    p.write_bytes(data[: len(data) // 2 + 100])
    with pytest.raises(BadRecordError, match=r"s\.tar: record \d: truncated or corrupt tar"):
        pairs(p, n=10)


def test_corrupt_parquet_shard(tmp_path):
    p = tmp_path / "a.parquet"
    p.write_bytes(b"PAR1 this is not parquet")
    s = DataSource(name="t", kind="parquet", paths=(str(p),))
    with pytest.raises(BadRecordError, match=r"a\.parquet: record 0: unreadable Parquet"):
        read_text(s)


def test_bad_llava_records(tmp_path):
    (tmp_path / "img.png").write_bytes(png())
    records = [{"image": "img.png", "conversations": [{"from": "human", "value": "<image>\nwhat colour ?"},
                                                        {"from": "gpt", "value": "red"}]},
               {"image": "img.png"},
               {"image": "missing.png", "conversations": [{"from": "human", "value": "q"},
                                                           {"from": "gpt", "value": "a"}]}]
    p = tmp_path / "ft.json"
    p.write_text(json.dumps(records))
    s = DataSource(name="f", kind="llava", paths=(str(p),))
    make = lambda on_bad: finetune_epochs(s, TOK, batch_size=3, seq_len=32, image_size=32,
                                          image_tokens=4, epochs=1, seed=0, on_bad_record=on_bad)
    with pytest.raises(BadRecordError, match=r"ft\.json: record (1: field 'conversations' is missing"
                                             r"|2: image .*missing\.png)"):
        list(make("error"))
    (batch,) = list(make("skip"))
    assert batch.skipped_records == 2 and batch.tokens.shape[0] == 1


def test_bad_eval_records(tmp_path):
    p = tmp_path / "mc.jsonl"
    write_jsonl(p, [json.dumps({"context": "q", "choices": ["a", "b"], "label": 0}),
                    json.dumps({"context": "q", "choices": ["a", "b"], "label": 5})])
    s = DataSource(name="e", kind="mc_jsonl", paths=(str(p),))
    with pytest.raises(BadRecordError, match=r"mc\.jsonl: record 1: field 'label' 5 is out of range"):
        eval_tasks(s, TOK, n_per_task=0, image_size=32, seed=0)
    q = tmp_path / "vqa.jsonl"
    write_jsonl(q, [json.dumps({"image": "nope.png", "question": "q", "answers": ["a"]})])
    with pytest.raises(BadRecordError, match=r"vqa\.jsonl: record 0: image .*nope\.png"):
        eval_tasks(DataSource(name="v", kind="vqa_jsonl", paths=(str(q),)), TOK, n_per_task=0,
                   image_size=32, seed=0)


def test_eval_files_are_validated_whole_not_only_the_sampled_records(tmp_path):
    p = tmp_path / "vqa.jsonl"
    records = [{"question": f"q{i}", "answers": ["a"]} for i in range(12)]
    del records[9]["answers"]
    write_jsonl(p, [json.dumps(r) for r in records])
    source = DataSource(name="v", kind="vqa_jsonl", paths=(str(p),))
    with pytest.raises(BadRecordError, match=r"vqa\.jsonl: record 9: field 'answers' is missing"):
        eval_tasks(source, TOK, groups=("text",), n_per_task=4, image_size=32, seed=0)


def test_on_bad_record_value_is_checked(tmp_path):
    p = tmp_path / "a.jsonl"
    write_jsonl(p, good(3))
    with pytest.raises(DataError, match="on_bad_record"):
        read_text(text_source(p), "ignore")


def _items(it) -> list:
    from models.data.readers import RESUME
    return [(i, str(r) if isinstance(r, BadRecordError) else {k: v for k, v in r.items() if k != RESUME})
            for i, r in it]


def test_readers_resume_mid_shard_with_the_indices_of_a_full_read(tmp_path, monkeypatch):
    """`start` gives exactly the tail of a full read, bad records and truncation included; a
    plain tar given the offset its previous record carried seeks there and reads nothing before."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from models.data import readers as rd

    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("\n".join(good(3) + ["{not json", ""] + good(4)) + "\n")
    parquet = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": [f"doc {i}" for i in range(10)]}), parquet, row_group_size=3)
    members = [(f"{i}.{ext}", png() if ext == "png" else f"dax {i}".encode())
               for i in range(6) for ext in ("png", "txt")]
    tar, cut = tmp_path / "s.tar", tmp_path / "cut.tar"
    tar.write_bytes(tar_bytes(members))
    cut.write_bytes(tar.read_bytes()[: len(tar.read_bytes()) // 2 + 100])
    llava = tmp_path / "l.json"
    llava.write_text(json.dumps([{"image": "x.png", "conversations": []}, 7, {"conversations": []}]))
    cases = [(rd.iter_jsonl, jsonl), (rd.iter_parquet, parquet), (rd.iter_webdataset, tar),
             (rd.iter_webdataset, cut), (rd.iter_llava, llava)]
    for reader, path in cases:
        full = _items(reader(str(path)))
        assert any(isinstance(r, str) for _, r in full) == (path in (jsonl, cut, llava)), path
        for start in range(len(full) + 2):
            assert _items(reader(str(path), start=start)) == [x for x in full if x[0] >= start], (path, start)

    offsets = [r[rd.RESUME] for _, r in rd.iter_webdataset(str(tar))]
    reads: list[int] = []  # where each read of the shard started

    class Spy(io.FileIO):
        def read(self, n=-1):
            reads.append(self.tell())
            return super().read(n)
    monkeypatch.setattr(rd.files, "open_binary", lambda path, storage=(): Spy(path))
    full = _items(rd.iter_webdataset(str(tar)))
    assert min(reads) == 0
    for start in range(1, len(full) + 1):
        reads.clear()
        tail = _items(rd.iter_webdataset(str(tar), start=start, resume=offsets[start - 1]))
        assert tail == full[start:], start
        assert reads and min(reads) == offsets[start - 1], start  # nothing before the resume offset
