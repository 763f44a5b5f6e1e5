"""Sharded ranks (FSDP, CUDA only) beside replicated ones (DDP): the strategy, and the places where
sharded state differs — the global gradient norm, and the full weights and optimizer state a
checkpoint holds (gathered by a collective every rank takes part in, in the same index-keyed
format a single rank writes, so a step resumes on any rank count and either strategy).

Under FSDP a step trains one forward/backward per optimizer step (micro-batching is refused when
the study is read): the root unit's parameters are gathered once per root forward. Every
transformer block is its own unit. These paths need CUDA and were not run on a GPU here.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch


def is_sharded(strategy: Any) -> bool:
    from lightning.pytorch.strategies import FSDPStrategy

    return isinstance(strategy, FSDPStrategy)


def fsdp_strategy(environment: Any, timeout: timedelta) -> Any:
    from lightning.pytorch.strategies import FSDPStrategy

    from models.lm import Block

    return FSDPStrategy(cluster_environment=environment, timeout=timeout, auto_wrap_policy={Block},
                        sharding_strategy="FULL_SHARD", state_dict_type="full", use_orig_params=True,
                        limit_all_gathers=True)


def clip_sharded(strategy: Any, clip: float) -> torch.Tensor:
    """The global gradient norm over every rank's shards, clipping to `clip`."""
    return strategy.model.clip_grad_norm_(clip)


def _full_context(strategy: Any, rank0_only: bool) -> Any:
    from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    return FSDP.state_dict_type(strategy.model, StateDictType.FULL_STATE_DICT,
                                FullStateDictConfig(offload_to_cpu=True, rank0_only=rank0_only),
                                FullOptimStateDictConfig(offload_to_cpu=True, rank0_only=rank0_only))


def weights_state(strategy: Any, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's full state dict on the CPU (rank 0's is complete under FSDP)."""
    if not is_sharded(strategy):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with _full_context(strategy, rank0_only=True):
        state = strategy.model.state_dict()  # the LightningModule's keys: "model." + the model's
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}


def _param_names(strategy: Any, optimizer: torch.optim.Optimizer) -> list[str]:
    """Fully qualified names of the optimizer's parameters, in its index order."""
    names = {id(p): n.replace("_fsdp_wrapped_module.", "")
             for n, p in strategy.model.named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def optimizer_state(strategy: Any, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's full state, keyed by parameter index as a plain optimizer's is."""
    if not is_sharded(strategy):
        return optimizer.state_dict()
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    with _full_context(strategy, rank0_only=True):
        full = FSDP.optim_state_dict(strategy.model, optimizer)
    if not full:  # ranks other than 0 receive nothing
        return {}
    index = {name: i for i, name in enumerate(_param_names(strategy, optimizer))}
    return {"state": {index[k]: v for k, v in full["state"].items()},
            "param_groups": [dict(g, params=[index[n] for n in g["params"]]) for g in full["param_groups"]]}


def load_optimizer_state(strategy: Any, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load an index-keyed full optimizer state (from any rank count or strategy)."""
    if not is_sharded(strategy):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    names = _param_names(strategy, optimizer)
    full = {"state": {names[int(i)]: v for i, v in state["state"].items()},
            "param_groups": [dict(g, params=[names[int(i)] for i in g["params"]])
                             for g in state["param_groups"]]}
    with _full_context(strategy, rank0_only=False):
        optimizer.load_state_dict(FSDP.optim_state_dict_to_load(strategy.model, optimizer, full))
