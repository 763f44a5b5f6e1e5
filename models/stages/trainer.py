"""The Lightning Trainer a stage trains with (`make_trainer`) and `fit`, which trains a stage module
from its step count to the end (or to the checkpointer's stop), turning Lightning's SIGTERM into
the same checkpoint-and-stop every preemption takes.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import lightning as L
import torch

from models import checkpoint as ck
from models.config import RunOptions
from models.stages.batches import make_loader
from models.stages.checkpointer import Checkpointer
from models.stages.module import StageModule


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
