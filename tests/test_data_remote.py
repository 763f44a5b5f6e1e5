"""Shards in an object store, read through fsspec against a real S3-compatible server on
127.0.0.1 (moto's server mode, dummy credentials): brace lists and globs listed remotely, every
shard reader gives the local file's records, a stream resumes exactly (a plain tar at its byte
offset, a ranged read), and a study naming a scheme it cannot read, or missing the extra, is
refused in one line."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import numpy as np
import pytest

from models.data import files, get_tokenizer, mixed_stream, text_stream
from models.data.errors import DataError
from models.data.materialize import read_world_manifest, write_world
from models.data.sources import open_source, resolve_paths
from models.steps import DataSource
from sweep.errors import StudyError
from sweep.spec import load_study

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")
BUCKET = "shards"
WORLD = DataSource(name="world", kind="world", options=(("seed", 5),))
TOK = get_tokenizer(WORLD)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A moto S3 server holding the world's shards under s3://shards/<role>/…, and the local copy."""
    from moto.server import ThreadedMotoServer

    mp = pytest.MonkeyPatch()
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        mp.setenv(key, "dummy")
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
    mp.delenv("AWS_ENDPOINT_URL", raising=False)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    out = tmp_path_factory.mktemp("world")
    write_world(out, 5, text_docs=300, pairs=120, instructions=40, eval_items=12, shards=3)
    import boto3
    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket=BUCKET)
    for path in sorted(out.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), BUCKET, str(path.relative_to(out)), ExtraArgs={"ACL": "public-read"})
    yield endpoint, out, read_world_manifest(out)
    server.stop()
    mp.undo()


def _pair(store, role: str, pattern: str, **options):
    endpoint, out, manifest = store
    s = manifest["sources"][role]
    opts = {"shuffle_shards": False, **s.get("options", {}), **options}
    local = DataSource(name=role, kind=s["kind"], paths=tuple(s["paths"]),
                       options=tuple(sorted(opts.items())))
    remote = DataSource(name=role, kind=s["kind"], paths=(f"s3://{BUCKET}/{pattern}",),
                        options=tuple(sorted((opts | {"endpoint_url": endpoint}).items())))
    return local, remote


def test_brace_lists_and_globs_are_listed_in_the_store(store):
    _, remote = _pair(store, "pairs", "pairs/*.tar")
    names = [f"s3://{BUCKET}/pairs/pairs-{i:05d}.tar" for i in range(3)]
    assert resolve_paths(remote) == names
    braces = DataSource(name="p", kind="webdataset", paths=(f"s3://{BUCKET}/pairs/pairs-{{00000..00003}}.tar",),
                        options=remote.options)
    with pytest.raises(DataError, match=r"1 of its 4 names are missing \(first: 's3://shards/pairs/pairs-00003.tar'\)"):
        resolve_paths(braces)


@pytest.mark.parametrize(("role", "pattern"), [("text", "text/text-{00000..00002}.jsonl.zst"),
                                               ("text_parquet", "text_parquet/*.parquet"),
                                               ("pairs", "pairs/pairs-{00000..00002}.tar"),
                                               ("pairs_parquet", "pairs_parquet/*.parquet")])
def test_remote_shards_give_the_local_records(store, role, pattern):
    local, remote = _pair(store, role, pattern)
    kind = "text" if role.startswith("text") else "pairs"
    a, b = open_source(local, kind), open_source(remote, kind)
    for _ in range(130):  # every record, into the second epoch
        (x, _), (y, _) = a.next(), b.next()
        if kind == "text":
            assert x == y
        else:
            assert x[1] == y[1] and np.array_equal(x[0], y[0])


