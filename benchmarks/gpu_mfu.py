"""Model FLOP utilisation of the paper's 79m and 411m presets training in bf16 on one GPU, through
the same Lightning trunk step the runs use. Target on one H100: MFU >= 40%.

    .venv/bin/python benchmarks/gpu_mfu.py                 # on a GPU machine (~5 min)
    .venv/bin/python benchmarks/gpu_mfu.py --dry-run       # the debug preset on CPU, seconds

MFU = tokens/s × (6·N + attention FLOPs per token, models.accounting) / peak; the peak is the
card's dense bf16 figure (--peak-tflops, H100 SXM 989), and a bf16 matmul measured in the same
run is printed beside it. Micro-batches replace the paper's 512×2048 batches (FLOPs per token are
the same); per-step loss logging (one host sync) is included, as in real runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import ListStream, StepTimes, make_batches, tokens_per_s  # noqa: E402

from models.accounting import lm_flops_per_token  # noqa: E402
from models.presets import get_preset  # noqa: E402
from models.schedules import trunk_schedule  # noqa: E402
from models.stages import base  # noqa: E402
from models.stages.base import Checkpointer, OptimConfig, RunOptions, fit  # noqa: E402
from models.stages.lm import TrunkModule  # noqa: E402
from models.vlm import VLM  # noqa: E402

MICRO_BATCH = {"79m": 16, "411m": 8, "debug": 4}


def measured_peak(device: str) -> float:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    n = 8192 if device == "cuda" else 512
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    reps = 50 if device == "cuda" else 5
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def run_preset(name: str, steps: int, warmup: int, batch: int, compile_: bool, cpu: bool) -> float:
    preset = get_preset(name)
    lm, train = preset.model.lm, preset.train
    seq = train.seq_len
    batches = make_batches(lm.vocab_size, batch, seq, 4)
    torch.manual_seed(0)
    module = TrunkModule(VLM(lm), trunk_schedule(train, steps),
                         optim=OptimConfig(weight_decay=train.weight_decay),
                         tokens_per_step=batch * seq, image_id=-1)
    timer = StepTimes()
    options = RunOptions(checkpoint_every_s=float("inf"), compile=compile_,
                         accelerator="cpu" if cpu else "auto")
    factory = base.make_trainer
    base.make_trainer = lambda o, m, cbs: factory(o, m, cbs + [timer])
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = Checkpointer(latest=Path(tmp) / "latest.pt", total_steps=steps, options=options)
            fit(module, ListStream(batches), options=options, total_steps=steps, checkpointer=ckpt)
    finally:
        base.make_trainer = factory
    return tokens_per_s(timer.times, warmup, batch * seq)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="debug preset on CPU, 4 steps")
    parser.add_argument("--presets", nargs="+", default=["79m", "411m"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10, help="steps excluded (compilation)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the card")
    args = parser.parse_args()
    cpu = args.dry_run or not torch.cuda.is_available()
    if cpu and not args.dry_run:
        sys.exit("no CUDA device: run with --dry-run for a CPU smoke test")
    presets = ["debug"] if args.dry_run else args.presets
    steps, warmup = (4, 1) if args.dry_run else (args.steps, args.warmup)
    device = "cpu" if cpu else "cuda"
    measured = measured_peak(device)
    peak = measured if cpu else args.peak_tflops * 1e12
    name = "cpu" if cpu else torch.cuda.get_device_name(0)
    print(f"device {name}: nominal peak {peak / 1e12:.3f} TFLOP/s, "
          f"measured matmul {measured / 1e12:.3f} TFLOP/s")
    mfus = []
    for p in presets:
        lm = get_preset(p).model.lm
        tps = run_preset(p, steps, warmup, MICRO_BATCH.get(p, 8), not args.no_compile and not cpu, cpu)
        mfu = tps * lm_flops_per_token(lm, get_preset(p).train.seq_len) / peak
        mfus.append(f"{p} {mfu:.1%}")
        print(f"{p}: {tps:,.0f} tokens/s, MFU {mfu:.1%}")
    print(f"result: MFU {', '.join(mfus)} on {name} (target >= 40% on an H100)")


if __name__ == "__main__":
    main()
