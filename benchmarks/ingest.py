"""Benchmark: ingest of a synthetic ~300-step study with ~5M metric rows, against a bare DuckDB
`read_parquet` of the same files into a fresh database file, in the same run (target: ingest <= 10 s).

Also times a second, incremental ingest where every step is unchanged.
Run: .venv/bin/python benchmarks/ingest.py [--rows-per-metric 8750] [--keep DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import duckdb

from analysis.store import connect, ingest
from analysis.synthetic import SyntheticSpec, write_synthetic_study


def bare_read(root: Path) -> float:
    """The floor: one CREATE TABLE AS read_parquet over every metrics and evals file."""
    files = sorted(str(p) for p in root.glob("steps/*/*/metrics.parquet"))
    evals = sorted(str(p) for p in root.glob("steps/*/*/evals.parquet"))
    db = root / "bare.duckdb"
    t0 = time.perf_counter()
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE metrics AS SELECT * FROM read_parquet($f, filename = true)", {"f": files})
        con.execute("CREATE TABLE evals AS SELECT * FROM read_parquet($f, filename = true)", {"f": evals})
        con.execute("CHECKPOINT")
    seconds = time.perf_counter() - t0
    db.unlink()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows-per-metric", type=int, default=8750, help="logged steps per metric per step")
    parser.add_argument("--keep", type=Path, help="write the study here instead of a temporary directory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        spec = SyntheticSpec(scales=("79m", "411m"), image_ratios=(0.05, 0.1, 0.2, 0.5), finetune_epochs=(1,),
                             metric_rows=args.rows_per_metric)
        t0 = time.perf_counter()
        write_synthetic_study(root, spec)
        print(f"wrote the synthetic study in {time.perf_counter() - t0:.1f} s")
        before = bare_read(root)
        first = ingest(root)
        again = ingest(root)
        baseline = min(before, bare_read(root))  # best of two: the first also warms the page cache
        with connect(root) as con:
            rows = con.execute("SELECT count(*) FROM metrics").fetchall()[0][0]
        steps = first.ingested + len(first.missing)
        print(f"bare DuckDB read_parquet of the same files: {baseline:.2f} s")
        print(f"ingest: {steps} steps, {rows:,} metric rows: {first.seconds:.2f} s; "
              f"unchanged re-ingest: {again.seconds:.2f} s ({again.reused} reused)")
        print(f"result: ingest of {steps} steps / {rows / 1e6:.1f}M metric rows in {first.seconds:.2f} s "
              f"(target <= 10 s) = {first.seconds / baseline:.2f}x a bare read_parquet ({baseline:.2f} s); "
              f"incremental re-ingest {again.seconds:.2f} s")


if __name__ == "__main__":
    main()
