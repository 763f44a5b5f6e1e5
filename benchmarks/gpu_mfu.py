"""Model FLOP utilisation of the paper's 79m and 411m presets training in bf16 on one GPU, through
the same Lightning trunk step the runs use. Target on one H100: MFU >= 40%.

    .venv/bin/python benchmarks/gpu_mfu.py                 # on a GPU machine (~5 min)
    .venv/bin/python benchmarks/gpu_mfu.py --dry-run       # the debug preset on CPU, seconds
    .venv/bin/python benchmarks/gpu_mfu.py --runs 79m:16 79m:16:eager --profile 79m:16

A run is PRESET[:MICRO_BATCH][:eager]; --profile prints the top kernels of one run (torch.profiler).

    .venv/bin/python benchmarks/gpu_mfu.py --loader files [--workers 12] [--stages trunk image20]

`--loader files` measures each run twice in the same invocation: fed from memory (batches made
beforehand, as above) and through the real loader — the data-worker pipeline reading files in the
paper data's published layouts (`benchmarks/input_pipeline.py`'s seeded fixture: token shards
written by `vlmsweep tokenize` from DCLM-style jsonl.zst, a WebDataset shard of 384 px JPEGs with
`resize = "device"`) — and prints files ÷ memory: below 1, the GPU waited for data. Stages: the
trunk (text, seq_len) and the image stage at 20% image tokens (image_stage_seq_len, the preset's
SigLIP-shaped encoder); the image stage's MFU counts the LM's FLOPs only.

MFU = tokens/s × (6·N + attention FLOPs per token, models.accounting) / peak; the peak is the
card's dense bf16 figure (--peak-tflops, H100 SXM 989), and a bf16 matmul measured in the same
run is printed beside it. Micro-batches replace the paper's 512×2048 batches (FLOPs per token are
the same); per-step loss logging (one host sync) is included, as in real runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import ListStream, StepTimes, make_batches, tokens_per_s  # noqa: E402

from models.accounting import lm_flops_per_token  # noqa: E402
from models.config import OptimConfig, RunOptions, default_data_workers  # noqa: E402
from models.presets import get_preset  # noqa: E402
from models.schedules import trunk_schedule  # noqa: E402
from models.stages import trainer as base  # noqa: E402
from models.stages.checkpointer import Checkpointer  # noqa: E402
from models.stages.lm import BranchModule, TrunkModule  # noqa: E402
from models.stages.trainer import fit  # noqa: E402
from models.vlm import VLM  # noqa: E402
from sweep.spec import load_study  # noqa: E402

# The micro-batches the paper study runs with (studies/paper.toml [backend.micro_batch]), the best
# measured on one H100 (2026-11-26): 79m 8/16/32 → 33.1/37.8/40.3% MFU, 154m 16 → 35.8%, 411m
# 8/16 → 45.5/48.1%, 1.4b 4/8 → 49.0/53.6% (compiled; eager 14.3% and 21.0% for 79m at 16 and
# 411m at 8).
MICRO_BATCH = dict(load_study(Path(__file__).resolve().parents[1] / "studies" / "paper.toml")
                   .backend.micro_batch_per_scale) | {"debug": 4}


class ProfileSteps(L.Callback):
    """Steps a torch.profiler schedule once per optimizer step."""

    def __init__(self, prof) -> None:
        self.prof = prof

    def on_train_batch_end(self, *args) -> None:
        self.prof.step()


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


class Feed:
    """What a run trains on: a stage's module parts and its batches, from memory or from files."""

    def __init__(self, stage: str, lm: Any, stream: Any, seq: int, image_id: int = -1, model: Any = None,
                 workers: int = 0) -> None:
        self.stage, self.lm, self.stream, self.seq = stage, lm, stream, seq
        self.image_id, self.workers = image_id, workers
        self.model = model or (lambda: VLM(lm))


def memory_feed(name: str, batch: int) -> Feed:
    """The trunk on random token batches made beforehand (the MFU baseline)."""
    preset = get_preset(name)
    lm, seq = preset.model.lm, preset.train.seq_len
    return Feed("trunk", lm, ListStream(make_batches(lm.vocab_size, batch, seq, 4)), seq)


