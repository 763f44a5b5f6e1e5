"""`vlmsweep tokenize STUDY --source NAME --out DIR`: pre-tokenise one of a study's text sources
(`models.data.tokens`), so that its steps read token arrays instead of tokenising on the fly."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sweep.errors import UserError


def add_tokenize_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", type=Path, help="the study file (TOML) that names the text source")
    p.add_argument("--source", required=True, help="the [data.NAME] text source to tokenise (jsonl or parquet)")
    p.add_argument("--out", type=Path, required=True,
                   help="the folder to write (new or empty); name it in the study as "
                        "[data.NAME] kind = \"tokens\", paths = [\"DIR\"]")
    p.add_argument("--workers", type=int, default=None,
                   help="shards tokenised at once, each in its own process (default: the CPUs this "
                        "process may use); the output does not depend on it")


def run_tokenize(args: argparse.Namespace) -> int:
    from models.data.errors import DataError
    from models.data.tokenize import write_tokens
    from sweep.spec import load_study

    study = load_study(args.study)
    if args.source not in study.data:
        raise UserError(f"{args.study}: no data source {args.source!r} (has: {', '.join(study.data)})")
    source = study.data[args.source]

    def progress(done: int, total: int, tokens: int) -> None:
        print(f"  shard {done}/{total} done: {tokens:,} tokens", flush=True)
    workers = args.workers if args.workers is not None else len(os.sched_getaffinity(0))
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    print(f"tokenizing {args.source} ({source.kind}, {len(source.paths)} path(s)) into {args.out} "
          f"with {workers} worker(s)")
    try:
        manifest = write_tokens(source, args.out, progress=progress, workers=workers)
    except DataError as exc:
        raise UserError(str(exc)) from None
    total = sum(s["n_tokens"] for s in manifest["shards"])
    docs = sum(s["documents"] for s in manifest["shards"])
    print(f"wrote {total:,} tokens of {docs:,} documents in {len(manifest['shards'])} shard(s) "
          f"({manifest['dtype']}); tokens sha256 {manifest['tokens_sha256'][:16]}…")
    return 0
