"""`write_tokens`: a text source tokenised once into the token shards and manifest that
`models.data.tokens` reads (the `vlmsweep tokenize` command's work)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from models.data.errors import BadRecordError, DataError
from models.data.sources import _reader, resolve_paths
from models.data.tokenizer import HFTokenizer
from models.data.tokens import FORMAT, MANIFEST, OFFSET_FILE, ORIGIN_KINDS, TOKEN_FILE, file_sha256, file_stamp


def write_tokens(source: Any, out: str | Path, *, progress=None, workers: int = 1) -> dict:
    """Tokenise text source `source` into folder `out` (which must not exist or be empty); the
    manifest. Shards are tokenised `workers` at a time (spawned processes; the output does not
    depend on the count). A bad record stops it with the record named; nothing is left half-written."""
    if source.kind not in ORIGIN_KINDS:
        raise DataError(f"data source {source.name!r}: kind {source.kind!r} cannot be tokenised; "
                        f"use one of {ORIGIN_KINDS}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: exists and is not an empty folder; tokenize writes a new one")
    if not source.option("tokenizer"):
        raise DataError(f"data source {source.name!r} ({source.kind}) needs a 'tokenizer' option: "
                        "the path of a local tokenizer.json")
    tok, paths = HFTokenizer(source.option("tokenizer")), resolve_paths(source)
    dtype = np.uint16 if tok.vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tasks = [(source, i, path, np.dtype(dtype).name, str(tmp)) for i, path in enumerate(paths)]
        shards: list[dict | None] = [None] * len(paths)
        with contextlib.closing(_map(_tokenize_shard, tasks, workers)) as done:
            for n, (i, shard) in enumerate(done, 1):
                if isinstance(shard, tuple):  # a bad record, as its fields (its constructor does not pickle)
                    raise BadRecordError(*shard)
                shards[i] = shard
                if progress is not None:
                    progress(n, len(paths), shard["n_tokens"])
        digest = hashlib.sha256()  # over every shard's tokens then offsets, in shard order
        for shard in shards:
            for name in ("tokens", "offsets"):
                digest.update(np.load(tmp / shard[name], mmap_mode="r").tobytes())
        manifest = _manifest(source, paths, tok, dtype, shards, digest.hexdigest())
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


_TOKENIZERS: dict[str, HFTokenizer] = {}  # a worker loads the tokenizer once, not once a shard


def _tokenize_shard(task: tuple) -> tuple[int, dict | tuple]:
    """Shard i of the source into its token and offset files in `tmp`: (i, its manifest entry), or
    (i, (shard, record, reason)) for a bad record."""
    source, i, path, dtype, tmp = task
    iter_shard, parse = _reader(source, image_size=1)
    tokenizer = source.option("tokenizer")
    if tokenizer not in _TOKENIZERS:
        _TOKENIZERS[tokenizer] = HFTokenizer(tokenizer)
    tok = _TOKENIZERS[tokenizer]
    docs: list[np.ndarray] = []
    try:
        for idx, rec in iter_shard(path):
            if isinstance(rec, BadRecordError):
                raise rec
            docs.append(np.asarray(tok.encode(parse(rec, path, idx)), dtype=dtype))
        if not docs:
            raise BadRecordError(path, -1, "empty shard: no records")
    except BadRecordError as err:
        return i, (err.shard, err.index, err.reason)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
    np.save(Path(tmp) / TOKEN_FILE.format(i), np.concatenate(docs))
    np.save(Path(tmp) / OFFSET_FILE.format(i), offsets)
    return i, {"tokens": TOKEN_FILE.format(i), "offsets": OFFSET_FILE.format(i), "documents": len(docs),
               "n_tokens": int(offsets[-1]), "source": path}


def _map(fn, tasks: list, workers: int) -> Iterator:
    """fn over tasks, in this process (1 worker) or in spawned ones, as they finish; a failure or an
    interrupt stops the others."""
    if workers <= 1 or len(tasks) <= 1:
        yield from map(fn, tasks)
        return
    import multiprocessing as mp

    from models.spawn import bare_main

    with bare_main():
        pool = mp.get_context("spawn").Pool(min(workers, len(tasks)))
    try:
        yield from pool.imap_unordered(fn, tasks)
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def _manifest(source, paths, tok, dtype, shards, digest) -> dict:
    import tokenizers

    tokenizer = source.option("tokenizer")
    return {"format": FORMAT,
            "origin": {"kind": source.kind, "paths": list(source.paths), "options": [list(o) for o in source.options]},
            "origin_files": [file_stamp(p) for p in paths],
            "tokenizer": tokenizer, "tokenizer_sha256": file_sha256(tokenizer),
            "tokenizers_version": tokenizers.__version__, "vocab_size": tok.vocab_size,
            "dtype": np.dtype(dtype).name, "tokens_sha256": digest, "skipped_records": 0,
            "shards": shards}
