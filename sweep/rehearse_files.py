"""The rehearsal's tiny files: each of a study's data sources rewritten as a few records in the
layout that source is published in, plus a tokenizer and a random-weight SigLIP.

Training sources: DCLM's `jsonl.zst` (or plain JSONL / Parquet text), img2dataset WebDataset
shards named by the study's brace list (`{00000..00001}.tar`: KEY.jpg, KEY.txt, KEY.json),
image-caption Parquet with the study's column names, LLaVA's mix JSON with an image root, its
COCO/GQA/OCR-VQA/TextVQA/VG folders, multi-turn and text-only records. Eval sources: each file,
by its stem, from its benchmark's official layout (`models.data.convert.samples`) through
`convert`. `write_sources` returns the study's sources pointing at these files.
"""

from __future__ import annotations

import io
import json
import random
import re
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path

from models.data.convert import VL_FORMATS, convert
from models.data.convert.samples import SAMPLES
from models.data.tokenizer import world_tokenizer
from models.steps import DataSource

# An eval file's stem → the `convert` format whose official layout it is published in. The
# coordinator (and users) extend it as converters land; an unknown stem gets DEFAULT_FORMAT of its
# source's kind, so a study's own tasks rehearse too.
STEM_FORMATS: dict[str, str] = {
    "vqav2": "vqav2", "gqa": "gqa", "vizwiz": "vizwiz", "textvqa": "textvqa",
    "pope_random": "pope", "pope_popular": "pope", "pope_adversarial": "pope", "pope": "pope",
    "refcoco": "refcoco", "refcoco+": "refcoco+", "refcocog": "refcocog", "ocid_ref": "ocid_ref",
    "arc_easy": "arc", "arc_challenge": "arc", "hellaswag": "hellaswag", "piqa": "piqa",
    # OpenBookQA and CommonsenseQA publish ARC's JSONL schema (question.stem, choices, answerKey)
    "openbookqa": "arc", "commonsense_qa": "arc", "copa": "mc",
}
DEFAULT_FORMAT = {"vqa_jsonl": "vqav2", "mc_jsonl": "mc"}
# LLaVA-1.5's mix: image paths relative to its image root, one folder per source data set.
LLAVA_FOLDERS = ("coco/train2017", "gqa/images", "ocr_vqa/images", "textvqa/train_images", "vg/VG_100K")
_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


@dataclass(frozen=True, kw_only=True, slots=True)
class Layout:
    """Which parts of the published layouts the files use. All on is the real thing; a test of a
    tree whose readers lack one (brace lists, LLaVA's image root or text-only records) turns it off."""

    brace_shards: bool = True  # shard lists as `{00000..00001}`; off: the files listed one by one
    llava_image_root: bool = True  # LLaVA images under [data.X].image_root; off: beside the JSON
    llava_text_only: bool = True  # LLaVA records without an image (the mix has ~40k)


PUBLISHED = Layout()  # every part of the published layouts


def _words(rng: random.Random, k: int) -> str:
    vocab = world_tokenizer().itos[6:]  # past the specials
    return " ".join(rng.choice(vocab) for _ in range(k))


def _image_bytes(rng: random.Random, ext: str = "jpg", size: int = 16) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3))).save(
        buf, format="PNG" if ext == "png" else "JPEG")
    return buf.getvalue()


def _shards(folder: Path, pattern: str, count: int, layout: Layout) -> tuple[list[Path], list[str]]:
    """(files to write, the source's paths) for one study path: a brace list keeps its padding and
    names `count` shards, a glob's `*` becomes shard numbers, a plain file stays one file."""
    name = Path(pattern).name
    m = _BRACE.search(name)
    if m:
        lo, width = int(m.group(1)), len(m.group(1))
        numbers = [str(lo + i).zfill(width) for i in range(count)]
        files = [folder / (name[:m.start()] + n + name[m.end():]) for n in numbers]
        brace = name[:m.start()] + "{" + numbers[0] + ".." + numbers[-1] + "}" + name[m.end():]
        return files, [str(folder / brace)] if layout.brace_shards else [str(f) for f in files]
    if "*" in name:
        files = [folder / name.replace("*", f"{i:08d}", 1).replace("*", "") for i in range(count)]
        return files, [str(folder / name)]
    return [folder / name], [str(folder / name)]


def _write_text(path: Path, source: DataSource, n: int, rng: random.Random) -> None:
    field = source.option("text_field", "text")
    records = [{field: _words(rng, 40), "url": f"https://example.com/{i}"} for i in range(n)]
    if source.kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
        return
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    if path.name.endswith(".zst"):
        import zstandard

        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)


def _write_webdataset(path: Path, source: DataSource, n: int, rng: random.Random, shard: int) -> None:
    ext = source.option("image_ext", "jpg")
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            key = f"{shard:05d}{i:04d}"
            caption = _words(rng, 8)
            meta = json.dumps({"caption": caption, "url": f"https://example.com/{key}", "key": key})
            for suffix, data in ((ext, _image_bytes(rng, ext)), ("txt", caption.encode()), ("json", meta.encode())):
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _write_parquet_images(path: Path, source: DataSource, n: int, rng: random.Random) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    image, caption = source.option("image_field", "image"), source.option("caption_field", "caption")
    rows = [{image: _image_bytes(rng), caption: _words(rng, 8), "width": 16, "height": 16} for _ in range(n)]
    pq.write_table(pa.Table.from_pylist(rows), path)


