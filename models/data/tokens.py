"""Pre-tokenised text (`vlmsweep tokenize`) and the `tokens` source kind that trains from it.

`models.data.tokenize.write_tokens` tokenises a text source (jsonl or parquet, with its `tokenizer`) once, shard by
shard, in the order a stream reads records: one `shard-NNNNN.tokens.npy` (the documents' token ids
back to back, uint16 when the vocabulary fits, else uint32) and one `shard-NNNNN.offsets.npy`
(int64, documents + 1 boundaries) per source shard, memory-mapped when read (open_lm and DCLM
train from token arrays the same way), and `tokens.json`, the manifest: the origin source, its
files' sizes and modification times, the tokenizer file's sha256, and the sha256 of every token.

A study names the folder as a source of kind `tokens`. Its records are the documents' token
arrays, so the packer, the shard shuffle and the resume state work as for the origin, and a
stream over it yields exactly the origin's batches.

Identity (`tokens_identity`): a `tokens` source has its origin's identity — so a study over it
has the same step ids as one over the text files, and shares their finished steps — only while
the tokens are what the origin would give today: every origin file has the size and mtime it had
when tokenised, the tokenizer file has the same sha256, and no record was skipped. Otherwise its
identity is its own (kind `tokens` and the tokens' sha256), so its steps are new ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from models.data.errors import BadRecordError, DataError

MANIFEST = "tokens.json"
FORMAT = "vlmsweep-tokens/1"
TOKEN_FILE, OFFSET_FILE = "shard-{:05d}.tokens.npy", "shard-{:05d}.offsets.npy"
ORIGIN_KINDS = ("jsonl", "parquet")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_stamp(path: str) -> list:
    st = os.stat(path)
    return [path, st.st_size, st.st_mtime_ns]


# -- reading --------------------------------------------------------------------------------------

def _folder(source) -> Path:
    if len(source.paths) != 1:
        raise DataError(f"data source {source.name!r} (tokens) names {len(source.paths)} paths; "
                        "give the one folder `vlmsweep tokenize` wrote")
    path = Path(source.paths[0])
    return path.parent if path.name == MANIFEST else path


def read_manifest(source) -> dict:
    file = _folder(source) / MANIFEST
    try:
        manifest = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"data source {source.name!r}: {file}: not a readable tokens manifest "
                        f"({type(exc).__name__}: {exc}); write one with `vlmsweep tokenize`") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{file}: field 'format' is not {FORMAT!r}")
    return manifest


def origin_source(source) -> Any:
    """The text source `source`'s tokens came from (as the manifest records it)."""
    origin = read_manifest(source)["origin"]
    options = dict((k, v) for k, v in origin["options"])
    if source.option("shuffle_shards") is not None:
        options["shuffle_shards"] = source.option("shuffle_shards")
    return dataclasses.replace(source, kind=origin["kind"], paths=tuple(origin["paths"]),
                               options=tuple(sorted(options.items())))


def unchanged(manifest: dict) -> bool:
    """Whether the origin's files and tokenizer are as they were when the tokens were written."""
    try:
        same_files = all(file_stamp(p) == [p, size, mtime] for p, size, mtime in manifest["origin_files"])
        return (same_files and manifest.get("skipped_records", 0) == 0
                and file_sha256(manifest["tokenizer"]) == manifest["tokenizer_sha256"])
    except OSError:
        return False


def identity_source(source) -> tuple[Any, dict | None]:
    """What a `tokens` source counts as in a step id (see the module docstring): (its origin
    source, None) while its tokens are the origin's, else (None, its own identity)."""
    manifest = read_manifest(source)
    if unchanged(manifest):
        return origin_source(source), None
    return None, {"kind": "tokens", "tokens_sha256": manifest["tokens_sha256"],
                  "options": [list(o) for o in source.options]}


def tokenizer_path(source) -> str:
    """The tokenizer the tokens were made with; an error if that file changed since."""
    manifest = read_manifest(source)
    path = manifest["tokenizer"]
    if not Path(path).is_file() or file_sha256(path) != manifest["tokenizer_sha256"]:
        raise DataError(f"data source {source.name!r}: tokenizer {path} is missing or changed since "
                        "its tokens were written; run `vlmsweep tokenize` again")
    return path


def token_shards(source) -> list[str]:
    folder, manifest = _folder(source), read_manifest(source)
    paths = [str(folder / s["tokens"]) for s in manifest["shards"]]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise DataError(f"data source {source.name!r}: {missing[0]} is missing")
    return paths


def iter_tokens(path: str, start: int = 0) -> Iterator[tuple[int, Any]]:
    """The documents of one token shard as (index, uint array view), memory-mapped."""
    try:
        # A plain ndarray over the mapping: slicing an np.memmap runs its __array_finalize__ for
        # every document (~25 µs, a third of the pre-tokenised stream's time).
        tokens = np.asarray(np.load(path, mmap_mode="r"))
        offsets = np.load(path.replace(".tokens.npy", ".offsets.npy")).tolist()
    except (OSError, ValueError) as exc:
        yield start, BadRecordError(path, start, f"unreadable token shard ({type(exc).__name__}: {exc})")
        return
    for i in range(start, len(offsets) - 1):
        yield i, tokens[offsets[i]:offsets[i + 1]]


def parse_tokens(rec: np.ndarray, shard: str, idx: int) -> np.ndarray:
    """A document's tokens: the view of the shard's mapping, as `TextPacker` slices it."""
    return rec
