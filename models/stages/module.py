"""`StageModule`: the manual-optimisation LightningModule every training stage subclasses (encoder,
trunk, branch, finetune). It sets the LR from the schedule each step, accumulates micro-batches,
clips, steps AdamW, and keeps its metrics rows (read back from the device in batches) so that
they are saved with every checkpoint.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import lightning as L
import torch
from torch import nn

from models import checkpoint as ck
from models.config import OptimConfig
from models.schedules import Schedule
from models.stages import guard as gd
from models.stages.sharding import clip_sharded, is_sharded, load_optimizer_state, optimizer_state, weights_state
from models.vlm import part_means


def decay_groups(named: list[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Two AdamW groups: matrices decay, vectors (norms, biases) do not."""
    named = [(n, p) for n, p in named if p.requires_grad]
    return [{"params": [p for _, p in named if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0}]


def _with_prefix_state(optimizer: torch.optim.Optimizer, saved: dict) -> dict:
    """This optimizer's state dict carrying `saved`'s per-parameter state (AdamW moments, step).

    A branch's optimizer lists the LM's parameters first, in the trunk's order, then the new
    vision/projector ones; the trunk's state therefore maps index for index onto that prefix.
    """
    current = optimizer.state_dict()
    n_saved = sum(len(g["params"]) for g in saved["param_groups"])
    shapes_ok = all(len(a["params"]) == len(b["params"])
                    for a, b in zip(saved["param_groups"], current["param_groups"]))
    if not shapes_ok or n_saved > sum(len(g["params"]) for g in current["param_groups"]):
        raise ValueError("the saved optimizer state does not match this model's LM parameters")
    return {"state": dict(saved["state"]), "param_groups": current["param_groups"]}


class StageModule(L.LightningModule):
    """A training stage: subclasses define `compute_loss` and `param_groups`."""

    FLUSH_STEPS = 256  # steps whose metrics stay on the device before one read-back

    def __init__(self, model: nn.Module, schedule: Schedule, *, optim: OptimConfig,
                 tokens_per_step: int, start_step: int = 0) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.model, self.schedule, self.optim = model, schedule, optim
        self.tokens_per_step = tokens_per_step
        self.step_count = start_step  # optimizer steps done, across resumes
        self._rows: list[tuple[int, int, str, float]] = []
        # Steps' values still on the device: read back in one sync every FLUSH_STEPS steps (or when
        # `rows` is read), so that a training step never waits for the accelerator.
        self._pending: list[tuple[int, list[tuple[str, int]], torch.Tensor, dict[str, float]]] = []
        self.last_tokens_per_s = 0.0
        self._window = [0.0, 0.0]  # data wait and step seconds since `take_data_wait_share`
        self.data_state: dict | None = None  # the stream's position after the last trained batch
        self.resume: dict[str, Any] | None = None  # optimizer / RNG state to restore at start
        self._last_time: float | None = None
        self.final_weights: dict[str, torch.Tensor] | None = None  # FSDP: gathered at train end
        self.guard = gd.Guard()  # non-finite steps and loss spikes (models.stages.guard)
        self._spike_window: Any = None  # the losses a spike is measured against (built lazily)

    # -- subclasses ---------------------------------------------------------------------------
    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def param_groups(self) -> list[dict]:
        return decay_groups(list(self.model.named_parameters()), self.optim.weight_decay)

    def loss_sum(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(sum of the per-position losses, parts as (sum, count) pairs): micro-batching stages."""
        raise NotImplementedError(f"{type(self).__name__} cannot split a batch into micro-batches")

    def scored_positions(self, batch: dict) -> torch.Tensor:
        """How many positions of `batch` its loss averages over (micro-batching stages)."""
        raise NotImplementedError(f"{type(self).__name__} cannot split a batch into micro-batches")

    def compile_model(self) -> None:
        """torch.compile the model in place (state_dict keys stay those of the plain model)."""
        self.model.compile()

    # -- Lightning ----------------------------------------------------------------------------
    def configure_optimizers(self) -> torch.optim.Optimizer:
        # On CUDA the fused kernel: one launch for every parameter (CPU keeps the reference loop,
        # whose numbers the bit-exact resume tests pin).
        cuda = next(self.model.parameters()).is_cuda
        return torch.optim.AdamW(self.param_groups(), lr=self.schedule.lr_at(self.step_count),
                                 betas=(self.optim.beta1, self.optim.beta2), fused=cuda or None)

    def on_fit_start(self) -> None:
        # The first step's clock starts before Lightning fetches its batch (which it does before
        # on_train_start), so that its time holds its data wait: its tokens/s includes warm-up.
        self._last_time = time.perf_counter()

    def on_train_start(self) -> None:
        if self.resume is None:
            return
        optimizer, strategy = self.optimizers().optimizer, self.trainer.strategy
        if self.resume.get("optimizer"):
            load_optimizer_state(strategy, optimizer, self.resume["optimizer"])
        if self.resume.get("optimizer_prefix"):
            load_optimizer_state(strategy, optimizer,
                                 _with_prefix_state(optimizer, self.resume["optimizer_prefix"]))
        if self.resume.get("rng"):
            ck.set_rng_state(self.resume["rng"])
        self.resume = None

    def training_step(self, item: tuple[dict, dict], batch_idx: int) -> None:
        batch, data_state = item
        opt = self.optimizers()
        lr = self.schedule.lr_at(self.step_count)
        for group in opt.optimizer.param_groups:
            group["lr"] = lr
        if "micro" in batch or self.world > 1:
            loss, parts = self._accumulate(batch.get("micro") or [batch])
        else:
            loss, parts = self.compute_loss(batch)
            self.manual_backward(loss)
        clip = self.optim.grad_clip if self.optim.grad_clip > 0 else float("inf")
        grad_norm = self._clip_gradients(opt.optimizer, clip)
        if gd.nonfinite(loss, grad_norm, self.world):  # before the update: it never lands
            opt.zero_grad(set_to_none=True)
            gd.handle_nonfinite(self, loss, grad_norm, data_state)
            return
        opt.step()
        opt.zero_grad(set_to_none=True)
        self.step_count += 1
        self.data_state = data_state
        self._record(loss, parts, lr, grad_norm, int(batch.get("skipped_records", 0)),
                     float(batch.get("data_wait_s", 0.0)))

    @property
    def world(self) -> int:
        """Ranks this module trains on (1 before it is attached to a trainer)."""
        return self._trainer.world_size if self._trainer is not None else 1

    @property
    def sharded(self) -> bool:
        """Whether the ranks hold shards of the state (FSDP), so gathering it is a collective."""
        return self._trainer is not None and is_sharded(self.trainer.strategy)

    def _accumulate(self, chunks: list[dict]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Backward through each micro-batch in turn: the whole global batch's loss and gradient.

        Each chunk's loss sum is divided by the scored positions of the global batch (every rank's:
        one all-reduce of a count, left on the device) and, as DDP averages gradients over ranks,
        multiplied by the rank count. Gradients are synchronised once, in the last backward.
        """
        denominator, world = sum(self.scored_positions(c) for c in chunks), self.world
        if world > 1:
            import torch.distributed as dist

            dist.all_reduce(denominator)
        denominator = denominator.clamp(min=1)
        total, parts = None, {}
        for i, chunk in enumerate(chunks):
            loss_sum, chunk_parts = self.loss_sum(chunk)
            last = i == len(chunks) - 1
            with contextlib.nullcontext() if last or world == 1 else self.trainer.strategy.block_backward_sync():
                self.manual_backward(loss_sum / denominator if world == 1 else loss_sum * world / denominator)
            total = loss_sum.detach() if total is None else total + loss_sum.detach()
            for name, value in chunk_parts.items():
                parts[name] = value if name not in parts else parts[name] + value
        # Per rank: its share of the global mean, times the ranks (the metrics average over ranks).
        return (total / denominator if world == 1 else total * world / denominator), parts

    def _clip_gradients(self, optimizer: torch.optim.Optimizer, clip: float) -> torch.Tensor:
        """Clip to the global gradient norm (the norm before clipping is returned and logged)."""
        if self.sharded:
            return clip_sharded(self.trainer.strategy, clip)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        return torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)

    def _record(self, loss: torch.Tensor, parts: dict[str, torch.Tensor], lr: float,
                grad_norm: torch.Tensor, skipped: int, data_wait_s: float = 0.0) -> None:
        layout, flat = [], []
        for name, value in {"train_loss": loss.detach(), **parts}.items():
            value = value.detach().float().reshape(-1)
            layout.append((name, value.numel()))
            flat.append(value)
        values = self.trainer.strategy.reduce(torch.cat(flat), reduce_op="mean")
        layout.append(("grad_norm", 1))
        values = torch.cat([values, grad_norm.detach().float().reshape(1).to(values.device)])
        now = time.perf_counter()
        tps = self.tokens_per_step / (now - self._last_time) if self._last_time else float("nan")
        if self._last_time:
            self._window[0] += data_wait_s
            self._window[1] += now - self._last_time
        self._last_time, self.last_tokens_per_s = now, tps
        host = {"lr": lr, "tokens_per_s": tps, "skipped_records": float(skipped),
                "data_wait_s": data_wait_s}
        self._pending.append((self.step_count, layout, values, host))
        if len(self._pending) >= self.FLUSH_STEPS:
            self._flush()

    def _flush(self) -> None:
        """Read the pending steps' values back (one host sync) into metrics rows."""
        if not self._pending:
            return
        values = torch.cat([v for _, _, v, _ in self._pending]).cpu().tolist()
        at = 0
        for step, layout, _, host in self._pending:
            parts: dict[str, Any] = {}
            for name, n in layout:
                parts[name] = values[at] if n == 1 else values[at:at + n]
                at += n
            row = part_means(parts)  # train_loss first, then the parts present, then grad_norm
            grad_norm = row.pop("grad_norm")
            row.update(lr=host["lr"], grad_norm=grad_norm, tokens_per_s=host["tokens_per_s"],
                       skipped_records=host["skipped_records"], data_wait_s=host["data_wait_s"])
            tokens = step * self.tokens_per_step
            self._rows.extend((step, tokens, k, v) for k, v in row.items())
            if self._spike_window is None:
                self._spike_window = gd.spike_window(self._rows[:-len(row)], self.guard)
            spike = gd.spike_row(step, tokens, row["train_loss"], self._spike_window, self.guard)
            if spike is not None:
                self._rows.append(spike)
        self._pending.clear()

    def take_data_wait_share(self) -> float | None:
        """The share of step time spent waiting for data since the last call (progress.json)."""
        wait, total = self._window
        self._window = [0.0, 0.0]
        return wait / total if total > 0 else None

    @property
    def rows(self) -> list[tuple[int, int, str, float]]:
        """(step, tokens, name, value) metrics rows of every step trained so far."""
        self._flush()
        return self._rows

    @rows.setter
    def rows(self, rows: list[tuple[int, int, str, float]]) -> None:
        self._pending.clear()
        self._rows, self._spike_window = rows, None

    def full_state(self) -> dict[str, Any]:
        """Everything a bit-exact resume needs (see models.checkpoint)."""
        strategy = self.trainer.strategy
        return {"step": self.step_count, "tokens": self.step_count * self.tokens_per_step,
                "model": weights_state(strategy, self.model),
                "optimizer": optimizer_state(strategy, self.optimizers().optimizer),
                "data": self.data_state, "rng": ck.rng_state(), "metrics": list(self.rows),
                "lr": self.schedule.lr_at(self.step_count)}