def _write_llava(folder: Path, source: DataSource, n: int, rng: random.Random,
                 layout: Layout) -> DataSource:
    """The mix JSON at the study's file name, images under the image root (LLaVA's layout)."""
    (json_name,) = {Path(p).name for p in source.paths} or {"llava_v1_5_mix665k.json"}
    root = folder / "images" if layout.llava_image_root else folder
    records = []
    for i in range(n):
        rec: dict = {"id": f"{i:09d}"}
        turns = 1 + i % 3  # single- and multi-turn conversations
        if layout.llava_text_only and i % 4 == 3:
            rec["conversations"] = [c for _ in range(turns) for c in (
                {"from": "human", "value": _words(rng, 6) + "?"}, {"from": "gpt", "value": _words(rng, 5)})]
        else:
            rel = f"{LLAVA_FOLDERS[i % len(LLAVA_FOLDERS)]}/{i:012d}.jpg"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(_image_bytes(rng))
            rec["image"] = rel
            rec["conversations"] = [{"from": "human", "value": "<image>\n" + _words(rng, 6) + "?"},
                                    {"from": "gpt", "value": _words(rng, 5)}]
            rec["conversations"] += [c for _ in range(turns - 1) for c in (
                {"from": "human", "value": _words(rng, 6) + "?"}, {"from": "gpt", "value": _words(rng, 5)})]
        records.append(rec)
    (folder / json_name).write_text(json.dumps(records))
    options = dict(source.options)
    if layout.llava_image_root:
        options["image_root"] = str(root)
    else:
        options.pop("image_root", None)
    return replace(source, paths=(str(folder / json_name),), options=tuple(sorted(options.items())))


def _write_evals(folder: Path, source: DataSource, n: int, seed: int) -> DataSource:
    paths = []
    for i, p in enumerate(source.paths):
        stem = Path(p).name.split(".")[0]
        fmt = STEM_FORMATS.get(stem, DEFAULT_FORMAT[source.kind])
        if (fmt in VL_FORMATS) != (source.kind == "vqa_jsonl"):
            fmt = DEFAULT_FORMAT[source.kind]  # a stem whose usual benchmark is of the other kind
        inputs = SAMPLES[fmt](folder / "published" / stem, n, seed + i)
        out = folder / f"{stem}.jsonl"
        convert(fmt, out, **inputs)
        paths.append(str(out))
    options = dict(source.options)
    if "image_root" in options:  # the study's image folder, here: the converted files' images lie below
        options["image_root"] = str(folder)
    return replace(source, paths=tuple(paths), options=tuple(sorted(options.items())))


def write_tokenizer(folder: Path) -> Path:
    """The built-in world's word-level tokenizer as a Hugging Face tokenizer.json (≤ 512 rows)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tokenizer.json"
    path.write_text(json.dumps(world_tokenizer().hf_json(), sort_keys=True))
    return path


def write_tiny_siglip(folder: Path, *, image_size: int = 16, patch_size: int = 8, width: int = 16) -> Path:
    """A random-weight SigLIP vision tower saved with transformers (what the `hf` encoder loads)."""
    import torch
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    config = SiglipVisionConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=1,
                                num_attention_heads=2, image_size=image_size, patch_size=patch_size)
    SiglipVisionModel(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "size": {"height": image_size, "width": image_size}}))
    return folder


def write_sources(sources: dict[str, DataSource], folder: Path, *, records: int, shards: int = 2,
                  seed: int = 0, layout: Layout = PUBLISHED) -> dict[str, DataSource]:
    """Every non-world source rewritten as tiny files in its published layout under `folder`."""
    tokenizer = write_tokenizer(folder / "tokenizer")
    out: dict[str, DataSource] = {}
    for k, (name, source) in enumerate(sorted(sources.items())):
        rng, where = random.Random(seed * 1000 + k), folder / name
        options = dict(source.options)
        if source.kind == "world":
            out[name] = source
            continue
        where.mkdir(parents=True, exist_ok=True)
        if source.kind == "llava":
            out[name] = _write_llava(where, source, records, rng, layout)
            continue
        if source.kind in ("vqa_jsonl", "mc_jsonl"):
            out[name] = _write_evals(where, source, records, seed + k)
            continue
        paths: list[str] = []
        for i, pattern in enumerate(source.paths):
            files, listed = _shards(where / str(i), pattern, shards, layout)
            files[0].parent.mkdir(parents=True, exist_ok=True)
            for j, f in enumerate(files):
                _write_shard(f, source, records, rng, j)
            paths += listed
        if "tokenizer" in options:
            options["tokenizer"] = str(tokenizer)
        if "heldout" in options:
            held = where / "heldout" / Path(source.paths[0]).name.replace("*", "0").replace("{", "").replace("}", "")
            held.parent.mkdir(parents=True, exist_ok=True)
            _write_shard(held, source, records, rng, 99)
            options["heldout"] = str(held)
        out[name] = replace(source, paths=tuple(paths), options=tuple(sorted(options.items())))
    return out


def _write_shard(path: Path, source: DataSource, n: int, rng: random.Random, shard: int) -> None:
    if source.kind in ("jsonl", "parquet"):
        _write_text(path, source, n, rng)
    elif source.kind == "webdataset":
        _write_webdataset(path, source, n, rng, shard)
    elif source.kind == "parquet_images":
        _write_parquet_images(path, source, n, rng)
    else:
        raise ValueError(f"no published layout for data source kind {source.kind!r}")