def file_feeds(name: str, batch: int, stage: str, root: Path, workers: int) -> tuple[Feed, Feed]:
    """(memory, files) for `stage` of preset `name`: the same stream read through the data workers
    from the fixture's files, and its first 8 batches held in memory (read with no workers, so
    they own their arrays), so that the two differ only in where a batch comes from."""
    import input_pipeline as ip

    from models import data as d

    if not (root / "tokens").exists():
        ip.make_fixture(root)
    src = ip.sources(root)
    tok = d.get_tokenizer(src["text"])
    preset = get_preset(name)
    lm = preset.model.lm
    if tok.vocab_size > lm.vocab_size:  # the small world presets (a CPU dry run) take the fixture's
        lm = dataclasses.replace(lm, vocab_size=tok.vocab_size)
    if stage == "trunk":
        seq = preset.train.seq_len

        def stream():
            return d.text_stream(src["tokens"], tok, batch_size=batch, seq_len=seq, seed=0)
        model = None
    elif stage == "image20":
        seq, vision, projector = preset.train.image_stage_seq_len, preset.model.vision, preset.model.projector

        def stream():
            return d.mixed_stream(src["tokens"], src["pairs, device resize"], None, tok, batch_size=batch, seq_len=seq,
                                  image_ratio=0.2, instruction_share=0.0, image_size=vision.image_size,
                                  image_tokens=projector.image_tokens(vision.n_patches), seed=0)

        def model():
            return VLM(lm, vision, projector)
    else:
        raise ValueError(f"unknown stage {stage!r} (trunk, image20)")
    first = stream()
    held = ListStream([next(first) for _ in range(8)])
    return (Feed(stage, lm, held, seq, tok.image_id, model),
            Feed(stage, lm, stream(), seq, tok.image_id, model, workers))


def run_preset(name: str, steps: int, warmup: int, batch: int, compile_: bool, cpu: bool,
               profile: bool = False, feed: Feed | None = None) -> float:
    preset = get_preset(name)
    train = preset.train
    feed = feed or memory_feed(name, batch)
    seq = feed.seq
    torch.manual_seed(0)
    kind = TrunkModule if feed.stage == "trunk" else BranchModule
    module = kind(feed.model(), trunk_schedule(train, steps),
                  optim=OptimConfig(weight_decay=train.weight_decay),
                  tokens_per_step=batch * seq, image_id=feed.image_id)
    timer = StepTimes()
    extra: list[L.Callback] = [timer]
    prof = None
    if profile:
        acts = [torch.profiler.ProfilerActivity.CPU] + ([] if cpu else [torch.profiler.ProfilerActivity.CUDA])
        prof = torch.profiler.profile(activities=acts, schedule=torch.profiler.schedule(
            wait=warmup, warmup=1, active=3, repeat=1))
        extra.append(ProfileSteps(prof))
    options = RunOptions(checkpoint_every_s=float("inf"), compile=compile_,
                         accelerator="cpu" if cpu else "auto", data_workers=feed.workers)
    factory = base.make_trainer
    base.make_trainer = lambda o, m, cbs, **kw: factory(o, m, cbs + extra, **kw)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = Checkpointer(latest=Path(tmp) / "latest.pt", total_steps=steps, options=options)
            if prof is not None:
                prof.start()
            fit(module, feed.stream, options=options, total_steps=steps, checkpointer=ckpt)
            _ = module.rows  # the metrics read back, as a real run does at its end
    finally:
        base.make_trainer = factory
        if prof is not None:
            prof.stop()
    if prof is not None:
        key = "self_cpu_time_total" if cpu else "self_device_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=60))
    return tokens_per_s(timer.times, warmup, batch * seq)


