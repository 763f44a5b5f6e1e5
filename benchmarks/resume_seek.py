"""Resuming a stream near the end of a shard: time to the resumed record with the readers' `start`
(records before it not decoded: JSONL lines counted, Parquet row groups skipped, a plain tar seeks
to the byte offset the stream's state kept) against reading through to it, as resuming did
before — in one process, on
the same files, warm and evicted from the page cache (a requeued job on another node reads them
cold). The result line gives the cold ratios.

    .venv/bin/python benchmarks/resume_seek.py [--records 4000] [--image-kb 24]

The shards are written to a temporary folder: a WebDataset tar of `--records` samples with an
incompressible `--image-kb` KB "jpg" each (a real shard's size per sample), a JSONL file and a
Parquet file (row groups of 256) of 1 KB documents. Last line: `result: …`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from models.data import readers as rd


def write_shards(folder: Path, n: int, image_kb: int) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    tar_path = folder / "pairs.tar"
    with tarfile.open(tar_path, "w") as tar:
        for i in range(n):
            for ext, data in (("jpg", rng.bytes(image_kb * 1024)), ("txt", f"a red dax {i}".encode())):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    docs = [" ".join(["the dax is red ."] * 64) + f" {i}" for i in range(n)]
    jsonl = folder / "text.jsonl"
    jsonl.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    parquet = folder / "text.parquet"
    pq.write_table(pa.table({"text": docs}), parquet, row_group_size=256)
    return {"webdataset": tar_path, "jsonl": jsonl, "parquet": parquet}


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache, as on a node that never read it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def first_record_time(reader, path: Path, start: int, seek: bool, cold: bool, **resume) -> float:
    """Seconds until record `start` comes out: with `start=` (seek) or by reading through."""
    if cold:
        evict(path)
    t = time.perf_counter()
    items = reader(str(path), start=start, **resume) if seek else reader(str(path))
    for index, record in items:
        if index >= start:
            assert not isinstance(record, Exception), record
            break
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=4000)
    parser.add_argument("--image-kb", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    readers = {"webdataset": rd.iter_webdataset, "jsonl": rd.iter_jsonl, "parquet": rd.iter_parquet}
    ratios = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_shards(Path(tmp), args.records, args.image_kb)
        start = args.records - 1
        for name, reader in readers.items():
            size = paths[name].stat().st_size / 2**20
            # What a stream's state holds for a tar: the offset the record before `start` carried.
            resume = ({"resume": next(r for i, r in reader(str(paths[name])) if i == start - 1)[rd.RESUME]}
                      if name == "webdataset" else {})
            for cold in (False, True):
                times = {seek: min(first_record_time(reader, paths[name], start, seek, cold, **resume)
                                   for _ in range(args.repeats)) for seek in (False, True)}
                ratio = times[False] / times[True]
                if cold:
                    ratios[name] = ratio
                print(f"{name} ({size:.1f} MiB, resume at record {start}, {'cold' if cold else 'warm'} "
                      f"page cache): read through {times[False] * 1e3:.1f} ms, start= "
                      f"{times[True] * 1e3:.1f} ms ({ratio:.1f}×)", flush=True)
    worst = min(ratios, key=ratios.get)
    print("result: resuming at a shard's last record, files not in the page cache: "
          + ", ".join(f"{k} {v:.1f}×" for k, v in ratios.items())
          + f" faster than reading through ({worst} least)")


if __name__ == "__main__":
    main()
