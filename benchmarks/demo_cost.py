"""What the demo costs on this machine: a fixed slice of `studies/demo.toml` (each scale's chain —
encoder, part of the trunk, one branch, one fine-tune, their evals — shortened to a few optimizer
steps) run in this process, its tokens/s per kind of step, the same 1m model and batch through a
plain PyTorch loop as the ratio's baseline, and the whole demo projected on this machine (the
slice's rates, the DAG scheduled over the study's workers, one core each).

    .venv/bin/python benchmarks/demo_cost.py [--study studies/demo.toml] [--steps 40] [--workers 2]

The projection is what `vlmsweep demo` prints before it trains; run this beside a demo (or on
another commit) to compare costs. The last line is `result: ...`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def plain_tokens_per_s(scale: str, steps: int) -> tuple[float, int]:
    """The 1m trunk's model and real world batches through a bare PyTorch loop: tokens/s, tokens/step."""
    import torch
    from train_throughput import plain_loop, tokens_per_s

    import models.data as data
    from models.config import OptimConfig
    from models.presets import get_preset
    from models.schedules import trunk_schedule
    from models.steps import DataSource
    from models.vlm import VLM

    preset = get_preset(scale)
    train = preset.train
    source = DataSource(name="world", kind="world", options=(("n_kinds", 8), ("seed", 0)))
    tok = data.get_tokenizer(source)
    stream = data.text_stream(source, tok, batch_size=train.batch_size, seq_len=train.seq_len, seed=0)
    batches = [next(stream) for _ in range(8)]
    torch.manual_seed(0)
    times = plain_loop(VLM(preset.model.lm), batches, trunk_schedule(train, steps),
                       OptimConfig(weight_decay=train.weight_decay, grad_clip=train.grad_clip), steps)
    per_step = train.batch_size * train.seq_len
    return tokens_per_s(times, min(3, steps // 4), per_step), per_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=ROOT / "studies" / "demo.toml")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps of each training step in the slice")
    parser.add_argument("--workers", type=int, default=0, help="workers to project onto (default: the study's)")
    args = parser.parse_args()
    from sweep.estimate import calibration_slice, expected_seconds, measured_rates, project
    from sweep.plan import plan_study
    from sweep.spec import load_study

    study = load_study(args.study)
    workers = args.workers or study.backend.workers
    os.environ.setdefault("VLMSWEEP_WORKERS", str(workers))  # threads as each of the demo's workers has
    from models.run import run_step

    plan = plan_study(study, root=Path(tempfile.mkdtemp(prefix="demo-cost-")))
    chain = calibration_slice(list(plan.steps), optimizer_steps=args.steps)
    began = time.perf_counter()
    for step in chain:
        run_step(step, plan.root)
    rates = measured_rates(plan.root, chain)
    for (kind, scale, groups), rate in sorted(rates.items()):
        unit = "items/task" if kind == "eval" else ("samples" if kind == "encoder" else "tokens")
        what = f"{kind} {scale}" + (f" {'+'.join(groups)}" if groups else "")
        print(f"{what:<22} {1 / rate.per_unit_s:>10.1f} {unit}/s   setup {rate.setup_s:5.1f} s")
    lm_scale = max((s.meta["scale"] for s in chain if s.kind == "trunk"),
                   key=lambda name: next(s.config.lm.d_model for s in chain if s.meta.get("scale") == name))
    plain, _ = plain_tokens_per_s(lm_scale, args.steps)
    trunk = 1 / rates[("trunk", lm_scale, ())].per_unit_s
    expected = expected_seconds(plan.steps, rates)
    total, summed = project(list(plan.steps), expected, workers), sum(expected.values())
    print(f"slice ran in {time.perf_counter() - began:.0f} s; {len(expected)}/{len(plan.steps)} steps priced")
    print(f"result: demo_cost {lm_scale} trunk {trunk:.0f} tok/s vs plain PyTorch {plain:.0f} tok/s "
          f"(ratio {trunk / plain:.3f}); demo {args.study.name} projected {total:.0f} s on {workers} workers "
          f"({summed:.0f} s of step time, {len(plan.steps)} steps)")


if __name__ == "__main__":
    main()