def test_a_remote_mix_resumes_exactly_with_the_tars_byte_offset(store):
    _, text = _pair(store, "text", "text/*.jsonl.zst")
    _, pairs = _pair(store, "pairs", "pairs/pairs-{00000..00002}.tar")
    make = lambda: mixed_stream(text, pairs, None, TOK, batch_size=4, seq_len=64, image_ratio=0.5,
                                instruction_share=0.0, image_size=32, image_tokens=16, seed=0)
    stream = make()
    for _ in range(5):
        next(stream)
    state = json.loads(json.dumps(stream.state_dict()))
    assert state["pairs"].get("resume") or state["pending"]["state"].get("resume")
    expected = [next(stream) for _ in range(12)]
    resumed = make()
    resumed.load_state_dict(state)
    for e in expected:
        r = next(resumed)
        assert np.array_equal(r.tokens, e.tokens) and np.array_equal(r.images, e.images)


def test_the_endpoint_may_come_from_the_environment(store, monkeypatch):
    endpoint, _, _ = store
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    local, _ = _pair(store, "text", "")
    source = DataSource(name="t", kind="jsonl", paths=(f"s3://{BUCKET}/text/*.jsonl.zst",))
    assert len(resolve_paths(source)) == 3
    make = lambda s: text_stream(s, TOK, batch_size=2, seq_len=32, seed=0)
    assert np.array_equal(next(make(source)).tokens, next(make(replace(local, options=()))).tokens)


def test_http_shards_named_by_a_brace_list(store):
    endpoint, out, _ = store
    local, _ = _pair(store, "pairs", "")
    http = DataSource(name="pairs", kind="webdataset", options=local.options,
                      paths=(f"{endpoint}/{BUCKET}/pairs/pairs-{{00000..00002}}.tar",))
    a, b = open_source(local, "pairs"), open_source(http, "pairs")
    for _ in range(50):
        (x, _), (y, _) = a.next(), b.next()
        assert x[1] == y[1] and np.array_equal(x[0], y[0])
    state = b.state_dict()
    assert state["record"] > 0 and state["resume"] > 0  # mid-shard: a ranged read from the offset
    resumed = open_source(http, "pairs")
    resumed.load_state_dict(state)
    for _ in range(20):
        (x, _), (y, _) = a.next(), resumed.next()
        assert x[1] == y[1] and np.array_equal(x[0], y[0])


STUDY = """
[study]
name = "remote"
[axes]
scale = ["debug"]
text_data = ["text"]
[data.text]
kind = "{kind}"
paths = ["{path}"]
"""


@pytest.mark.parametrize(("kind", "path", "expect"), [
    ("jsonl", "hdfs://nn/text.jsonl", "scheme hdfs:// is not readable"),
    ("jsonl", "https://host/shards/*.jsonl", "an http(s) folder cannot be listed"),
    ("jsonl", "s3://b/text.jsonl", "s3:// paths need the optional extra 'remote' (pip install "
                                   "'vlmsweep[remote]'): s3fs is not installed"),
    ("mc_jsonl", "s3://b/arc.jsonl", "this path is read from local disk"),
])
def test_the_study_refuses_a_path_it_cannot_read_in_one_line(tmp_path, monkeypatch, kind, path, expect):
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if the extra were not installed
    study = tmp_path / "study.toml"
    study.write_text(STUDY.format(kind=kind, path=path))
    with pytest.raises(StudyError) as err:
        load_study(study)
    assert expect in str(err.value) and "\n" not in str(err.value)


def test_a_reader_without_the_extra_says_which_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "s3fs", None)
    with pytest.raises(DataError, match="optional extra 'remote'"):
        files.open_binary("s3://b/k.tar")


def test_a_remote_llava_file_with_its_images_in_the_store(store):
    from models.data import finetune_epochs
    from models.data.llavacheck import check_llava_file

    local, remote = _pair(store, "instructions", "llava/instructions.json")
    assert check_llava_file(remote, remote.paths[0], sample=5) == 40
    make = lambda s: finetune_epochs(s, TOK, batch_size=8, seq_len=96, image_size=32, image_tokens=16,
                                     epochs=1, seed=3)
    for a, b in zip(make(local), make(remote)):
        assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.images, b.images)
