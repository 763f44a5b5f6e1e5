"""`write_tokens`: a text source tokenised once into the token shards and manifest that
`models.data.tokens` reads (the `vlmsweep tokenize` command's work)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from models.data.errors import BadRecordError, DataError
from models.data.sources import _reader, resolve_paths
from models.data.tokenizer import HFTokenizer
from models.data.tokens import FORMAT, MANIFEST, OFFSET_FILE, ORIGIN_KINDS, TOKEN_FILE, file_sha256, file_stamp


def write_tokens(source: Any, out: str | Path, *, progress=None) -> dict:
    """Tokenise text source `source` into folder `out` (which must not exist or be empty); the
    manifest. A bad record stops it with the record named; nothing is left half-written."""
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
    iter_shard, parse = _reader(source, image_size=1)
    dtype = np.uint16 if tok.vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        shards, digest = [], hashlib.sha256()
        for i, path in enumerate(paths):
            docs: list[np.ndarray] = []
            for idx, rec in iter_shard(path):
                if isinstance(rec, BadRecordError):
                    raise rec
                docs.append(np.asarray(tok.encode(parse(rec, path, idx)), dtype=dtype))
            if not docs:
                raise BadRecordError(path, -1, "empty shard: no records")
            offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
            tokens = np.concatenate(docs)
            np.save(tmp / TOKEN_FILE.format(i), tokens)
            np.save(tmp / OFFSET_FILE.format(i), offsets)
            digest.update(tokens.tobytes())
            digest.update(offsets.tobytes())
            shards.append({"tokens": TOKEN_FILE.format(i), "offsets": OFFSET_FILE.format(i),
                           "documents": len(docs), "n_tokens": int(len(tokens)), "source": path})
            if progress is not None:
                progress(i + 1, len(paths), int(offsets[-1]))
        manifest = _manifest(source, paths, tok, dtype, shards, digest.hexdigest())
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


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
