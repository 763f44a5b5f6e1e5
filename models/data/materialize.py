"""`vlmsweep world`: write the built-in world in the real shard formats, with a manifest.

Text as JSONL+zstd and Parquet shards, image-caption pairs as WebDataset tars and Parquet,
instructions as LLaVA JSON with PNG files, benchmarks as VQA / multiple-choice JSONL (each record
with its metric and chance), the word-level tokenizer as a Hugging Face tokenizer.json, and a study
file over those files (`models.data.world_study`). Every
writer pins what would vary (tar metadata, compression levels, key order), so one seed gives
byte-identical files, and the readers real data needs are exercised by the default path.
Paths in manifest.json are relative to it, so a world copied elsewhere (to a cluster) still
describes itself; `read_world_manifest` resolves them against the manifest's folder.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np

from models.data.prompts import QUESTION
from models.data.tokenizer import world_tokenizer
from models.data.world import WorldData
from models.data.world.bench import TEXT_TASKS, VL_TASKS, build_task
from models.data.world_study import STUDY_FILE, TOKENIZER_FILE, study_toml
from models.stepfiles import write_bytes

MANIFEST = "manifest.json"
DEFAULT_SIZES = {"text_docs": 20_000, "pairs": 5_000, "instructions": 2_000, "eval_items": 200,
                 "shards": 4}


def _png(image: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _jsonl(records) -> bytes:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()


def _parquet(columns: dict) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf, compression="zstd", row_group_size=1024)
    return buf.getvalue()


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _split(n: int, shards: int) -> list[range]:
    edges = np.linspace(0, n, shards + 1).astype(int)
    return [range(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def _write_text(out: Path, wd: WorldData, n: int, shards: int, files: dict) -> None:
    import zstandard
    for k, part in enumerate(_split(n, shards)):
        docs = [wd.text(i) for i in part]
        files[f"text/text-{k:05d}.jsonl.zst"] = (
            zstandard.ZstdCompressor(level=10).compress(_jsonl({"text": d} for d in docs)), len(docs))
        files[f"text_parquet/text-{k:05d}.parquet"] = (_parquet({"text": docs}), len(docs))


def _write_pairs(out: Path, wd: WorldData, n: int, shards: int, size: int, files: dict) -> None:
    for k, part in enumerate(_split(n, shards)):
        pairs = [wd.pair(i, size) for i in part]
        pngs = [_png(img) for img, _ in pairs]
        members = [m for i, png, (_, cap) in zip(part, pngs, pairs)
                   for m in ((f"{i:08d}.png", png), (f"{i:08d}.txt", cap.encode()))]
        files[f"pairs/pairs-{k:05d}.tar"] = (_tar(members), len(pairs))
        files[f"pairs_parquet/pairs-{k:05d}.parquet"] = (
            _parquet({"image": pngs, "caption": [c for _, c in pairs]}), len(pairs))


def _write_instructions(out: Path, wd: WorldData, n: int, size: int, files: dict) -> None:
    records = []
    for i in range(n):
        image, turns = wd.instruction(10**9 + i, size)  # the world's fine-tune set (finetune.py)
        files[f"llava/images/{i:08d}.png"] = (_png(image), 1)
        conv = [c for j, (q, a) in enumerate(turns) for c in (
            {"from": "human", "value": ("<image>\n" if j == 0 else "") + q}, {"from": "gpt", "value": a})]
        records.append({"id": f"{i:08d}", "image": f"images/{i:08d}.png", "conversations": conv})
    files["llava/instructions.json"] = (json.dumps(records, sort_keys=True, indent=1).encode(), n)


def _eval_record(task, item, tok, name: str, i: int, files: dict) -> dict:
    words = lambda ids: tok.decode([t for t in ids if t not in (tok.image_id, tok.user_id, tok.assistant_id)])
    rec: dict = {"metric": task.metric, "chance": task.chance}
    if item.image is not None:
        img = np.clip(np.round((np.moveaxis(item.image, 0, -1) + 1.0) * 127.5), 0, 255).astype(np.uint8)
        files[f"eval/images/{name}-{i:05d}.png"] = (_png(img), 1)
        rec["image"] = f"images/{name}-{i:05d}.png"
    key = "question" if (task.kind == "generate" or (item.image is not None and name != "caption_matching")) \
        else "context"
    rec[key] = words(item.prompt_tokens)
    if key == "question":  # the world's question is its whole prompt, and its answers are short
        rec["prompt"] = QUESTION
    if task.kind == "generate":
        rec["answers"], rec["max_new_tokens"] = item.answers, item.max_new_tokens
    else:
        rec["choices"], rec["label"] = list(item.choice_texts), item.label
    return rec


def _write_eval(out: Path, wd: WorldData, n: int, size: int, files: dict) -> dict:
    """Each task's file; returns {task: (reader kind, chance, group)} for the manifest's sources."""
    tok, formats = world_tokenizer(), {}
    for name in VL_TASKS + TEXT_TASKS:
        task = build_task(name, wd.world, tok, n=n, image_size=size, image_tokens=16, seed=0)
        records = [_eval_record(task, it, tok, name, i, files) for i, it in enumerate(task.items)]
        vqa = "question" in records[0]
        files[f"eval/{name}.jsonl"] = (_jsonl(records), len(records))
        formats[name] = ("vqa_jsonl" if vqa else "mc_jsonl", task.chance, task.group)
    return formats


def write_world(out_dir: str | Path, seed: int = 0, *, text_docs: int = DEFAULT_SIZES["text_docs"],
                pairs: int = DEFAULT_SIZES["pairs"], instructions: int = DEFAULT_SIZES["instructions"],
                eval_items: int = DEFAULT_SIZES["eval_items"], shards: int = DEFAULT_SIZES["shards"],
                image_size: int = 32, n_kinds: int = 32) -> dict:
    """Write world `seed` under `out_dir`; returns (and writes) the manifest."""
    if min(text_docs, pairs, instructions, eval_items, shards) < 1:
        raise ValueError("world sizes and shard count must be positive")
    out, wd, files = Path(out_dir), WorldData.from_seed(seed, n_kinds), {}
    _write_text(out, wd, text_docs, shards, files)
    _write_pairs(out, wd, pairs, shards, image_size, files)
    _write_instructions(out, wd, instructions, image_size, files)
    formats = _write_eval(out, wd, eval_items, image_size, files)
    tok = world_tokenizer()
    files[TOKENIZER_FILE] = (json.dumps(tok.hf_json(), indent=1, sort_keys=True).encode(), tok.vocab_size)
    files[STUDY_FILE] = (study_toml(seed=seed, n_kinds=n_kinds, eval_items=eval_items,
                                    formats=formats).encode(), 1)
    for rel, (data, _) in sorted(files.items()):
        write_bytes(out / rel, data, durable=False)
    os.sync()  # every shard on disk before the manifest that says the world is complete
    shards_meta = {rel: {"sha256": hashlib.sha256(d).hexdigest(), "records": n}
                   for rel, (d, n) in sorted(files.items()) if not rel.startswith(("llava/images", "eval/images"))}
    manifest = {
        "world_seed": seed, "n_kinds": n_kinds, "image_size": image_size,
        "counts": {"text_docs": text_docs, "pairs": pairs, "instructions": instructions,
                   "eval_items_per_task": eval_items, "shards": shards},
        "sources": _sources(formats), "shards": shards_meta,
        "images_sha256": hashlib.sha256(b"".join(
            hashlib.sha256(d).digest() for rel, (d, _) in sorted(files.items())
            if rel.startswith(("llava/images", "eval/images")))).hexdigest(),
    }
    write_bytes(out / MANIFEST, json.dumps(manifest, sort_keys=True, indent=1).encode())
    return manifest


def _sources(formats: dict) -> dict:
    """The world's data sources, their paths relative to the manifest (POSIX separators)."""
    tokenizer = {"tokenizer": TOKENIZER_FILE}
    return {"text": {"kind": "jsonl", "paths": ["text/*.jsonl.zst"], "options": tokenizer},
            "text_parquet": {"kind": "parquet", "paths": ["text_parquet/*.parquet"], "options": tokenizer},
            "pairs": {"kind": "webdataset", "paths": ["pairs/*.tar"]},
            "pairs_parquet": {"kind": "parquet_images", "paths": ["pairs_parquet/*.parquet"]},
            "instructions": {"kind": "llava", "paths": ["llava/instructions.json"]},
            **{f"eval_{t}": {"kind": k, "paths": [f"eval/{t}.jsonl"], "options": {"chance": c}}
               for t, (k, c, _) in formats.items()}}


