"""What every training stage shares: a manual-optimisation LightningModule, the stream wrapper,
the checkpoint/progress/preemption callback and the Trainer factory.

Resumability: each batch travels with the data stream's state *after* it, so a checkpoint taken
after optimizer step s records exactly where step s+1's batch starts, however far Lightning
prefetches. Metrics rows live in the module and are saved with every checkpoint.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from models import checkpoint as ck
from models.schedules import Schedule
from models.vlm import part_means


@dataclass(frozen=True, kw_only=True, slots=True)
class OptimConfig:
    weight_decay: float = 0.1  # AdamW decoupled decay on matrices only (not norms, biases)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # global-norm clip; 0 disables (the norm is still logged)


def default_threads() -> int:
    """Intra-op threads for one step: $VLMSWEEP_THREADS, else the cores shared among the local
    workers ($VLMSWEEP_WORKERS, set by the local launcher), else every core.

    On a small shared CPU more threads than cores per process is ruinous: with two workers of two
    threads each on two cores, a 32-wide linear takes ~2 ms instead of ~10 µs (spinning OpenMP
    threads fight over the cores), so workers split the cores rather than share them.
    """
    cores = os.cpu_count() or 1
    threads = _positive_env("VLMSWEEP_THREADS")
    if threads is not None:
        return threads
    workers = _positive_env("VLMSWEEP_WORKERS")
    return max(1, cores // workers) if workers is not None else cores


def _positive_env(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None
    if value < 1:
        raise ValueError(f"environment variable {name}={raw!r} must be >= 1")
    return value


@dataclass(frozen=True, kw_only=True, slots=True)
class RunOptions:
    """How a step runs, never what it computes (none of this is in the step id)."""

    devices: int = 1  # >1: DDP through Lightning; each rank takes a slice of every global batch
    accelerator: str = "auto"  # auto = CUDA when present, else CPU
    compile: bool = False  # torch.compile the model (CUDA)
    micro_batch: int = 0  # LM stages: rows per forward/backward (0 = whole batch), gradients accumulate
    checkpoint_every_steps: int = 0  # periodic resumable checkpoint; 0 = time-based only
    checkpoint_every_s: float = 600.0  # periodic checkpoint by wall clock
    progress_every_s: float = 2.0  # progress.json cadence
    threads: int = field(default_factory=default_threads)  # torch intra-op threads (CPU)

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"RunOptions.threads must be >= 1, got {self.threads}")
        if self.micro_batch < 0:
            raise ValueError(f"RunOptions.micro_batch must be >= 0, got {self.micro_batch}")


def to_tensors(batch: Any) -> dict[str, torch.Tensor | int]:
    """A data-layer Batch (numpy arrays) as tensors; images may be empty."""
    out: dict[str, torch.Tensor | int] = {
        "tokens": torch.as_tensor(np.asarray(batch.tokens, dtype=np.int64)),
        "targets": torch.as_tensor(np.asarray(batch.targets, dtype=np.int64)),
        "loss_kind": torch.as_tensor(np.asarray(batch.loss_kind, dtype=np.int64)),
        "skipped_records": int(getattr(batch, "skipped_records", 0)),
    }
    images = getattr(batch, "images", None)
    if images is not None and len(images):
        out["images"] = torch.as_tensor(np.asarray(images, dtype=np.float32))
    return out


def _take_rows(batch: dict[str, Any], spans: list[slice], image_id: int,
               image_tokens: int) -> list[dict[str, Any]]:
    """The batch's rows in each of `spans`, with the images those rows hold (images are stored row
    after row; their offsets are counted once for every span)."""
    if "images" in batch:
        per_row = (batch["tokens"] == image_id).sum(1) // image_tokens
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), per_row.cumsum(0)]).tolist()
    out = []
    for rows in spans:
        part = {k: (v[rows] if isinstance(v, torch.Tensor) and k != "images" else v)
                for k, v in batch.items()}
        if "images" in batch:
            part["images"] = batch["images"][offsets[rows.start]:offsets[rows.stop]]
        out.append(part)
    return out


def split_rows(batch: dict[str, Any], rank: int, world: int, image_id: int,
               image_tokens: int) -> dict[str, Any]:
    """Rank `rank`'s rows of a global batch (DDP), with the images those rows hold."""
    if world == 1:
        return batch
    n = batch["tokens"].shape[0]
    if n % world:
        raise ValueError(f"batch_size {n} is not divisible by {world} devices")
    return _take_rows(batch, [slice(rank * n // world, (rank + 1) * n // world)], image_id,
                      image_tokens)[0]


def micro_batches(batch: dict[str, Any], size: int, image_id: int, image_tokens: int) -> dict[str, Any]:
    """The batch as consecutive chunks of at most `size` rows: {"micro": [chunk, …]}.

    The step accumulates their gradients, each chunk's loss sum over the whole batch's scored
    positions, so it computes the whole batch's gradient (up to float summation order).
    """
    n = batch["tokens"].shape[0]
    if size <= 0 or n <= size:
        return batch
    spans = [slice(i, min(i + size, n)) for i in range(0, n, size)]
    return {"micro": _take_rows(batch, spans, image_id, image_tokens),
            "skipped_records": batch.get("skipped_records", 0)}


class StreamDataset(IterableDataset):
    """Yields (tensors, stream state after this batch) from a BatchStream, finite or infinite."""

    def __init__(self, stream: Any, split: Callable[[dict], dict] | None = None) -> None:
        self.stream, self.split = stream, split

    def __iter__(self) -> Iterator[tuple[dict, dict]]:
        for batch in self.stream:
            tensors = to_tensors(batch)
            yield (self.split(tensors) if self.split else tensors), self.stream.state_dict()


def _first(item: Any) -> Any:
    return item


def make_loader(stream: Any, split: Callable[[dict], dict] | None = None) -> DataLoader:
    # num_workers=0: the stream's position must be the main process's to checkpoint it exactly.
    return DataLoader(StreamDataset(stream, split), batch_size=None, num_workers=0,
                      collate_fn=_first)


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
        self.data_state: dict | None = None  # the stream's position after the last trained batch
        self.resume: dict[str, Any] | None = None  # optimizer / RNG state to restore at start
        self._last_time: float | None = None

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

    def on_train_start(self) -> None:
        self._last_time = time.perf_counter()  # the first step's tokens/s includes warm-up
        if self.resume is None:
            return
        optimizer = self.optimizers().optimizer
        if self.resume.get("optimizer"):
            optimizer.load_state_dict(self.resume["optimizer"])
        if self.resume.get("optimizer_prefix"):
            optimizer.load_state_dict(_with_prefix_state(optimizer, self.resume["optimizer_prefix"]))
        if self.resume.get("rng"):
            ck.set_rng_state(self.resume["rng"])
        self.resume = None

    def training_step(self, item: tuple[dict, dict], batch_idx: int) -> None:
        batch, data_state = item
        opt = self.optimizers()
        lr = self.schedule.lr_at(self.step_count)
        for group in opt.optimizer.param_groups:
            group["lr"] = lr
        if "micro" in batch:
            loss, parts = self._accumulate(batch["micro"])
        else:
            loss, parts = self.compute_loss(batch)
            self.manual_backward(loss)
        params = [p for g in opt.optimizer.param_groups for p in g["params"]]
        clip = self.optim.grad_clip if self.optim.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        self.step_count += 1
        self.data_state = data_state
        self._record(loss, parts, lr, grad_norm, int(batch.get("skipped_records", 0)))

    def _accumulate(self, chunks: list[dict]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Backward through each micro-batch in turn: the whole batch's loss and gradient."""
        denominator = sum(self.scored_positions(c) for c in chunks).clamp(min=1)
        total, parts = None, {}
        for chunk in chunks:
            loss_sum, chunk_parts = self.loss_sum(chunk)
            self.manual_backward(loss_sum / denominator)
            total = loss_sum.detach() if total is None else total + loss_sum.detach()
            for name, value in chunk_parts.items():
                parts[name] = value if name not in parts else parts[name] + value
        return total / denominator, parts

    def _record(self, loss: torch.Tensor, parts: dict[str, torch.Tensor], lr: float,
                grad_norm: torch.Tensor, skipped: int) -> None:
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
        self._last_time, self.last_tokens_per_s = now, tps
        host = {"lr": lr, "tokens_per_s": tps, "skipped_records": float(skipped)}
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
                       skipped_records=host["skipped_records"])
            tokens = step * self.tokens_per_step
            self._rows.extend((step, tokens, k, v) for k, v in row.items())
        self._pending.clear()

    @property
    def rows(self) -> list[tuple[int, int, str, float]]:
        """(step, tokens, name, value) metrics rows of every step trained so far."""
        self._flush()
        return self._rows

    @rows.setter
    def rows(self, rows: list[tuple[int, int, str, float]]) -> None:
        self._pending.clear()
        self._rows = rows

    def full_state(self) -> dict[str, Any]:
        """Everything a bit-exact resume needs (see models.checkpoint)."""
        opt = self.optimizers().optimizer
        return {"step": self.step_count, "tokens": self.step_count * self.tokens_per_step,
                "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "optimizer": opt.state_dict(),
                "data": self.data_state, "rng": ck.rng_state(), "metrics": list(self.rows),
                "lr": self.schedule.lr_at(self.step_count)}


@dataclass(kw_only=True)
class Checkpointer(L.Callback):
    """Saves fraction checkpoints, periodic and requested (preemption) ones, and progress.json."""

    latest: Path  # the periodic / preemption checkpoint
    total_steps: int
    fraction_paths: dict[int, list[Path]] = field(default_factory=dict)  # step → checkpoints
    options: RunOptions = field(default_factory=RunOptions)
    progress: Callable[[int, float], None] | None = None  # (tokens done, tokens/s)
    stop_at: int | None = None  # end the fit after this step (a trunk replaying one checkpoint)
    _last_save: float = field(default_factory=time.monotonic)
    _last_progress: float = 0.0

    def _save(self, module: StageModule, paths: list[Path]) -> None:
        if module.global_rank == 0:
            state = module.full_state()
            for path in paths:
                ck.save_torch(path, state)
        self._last_save = time.monotonic()

    def on_train_start(self, trainer: L.Trainer, module: StageModule) -> None:
        self._save_fractions(module)

    def _save_fractions(self, module: StageModule) -> None:
        todo = [p for p in self.fraction_paths.get(module.step_count, []) if not p.exists()]
        if todo:
            self._save(module, todo)

    def on_train_batch_end(self, trainer: L.Trainer, module: StageModule, *args: Any) -> None:
        self._save_fractions(module)
        opts, now = self.options, time.monotonic()
        if ck.checkpoint_requested():
            self._save(module, [self.latest])
            raise ck.Preempted(f"checkpointed at step {module.step_count} on request")
        periodic = ((opts.checkpoint_every_steps and module.step_count % opts.checkpoint_every_steps == 0)
                    or now - self._last_save >= opts.checkpoint_every_s)
        if periodic and module.step_count < self.total_steps:
            self._save(module, [self.latest])
        if self.progress and module.global_rank == 0 and now - self._last_progress >= opts.progress_every_s:
            self._last_progress = now
            self.progress(module.step_count * module.tokens_per_step, module.last_tokens_per_s)
        if self.stop_at is not None and module.step_count >= self.stop_at:
            trainer.should_stop = True


def _environment() -> Any:
    from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment

    # The launcher owns signals and requeueing: Lightning's SLURM auto-requeue stays off.
    return SLURMEnvironment(auto_requeue=False) if SLURMEnvironment.detect() else LightningEnvironment()


def quiet_lightning() -> None:
    """Silence Lightning warnings that are noise for our loop (srun hint, worker count, no val)."""
    for pattern in (".*srun.*", ".*does not have many workers.*", ".*num_workers.*",
                    ".*IterableDataset.*", ".*in eval mode at the start of training.*", ".*LeafSpec.*",
                    ".*`isinstance.*treespec.*"):
        warnings.filterwarnings("ignore", message=pattern)
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


def make_trainer(options: RunOptions, max_steps: int, callbacks: list[L.Callback]) -> L.Trainer:
    quiet_lightning()
    cuda = torch.cuda.is_available() and options.accelerator != "cpu"
    return L.Trainer(
        accelerator="gpu" if cuda else "cpu", devices=options.devices,
        strategy="ddp" if options.devices > 1 else "auto",
        precision="bf16-mixed" if cuda else "32-true", max_steps=max_steps, max_epochs=1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        use_distributed_sampler=False, plugins=[_environment()], callbacks=callbacks)


def fit(module: StageModule, stream: Any, *, options: RunOptions, total_steps: int,
        checkpointer: Checkpointer, split: Callable[[dict], dict] | None = None) -> None:
    """Train `module` from its step_count to total_steps (or checkpointer.stop_at)."""
    end = total_steps if checkpointer.stop_at is None else min(total_steps, checkpointer.stop_at)
    remaining = end - module.step_count
    if remaining <= 0:
        return
    if options.compile and torch.cuda.is_available():
        module.compile_model()
    trainer = make_trainer(options, remaining, [checkpointer])
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        trainer.fit(module, train_dataloaders=make_loader(stream, split))
    except SIGTERMException as exc:
        # Lightning's own SIGTERM check fires only between optimizer steps (after our callback),
        # so the module is at a step boundary: save it, and stop the way every preemption does.
        checkpointer._save(module, [checkpointer.latest])
        raise ck.Preempted(f"SIGTERM: checkpointed at step {module.step_count}") from exc
