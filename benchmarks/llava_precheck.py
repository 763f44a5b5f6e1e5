"""`run`'s pre-check of a LLaVA mix file at the published size: every record's fields and the
images of 1,000 records spread over the file, timed on a generated `llava_v1_5_mix665k.json`
(665,298 records, ~6% text-only, 1–8 turns each, answers ~60–400 characters, as the mix has).

    .venv/bin/python benchmarks/llava_precheck.py [--records 665298]

The file and the images (5,000 distinct files the records share) go to a temporary folder. Last
line: `result: …`.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from models.data.llavacheck import check_llava_file
from models.steps import DataSource

FOLDERS = ("coco/train2017", "gqa/images", "ocr_vqa/images", "textvqa/train_images", "vg/VG_100K")


def write_mix(folder: Path, n: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    root = folder / "images"
    names = [f"{FOLDERS[i % len(FOLDERS)]}/{i:012d}.jpg" for i in range(5000)]
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"\xff\xd8\xff")
    records = []
    for i in range(n):
        convs = []
        for t in range(rng.randint(1, 8)):
            convs += [{"from": "human", "value": ("<image>\n" if t == 0 else "") + "q" * rng.randint(20, 120)},
                      {"from": "gpt", "value": "a" * rng.randint(60, 400)}]
        rec = {"id": str(i), "model": "", "conversations": convs}
        if rng.random() > 0.06:
            rec["image"] = names[i % len(names)]
        records.append(rec)
    path = folder / "llava_v1_5_mix665k.json"
    path.write_text(json.dumps(records))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=665_298)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_mix(Path(tmp), args.records)
        source = DataSource(name="llava", kind="llava", paths=(str(path),),
                            options=(("image_root", str(Path(tmp) / "images")),))
        t0, c0 = time.perf_counter(), time.process_time()
        n = check_llava_file(source, str(path), decoded=0)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(f"result: {n} records, {path.stat().st_size / 2**20:.0f} MiB: pre-check {dt:.1f} s wall, "
              f"{cpu:.1f} s CPU")


if __name__ == "__main__":
    main()