def read_world_manifest(path: str | Path) -> dict:
    """A world's manifest.json (or the folder holding it) with every source path made absolute,
    resolved against the manifest's folder wherever the world now lies."""
    path = Path(path)
    path = path / MANIFEST if path.is_dir() else path
    try:
        manifest = json.loads(path.read_text())
        sources = manifest["sources"]
        for source in sources.values():
            source["paths"] = [str((path.parent / p).resolve()) for p in source["paths"]]
            if "tokenizer" in source.get("options", {}):
                source["options"]["tokenizer"] = str((path.parent / source["options"]["tokenizer"]).resolve())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: not a world manifest ({type(exc).__name__}: {exc})") from None
    return manifest


def add_world_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="directory to write the world into")
    parser.add_argument("--seed", type=int, default=0, help="world seed (same seed → same bytes)")
    helps = {"text_docs": "text documents", "pairs": "image-caption pairs",
             "instructions": "LLaVA-style instruction records", "eval_items": "items per eval task",
             "shards": "shards per split"}
    for key, value in DEFAULT_SIZES.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=value, dest=key,
                            help=f"{helps.get(key, key)} (default {value})")
    parser.add_argument("--image-size", type=int, default=32, dest="image_size",
                        help="image side in pixels (default 32)")
    parser.add_argument("--n-kinds", type=int, default=32, dest="n_kinds",
                        help="entity kinds in the world (default 32)")


def run_world(args: argparse.Namespace) -> int:
    manifest = write_world(args.out, args.seed, text_docs=args.text_docs, pairs=args.pairs,
                           instructions=args.instructions, eval_items=args.eval_items,
                           shards=args.shards, image_size=args.image_size, n_kinds=args.n_kinds)
    print(f"wrote world {args.seed} to {args.out}: {len(manifest['shards'])} files; "
          f"manifest {Path(args.out) / MANIFEST} (paths relative to it); run it with: vlmsweep run "
          f"{Path(args.out) / STUDY_FILE}")
    return 0
