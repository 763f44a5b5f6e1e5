"""Fine-tune length grouping: how much of a fine-tune batch is conversation rather than padding, and
the wall time of the same fine-tune steps, with batches cut from length-sorted megabatches
(`models.data.finetune.GROUP_BATCHES`, as LLaVA groups by length) against plain shuffled batches
(a group of one batch), in the same process.

The stream is the demo's: the 1m preset's image-stage sequence length and image tokens, the
8-kind world, batch 16 with text replay 0.25. The training step is a plain PyTorch forward/backward/
AdamW step of the 1m `VLM` on one thread. Target: grouped steps take ≤ 0.8× the time of ungrouped
ones. Last line: `result: …`.
"""

from __future__ import annotations

import argparse
import time

import torch

from models.data import finetune as ft
from models.data import finetune_epochs, get_tokenizer
from models.presets import get_preset
from models.stages.batches import to_tensors
from models.steps import DataSource
from models.vlm import VLM, masked_targets, token_losses

WORLD = DataSource(name="world", kind="world", options=(("n_kinds", 8), ("seed", 0)))


def batches(group: int, n: int, preset, tok) -> list:
    ft.GROUP_BATCHES, saved = group, ft.GROUP_BATCHES
    try:
        stream = finetune_epochs(WORLD, tok, batch_size=16, seq_len=preset.train.image_stage_seq_len,
                                 image_size=preset.model.vision.image_size,
                                 image_tokens=preset.model.image_tokens, epochs=1, seed=0,
                                 max_samples=16 * n, replay_source=WORLD, replay_share=0.25)
        return [next(stream) for _ in range(n)]
    finally:
        ft.GROUP_BATCHES = saved


def conversation_share(bs: list) -> float:
    slots = sum((b.tokens.shape[0] - 5) * b.tokens.shape[1] for b in bs)  # 5 replay rows a batch
    return sum(b.n_image_tokens for b in bs) / slots


def train_seconds(bs: list, preset, tok) -> float:
    torch.manual_seed(0)
    model = VLM(preset.model.lm, preset.model.vision, preset.model.projector)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    tensors = [to_tensors(b) for b in bs]
    start = time.perf_counter()
    for b in tensors:
        targets = masked_targets(b["tokens"], b["targets"], tok.image_id, False)
        loss = token_losses(model(b["tokens"], b.get("images"), tok.image_id), targets).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=64, help="fine-tune steps timed per variant")
    ap.add_argument("--repeats", type=int, default=2, help="alternating timed runs per variant")
    args = ap.parse_args()
    torch.set_num_threads(1)
    preset, tok = get_preset("1m"), get_tokenizer(WORLD)
    grouped, plain = batches(ft.GROUP_BATCHES, args.batches, preset, tok), batches(1, args.batches, preset, tok)
    share_g, share_p = conversation_share(grouped), conversation_share(plain)
    print(f"conversation share of conversation slots: grouped {share_g:.2f}, plain {share_p:.2f}")
    times = {"grouped": [], "plain": []}
    for _ in range(args.repeats):  # alternate, so that machine noise hits both
        times["plain"].append(train_seconds(plain, preset, tok))
        times["grouped"].append(train_seconds(grouped, preset, tok))
    g, p = min(times["grouped"]), min(times["plain"])
    print(f"{args.batches} steps: grouped {g:.2f} s, plain {p:.2f} s (best of {args.repeats})")
    ratio = g / p
    print(f"result: grouped/plain fine-tune step time {ratio:.2f}× (target ≤ 0.8×; "
          f"{'ok' if ratio <= 0.8 else 'MISSED'}), conversation share {share_g:.2f} vs {share_p:.2f}")


if __name__ == "__main__":
    main()