def measure(label: str, p: str, steps: int, warmup: int, batch: int, compile_: bool, cpu: bool,
            peak: float, feed: Feed | None = None) -> float | None:
    """One run's printed line; its MFU (of the LM's FLOPs), or None where it failed."""
    feed = feed or memory_feed(p, batch)
    if not cpu:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        tps = run_preset(p, steps, warmup, batch, compile_, cpu, feed=feed)
    except Exception as exc:  # one configuration failing (OOM, compiler) must not end the sweep
        print(f"{label}: failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}", flush=True)
        if not cpu:
            torch.cuda.empty_cache()
        return None
    mfu = tps * lm_flops_per_token(feed.lm, feed.seq) / peak
    mem = "" if cpu else f", peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
    print(f"{label}: {tps:,.0f} tokens/s, MFU {mfu:.1%}{mem} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return mfu


def loader_runs(runs: list[str], steps: int, warmup: int, args: Any, cpu: bool, peak: float,
                name: str) -> None:
    """Each run and stage fed from memory, then through the loader from files; files ÷ memory."""
    workers = default_data_workers() if args.workers is None else args.workers
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            p, batch, eager = parse_run(run)
            batch = batch or MICRO_BATCH.get(p, 8)
            compile_ = not (eager or args.no_compile or cpu)
            for stage in args.stages:
                held, files = file_feeds(p, batch, stage, Path(tmp), workers)
                label = f"{p} {stage} micro-batch {batch} {'compiled' if compile_ else 'eager'}"
                got = [measure(f"{label}, {what}", p, steps, warmup, batch, compile_, cpu, peak, feed)
                       for what, feed in (("from memory", held), (f"from files, {workers} workers", files))]
                if None not in got:
                    ratios.append(f"{p} {stage} {got[1] / got[0]:.2f}x")  # same FLOPs a token: tokens/s
    print(f"result: loader from files / from memory: {', '.join(ratios) or 'no run finished'} "
          f"on {name} ({workers} data workers; below 1: the GPU waited for data)")


def parse_run(text: str) -> tuple[str, int | None, bool]:
    """PRESET[:MICRO_BATCH][:eager]"""
    parts = text.split(":")
    batch = int(parts[1]) if len(parts) > 1 and parts[1] else None
    return parts[0], batch, "eager" in parts[2:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="debug preset on CPU, 4 steps")
    parser.add_argument("--runs", nargs="+", default=["79m", "411m"],
                        help="PRESET[:MICRO_BATCH][:eager] each (eager: without torch.compile)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10, help="steps excluded (compilation)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--profile", metavar="RUN", help="also profile this run (as in --runs): top kernels")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the card")
    parser.add_argument("--loader", choices=("memory", "files"), default="memory",
                        help="files: also train each run through the data-worker loader on files")
    parser.add_argument("--stages", nargs="+", choices=("trunk", "image20"), default=["trunk", "image20"],
                        help="with --loader files")
    parser.add_argument("--workers", type=int, default=None,
                        help="data workers with --loader files (default: as a run would start)")
    args = parser.parse_args()
    cpu = args.dry_run or not torch.cuda.is_available()
    if cpu and not args.dry_run:
        sys.exit("no CUDA device: run with --dry-run for a CPU smoke test")
    runs = ["debug"] if args.dry_run else args.runs
    steps, warmup = (4, 1) if args.dry_run else (args.steps, args.warmup)
    device = "cpu" if cpu else "cuda"
    measured = measured_peak(device)
    peak = measured if cpu else args.peak_tflops * 1e12
    name = "cpu" if cpu else torch.cuda.get_device_name(0)
    print(f"device {name}: nominal peak {peak / 1e12:.3f} TFLOP/s, "
          f"measured matmul {measured / 1e12:.3f} TFLOP/s", flush=True)
    if args.loader == "files":
        loader_runs(runs, steps, warmup, args, cpu, peak, name)
        return
    best: dict[str, tuple[float, str]] = {}
    for run in runs:
        p, batch, eager = parse_run(run)
        batch = batch or MICRO_BATCH.get(p, 8)
        compile_ = not (eager or args.no_compile or cpu)
        label = f"{p} micro-batch {batch} {'compiled' if compile_ else 'eager'}"
        mfu = measure(label, p, steps, warmup, batch, compile_, cpu, peak)
        if mfu is not None and mfu > best.get(p, (-1.0, ""))[0]:
            best[p] = (mfu, label)
    if args.profile:
        p, batch, eager = parse_run(args.profile)
        run_preset(p, min(steps, warmup + 5), warmup, batch or MICRO_BATCH.get(p, 8),
                   not (eager or args.no_compile or cpu), cpu, profile=True)
    summary = ", ".join(f"{p} {m:.1%} ({label.split(' ', 1)[1]})" for p, (m, label) in best.items())
    print(f"result: MFU {summary} on {name} (target >= 40% on an H100)")


if __name__ == "__main__":
    main()
