"""The Lightning Trainer a stage trains with (`make_trainer`) and `fit`, which trains a stage module
from its step count to the end (or to the checkpointer's stop).

One rank, or many: the ranks come from the environment that started this process
(`models.distributed`: srun's tasks, or the local launcher's processes), never from a launcher of
Lightning's, so nothing re-runs a command line. With several ranks the strategy is DDP (or FSDP on
CUDA) with the study's collective timeout, so a rank that dies ends the others' wait instead of
hanging them; the process group is torn down after the fit, so a persistent worker can run the
next step on another group. Signals have one owner (`models.run` and the checkpointer), so
Lightning's own SIGTERM handling and its per-step SIGTERM broadcast are switched off.
"""

from __future__ import annotations

import warnings
from datetime import timedelta
from typing import Any, Callable

import lightning as L
import torch

from models import checkpoint as ck
from models.config import RunOptions
from models.distributed import Ranks, ranks_from_env
from models.stages.batches import make_loader
from models.stages.checkpointer import Checkpointer
from models.stages.module import StageModule


def _environment(ranks: Ranks) -> Any:
    from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment

    # The launcher owns signals and requeueing: Lightning's SLURM auto-requeue stays off.
    if ranks.source == "slurm" or (ranks.source == "single" and SLURMEnvironment.detect()):
        return SLURMEnvironment(auto_requeue=False)
    return LightningEnvironment()  # with LOCAL_RANK set, it starts no processes of its own


def quiet_lightning() -> None:
    """Silence Lightning warnings that are noise for our loop (srun hint, worker count, no val)."""
    for pattern in (".*srun.*", ".*does not have many workers.*", ".*num_workers.*",
                    ".*IterableDataset.*", ".*in eval mode at the start of training.*", ".*LeafSpec.*",
                    ".*`isinstance.*treespec.*"):
        warnings.filterwarnings("ignore", message=pattern)
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _strategy(options: RunOptions, ranks: Ranks, cuda: bool, environment: Any, find_unused: bool) -> Any:
    if ranks.world == 1:
        return "auto"
    timeout = timedelta(seconds=options.collective_timeout_s)
    if options.strategy == "fsdp":
        if not cuda:
            raise ValueError("strategy fsdp needs CUDA GPUs (Lightning's FSDP); use ddp on CPUs")
        from models.stages.sharding import fsdp_strategy

        return fsdp_strategy(environment, timeout)
    from lightning.pytorch.strategies import DDPStrategy

    # find_unused: a rank whose rows hold no image leaves the projector out of its graph.
    return DDPStrategy(cluster_environment=environment, timeout=timeout,
                       process_group_backend="nccl" if cuda else "gloo",
                       find_unused_parameters=find_unused, **_constant_buffers())


def _constant_buffers() -> dict[str, bool]:
    """DDP's option not to re-broadcast buffers every forward: ours (RoPE tables) are constants,
    equal on every rank from the start (torch renamed the option in 2.13)."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    params = inspect.signature(DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


def make_trainer(options: RunOptions, max_steps: int, callbacks: list[L.Callback], *,
                 find_unused: bool = False, loggers: list[Any] | None = None) -> L.Trainer:
    quiet_lightning()
    ranks = ranks_from_env()
    cuda = torch.cuda.is_available() and options.accelerator != "cpu"
    environment = _environment(ranks)
    trainer = L.Trainer(
        accelerator="gpu" if cuda else "cpu", devices=ranks.per_node, num_nodes=ranks.nodes,
        strategy=_strategy(options, ranks, cuda, environment, find_unused),
        precision="bf16-mixed" if cuda else "32-true", max_steps=max_steps, max_epochs=1,
        logger=loggers or False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        use_distributed_sampler=False, callbacks=callbacks,
        plugins=[environment] if ranks.world == 1 else None)
    # Lightning 2.5+ broadcasts a SIGTERM flag from rank 0 before every step and reads it on the
    # host (a GPU sync per step); our checkpointer agrees on every rank's flag over a CPU group.
    epoch_loop = trainer.fit_loop.epoch_loop
    if hasattr(epoch_loop, "_broadcast_sigterm_tensor"):
        epoch_loop._broadcast_sigterm_tensor = lambda: None
    return trainer


def _has_side_params(module: StageModule) -> bool:
    """Whether trainable parameters live outside the LM (a projector, an unfrozen encoder)."""
    return any(p.requires_grad for n, p in module.model.named_parameters() if not n.startswith("lm."))


def fit(module: StageModule, stream: Any, *, options: RunOptions, total_steps: int,
        checkpointer: Checkpointer, split: Callable[[dict], dict] | None = None,
        tracking: Any = None) -> None:
    """Train `module` from its step_count to total_steps (or checkpointer.stop_at); `tracking`
    (`models.stages.tracking.StepTracking`, rank 0's) gives the Trainer its loggers."""
    end = total_steps if checkpointer.stop_at is None else min(total_steps, checkpointer.stop_at)
    remaining = end - module.step_count
    if remaining <= 0:
        return
    if options.compile and torch.cuda.is_available():
        module.compile_model()
    callbacks = [tracking.callback, checkpointer] if tracking else [checkpointer]
    trainer = make_trainer(options, remaining, callbacks, find_unused=_has_side_params(module),
                           loggers=tracking.loggers if tracking else None)
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from models.data.workers import start_workers

    pool = start_workers(stream, options.data_workers) if hasattr(stream, "worker_parts") else None
    pin = torch.cuda.is_available() and options.accelerator != "cpu"
    try:
        trainer.fit(module, train_dataloaders=make_loader(stream, split, pin))
    except SIGTERMException as exc:
        # A SIGTERM before the checkpointer took the signal over (during setup): the module is at
        # a step boundary; save it, and stop the way every preemption does.
        checkpointer.save_latest(module)
        raise ck.Preempted(f"SIGTERM: checkpointed at step {module.step_count}") from exc
    finally:
        if pool is not None:
            pool.close()
        _end_process_group()


def _end_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
