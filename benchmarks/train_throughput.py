"""Tokens/s of a Lightning trunk step against a plain PyTorch loop on the same model, data and
batch, in one process, and the model FLOP utilisation on CPU (achieved FLOP/s over a torch
matmul peak measured in the same run). Target: Lightning / plain >= 0.9.

    .venv/bin/python benchmarks/train_throughput.py [--preset 5m] [--steps 12] [--warmup 3] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import time

import lightning as L
import numpy as np
import torch

from models.accounting import lm_flops_per_token
from models.config import OptimConfig, RunOptions, default_threads
from models.presets import get_preset
from models.schedules import trunk_schedule
from models.stages.checkpointer import Checkpointer
from models.stages.lm import TrunkModule
from models.stages.trainer import fit
from models.synthetic import Batch
from models.vlm import VLM, part_means, split_losses, token_losses


class ListStream:
    """Pre-built batches, so that neither loop pays for data generation."""

    def __init__(self, batches: list[Batch]) -> None:
        self.batches, self.position = batches, 0

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        batch = self.batches[self.position % len(self.batches)]
        self.position += 1
        return batch

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]


def make_batches(vocab: int, batch_size: int, seq_len: int, n: int) -> list[Batch]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        seq = rng.integers(8, vocab, (batch_size, seq_len + 1))
        out.append(Batch(tokens=seq[:, :-1], targets=seq[:, 1:], loss_kind=np.zeros(
            (batch_size, seq_len), np.int8), images=np.zeros((0, 3, 1, 1), np.float32),
            n_tokens=batch_size * seq_len, n_image_tokens=0))
    return out


class StepTimes(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_end(self, *args) -> None:
        self.times.append(time.perf_counter())


def tokens_per_s(times: list[float], warmup: int, tokens_per_step: int) -> float:
    return (len(times) - 1 - warmup) * tokens_per_step / (times[-1] - times[warmup])


def plain_loop(model: VLM, batches: list[Batch], schedule, optim: OptimConfig, steps: int) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=schedule.lr_at(0),
                            betas=(optim.beta1, optim.beta2), weight_decay=optim.weight_decay)
    times = []
    for step in range(steps):
        b = batches[step % len(batches)]
        for g in opt.param_groups:
            g["lr"] = schedule.lr_at(step)
        tokens, targets = torch.as_tensor(b.tokens), torch.as_tensor(b.targets)
        kinds = torch.as_tensor(b.loss_kind.astype(np.int64))
        loss, parts = split_losses(token_losses(model(tokens), targets), targets, kinds)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        _ = float(loss.detach()), float(norm), part_means(parts)  # the same values read back
        times.append(time.perf_counter())
    return times


def lightning_loop(model: VLM, batches: list[Batch], schedule, optim: OptimConfig, steps: int,
                   tokens_per_step: int, root) -> list[float]:
    module = TrunkModule(model, schedule, optim=optim, tokens_per_step=tokens_per_step, image_id=-1)
    timer = StepTimes()
    options = RunOptions(checkpoint_every_s=float("inf"), accelerator="cpu")
    ckpt = Checkpointer(latest=root / "latest.pt", total_steps=steps, options=options)
    from models.stages import trainer as base
    trainer_factory = base.make_trainer
    base.make_trainer = lambda o, m, cbs, **kw: trainer_factory(o, m, cbs + [timer], **kw)
    try:
        fit(module, ListStream(batches), options=options, total_steps=steps, checkpointer=ckpt)
    finally:
        base.make_trainer = trainer_factory
    return timer.times


def matmul_peak(n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def main() -> None:
    import tempfile
    from pathlib import Path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="5m")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternate the two loops this often and keep each one's best: "
                             "a shared machine's load then hits both alike")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0 = models.config.default_threads())")
    args = parser.parse_args()
    torch.set_num_threads(args.threads or default_threads())
    preset = get_preset(args.preset)
    lm, train = preset.model.lm, preset.train
    tps_step = train.batch_size * train.seq_len
    batches = make_batches(lm.vocab_size, train.batch_size, train.seq_len, args.steps)
    schedule = trunk_schedule(train, args.steps)
    optim = OptimConfig(weight_decay=train.weight_decay, grad_clip=train.grad_clip)
    torch.manual_seed(0)
    base_model = VLM(lm)
    peak, plain, light = 0.0, 0.0, 0.0
    for _ in range(args.rounds):
        peak = max(peak, matmul_peak())
        times = plain_loop(copy.deepcopy(base_model), batches, schedule, optim, args.steps)
        plain = max(plain, tokens_per_s(times, args.warmup, tps_step))
        with tempfile.TemporaryDirectory() as tmp:
            times = lightning_loop(copy.deepcopy(base_model), batches, schedule, optim,
                                   args.steps, tps_step, Path(tmp))
        light = max(light, tokens_per_s(times, args.warmup, tps_step))
    flops = lm_flops_per_token(lm, train.seq_len)
    mfu = light * flops / peak
    print(f"preset {args.preset}: {tps_step} tokens/step, {flops / 1e6:.2f} MFLOP/token, "
          f"matmul peak {peak / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} threads)")
    print(f"plain PyTorch loop: {plain:,.0f} tokens/s (best of {args.rounds})")
    print(f"Lightning trunk step: {light:,.0f} tokens/s (best of {args.rounds})")
    print(f"result: lightning/plain = {light / plain:.3f} (target >= 0.9); CPU MFU = {mfu:.1%}")


if __name__ == "__main__":
    main()
