"""Data-layer throughput: image-stage batches per second for the demo presets (170k, 1m, the scales
of studies/demo.toml) as a ratio against the training step's consumption rate measured in the same
run (target ≥ 5×); the `debug` test preset is printed for reference (its training step is so cheap
that the ratio says little about a real run).

Each preset's image stage is fed by `models.data.mixed_stream` over the built-in world at its
batch size, sequence length and image tokens, all image-caption data (image_ratio = 1, the most
image work per batch) plus a 20 % mix for reference. The training rate is a plain PyTorch
forward/backward/AdamW step of the preset's `VLM` on those batches (one thread, as in a data
worker's absence). Last line: `result: …`.
"""

from __future__ import annotations

import argparse
import time

from models.data import get_tokenizer, mixed_stream
from models.presets import get_preset
from models.steps import DataSource

WORLD = DataSource(name="world", kind="world", options=(("seed", 0),))
PRESETS = ("debug", "170k", "1m")
DEMO_PRESETS = ("170k", "1m")  # what the target is about


def stream_for(preset, tok, ratio: float):
    m = preset.model
    return mixed_stream(WORLD, WORLD, None, tok, batch_size=preset.train.batch_size,
                        seq_len=preset.train.image_stage_seq_len, image_ratio=ratio,
                        instruction_share=0.0, image_size=m.vision.image_size,
                        image_tokens=m.image_tokens, seed=0)


def data_rate(stream, seconds: float) -> float:
    next(stream)  # warm caches (tokenizer, masks)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        next(stream)
        n += 1
    return n / (time.perf_counter() - start)


def train_rate(preset, stream, tok, seconds: float) -> float | None:
    try:
        import torch

        from models.stages.batches import to_tensors
        from models.vlm import VLM, token_losses
    except ImportError:  # the training side is not installed / not there yet
        return None
    torch.manual_seed(0)
    model = VLM(preset.model.lm, preset.model.vision, preset.model.projector)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    batches = [to_tensors(next(stream)) for _ in range(4)]

    def step(b) -> None:
        logits = model(b["tokens"], b.get("images"), tok.image_id)
        loss = token_losses(logits, b["targets"]).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()

    step(batches[0])
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step(batches[n % len(batches)])
        n += 1
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    args = parser.parse_args()
    import torch
    torch.set_num_threads(1)
    tok = get_tokenizer(WORLD)
    ratios = {}
    for name in PRESETS:
        preset = get_preset(name)
        full = data_rate(stream_for(preset, tok, 1.0), args.seconds)
        mix = data_rate(stream_for(preset, tok, 0.2), args.seconds)
        train = train_rate(preset, stream_for(preset, tok, 1.0), tok, args.seconds)
        ratio = full / train if train else float("nan")
        ratios[name] = ratio
        print(f"{name:>6}: batch {preset.train.batch_size}×{preset.train.image_stage_seq_len}  "
              f"image-caption {full:8.1f} batches/s  20% mix {mix:8.1f} batches/s  "
              f"train step {train or float('nan'):7.1f} steps/s  data/train {ratio:6.1f}×")
    worst = min(ratios[name] for name in DEMO_PRESETS)
    print(f"result: data/train throughput ratio min {worst:.1f}× over the demo presets "
          f"{', '.join(DEMO_PRESETS)} (target ≥ 5×; {'ok' if worst >= 5 else 'BELOW TARGET'}); "
          f"debug {ratios['debug']:.1f}×")


if __name__ == "__main__":
    main()
