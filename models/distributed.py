"""Where this process sits among the ranks of one step, read from the environment that started it.

A step trains on many ranks when SLURM's `srun` starts one task per GPU (SLURM_PROCID, …) or when
the local launcher (`sweep.launch.ranks`) starts one process per GPU with torchrun's variables
(RANK, LOCAL_RANK, WORLD_SIZE, …); otherwise it is one rank. Lightning reads the same variables
(its SLURM and plain environments), so no launcher of Lightning's re-runs any command line.
Torch-free: the launchers and the planner use it too.

Only global rank 0 writes a step's files; every rank trains. The kinds that train on many ranks
are the LM stages: the encoder's contrastive loss pairs each image with every caption of its batch
(splitting the batch would change what it computes), and an eval is one forward pass per item.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

MULTI_RANK_KINDS = ("trunk", "branch", "finetune")
STRATEGIES = ("ddp", "fsdp")
LOCAL_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK",
                   "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True, kw_only=True, slots=True)
class Ranks:
    """This process's place among a step's ranks."""

    rank: int = 0  # global rank; 0 writes the step's files
    local_rank: int = 0  # rank on this node: the GPU index it trains on
    world: int = 1  # ranks in all
    nodes: int = 1
    per_node: int = 1  # ranks per node (Lightning's `devices`)
    source: str = "single"  # single | slurm (srun's tasks) | local (sweep.launch.ranks)

    def __post_init__(self) -> None:
        if self.world != self.nodes * self.per_node or not 0 <= self.rank < self.world:
            raise ValueError(f"inconsistent ranks: rank {self.rank} of {self.world} on "
                             f"{self.nodes} node(s) × {self.per_node}")

    @property
    def writes_files(self) -> bool:
        return self.rank == 0


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw.split("(")[0])  # SLURM_NTASKS_PER_NODE may read "2(x3)"
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def _slurm_tasks(env: Mapping[str, str]) -> bool:
    """Whether srun started this process as one task of a job step (Lightning's own test: a job
    named bash or interactive is a shell the user launches things from by hand)."""
    return ("SLURM_NTASKS" in env and "SLURM_PROCID" in env
            and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"))


def ranks_from_env(env: Mapping[str, str] | None = None) -> Ranks:
    """The local launcher's variables first (they are set on purpose, even inside an allocation),
    then srun's, else a single rank."""
    env = os.environ if env is None else env
    if "LOCAL_RANK" in env and "WORLD_SIZE" in env:
        world, per_node = _int(env, "WORLD_SIZE", 1), _int(env, "LOCAL_WORLD_SIZE", 0)
        per_node = per_node or world
        return Ranks(rank=_int(env, "RANK", 0), local_rank=_int(env, "LOCAL_RANK", 0), world=world,
                     nodes=world // per_node, per_node=per_node, source="local")
    if _slurm_tasks(env):
        world, nodes = _int(env, "SLURM_NTASKS", 1), _int(env, "SLURM_NNODES", 1)
        return Ranks(rank=_int(env, "SLURM_PROCID", 0), local_rank=_int(env, "SLURM_LOCALID", 0),
                     world=world, nodes=nodes, per_node=_int(env, "SLURM_NTASKS_PER_NODE", world // nodes),
                     source="slurm")
    return Ranks()


def rows_per_rank(batch: int, ranks: int) -> int:
    """Rows each rank trains on of a global batch; the batch must divide evenly."""
    if ranks < 1 or batch % ranks:
        raise ValueError(f"batch_size {batch} does not divide over {ranks} ranks")
    return batch // ranks
