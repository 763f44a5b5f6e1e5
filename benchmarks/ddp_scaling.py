"""DDP scaling of one trunk step: tokens/s on 1 rank vs N ranks through the local backend's path
([backend] gpus_per_step: a pool worker runs rank 0 and spawns the others, gloo on CPUs here,
NCCL on a GPU machine), the same study and global batch each time.

    .venv/bin/python benchmarks/ddp_scaling.py [--ranks 2] [--scale 1m] [--steps 60]

Each run trains the same trunk under a fresh root; its tokens/s is the median of the per-step
`tokens_per_s` metrics after the first quarter (warm-up). On CPUs every rank gets one intra-op
thread (VLMSWEEP_THREADS=1), so N ranks use N cores to one rank's one. Scaling efficiency =
tokens/s(N) / (N × tokens/s(1)); the last line is `result:`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import polars as pl

from models import stepfiles as sf
from sweep.launch.local import LocalBackend
from sweep.plan import plan_study
from sweep.spec import load_study

STUDY = """
[study]
name = "ddp-scaling"
[axes]
scale = ["{scale}"]
intro_fraction = [1.0]
image_ratio = [0.1]
[train]
trunk_tokens_per_param = {tokens_per_param}
[backend]
gpus_per_step = {ranks}
"""


def tokens_per_s(base: Path, scale: str, steps: int, ranks: int) -> float:
    """Train the trunk on `ranks` local ranks under a fresh root; its median tokens/s."""
    from models.accounting import param_counts
    from models.presets import PRESETS

    preset = PRESETS[scale]
    per_step = preset.train.batch_size * preset.train.seq_len
    tokens_per_param = steps * per_step / param_counts(preset.model)["lm_total"]
    path = base / f"ranks{ranks}.toml"
    path.write_text(STUDY.format(scale=scale, tokens_per_param=tokens_per_param, ranks=ranks))
    plan = plan_study(load_study(path), root=base / f"root{ranks}")
    trunk = next(s for s in plan.steps if s.kind == "trunk")
    result = LocalBackend().run(plan, [trunk], workers=1, progress=False)
    if result.completed != 1:
        raise SystemExit(f"the {ranks}-rank trunk failed: see {plan.root / 'logs'}")
    metrics = pl.read_parquet(sf.paths_of(plan.root, trunk).metrics)
    rates = metrics.filter(pl.col("name") == "tokens_per_s").sort("step")["value"].to_numpy()
    return float(np.median(rates[len(rates) // 4:]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--scale", default="1m")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--keep", type=Path, default=None, help="keep the roots here")
    args = parser.parse_args()
    os.environ.setdefault("VLMSWEEP_THREADS", "1")  # one core per rank on CPUs
    base = args.keep or Path(tempfile.mkdtemp(prefix="vlmsweep-ddp-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        one = tokens_per_s(base, args.scale, args.steps, 1)
        many = tokens_per_s(base, args.scale, args.steps, args.ranks)
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    efficiency = many / (args.ranks * one)
    print(f"trunk {args.scale}, {args.steps} steps: 1 rank {one:,.0f} tokens/s, "
          f"{args.ranks} ranks {many:,.0f} tokens/s")
    print(f"result: DDP scaling efficiency {efficiency:.2f} ({args.ranks} ranks {many:,.0f} vs "
          f"1 rank {one:,.0f} tokens/s, {args.scale} trunk, threads per rank "
          f"{os.environ['VLMSWEEP_THREADS']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
