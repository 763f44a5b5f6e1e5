"""The study's [backend] section: where and how steps run, never what they compute (no step id
holds any of it).

SLURM resources come in layers, each overriding the one before: `[backend.slurm]`, then
`[backend.slurm.<kind>]`, then `[backend.slurm.scale."<scale>"]` and
`[backend.slurm.scale."<scale>".<kind>]`. A trunk, branch or fine-tune step spans `nodes` ×
`tasks_per_node` ranks (one per GPU by default); encoder and eval steps take one rank. Each LM
step's global batch is split over its ranks and then into micro-batches, so it must divide:
`check_rank_split` refuses a study where it does not, naming the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from models.distributed import MULTI_RANK_KINDS, STRATEGIES
from models.steps import replay_rows
from sweep.errors import StudyError
from sweep.reader import Table, check_str

STEP_KINDS_WITH_OVERRIDES = ("encoder", "trunk", "branch", "finetune", "eval")
COLLECTIVE_TIMEOUT_S = 1800.0  # torch's NCCL default: a checkpoint of a large model fits in it
_RANK_KEYS = ("gpus_per_node", "tasks_per_node", "nodes")  # what sets a step's rank count
DEFAULT_STRATEGY = STRATEGIES[0]


@dataclass(frozen=True, kw_only=True, slots=True)
class SlurmSettings:
    partition: str = ""  # empty = the cluster's default partition
    time_min: int = 60  # wall-clock limit per job; a step past it is checkpointed and requeued
    cpus: int = 2  # cpus per task (per rank)
    gpus_per_node: int = 0  # GPUs per node
    nodes: int = 1  # nodes one step's job spans (LM steps; encoder and eval steps take one)
    tasks_per_node: int = 0  # ranks per node; 0 = one per GPU (one without GPUs: gloo on CPUs)
    strategy: str = DEFAULT_STRATEGY  # with several ranks: ddp (replicas) | fsdp (sharded, CUDA only)
    mem_gb: int = 8  # per node
    account: str = ""
    qos: str = ""
    array_parallelism: int = 64  # most array tasks of one level running at once
    extra: tuple[str, ...] = ()  # further sbatch options, e.g. "--constraint=a100"

    @property
    def ranks_per_node(self) -> int:
        return self.tasks_per_node or max(1, self.gpus_per_node)

    @property
    def ranks(self) -> int:
        """The ranks one step trains on: its global batch is split over them."""
        return self.nodes * self.ranks_per_node

    def single_rank(self) -> "SlurmSettings":
        """These resources for a step that trains on one rank (encoder, eval): one node, one task,
        at most one GPU."""
        # tasks_per_node 0 is one task here: equal resources compare equal (one array per level)
        return replace(self, nodes=1, tasks_per_node=0, gpus_per_node=min(self.gpus_per_node, 1))


Layer = tuple[str, str, tuple[tuple[str, Any], ...]]  # (scale or "", kind or "", values set)


@dataclass(frozen=True, kw_only=True, slots=True)
class BackendSettings:
    default: str = "local"  # inline | local | slurm, when `vlmsweep run` is not told
    workers: int = 0  # local worker processes; 0 = one per GPU group, else 2 (sweep.launch.devices)
    max_failures: int = 3  # a step that failed this often is not retried automatically
    max_num_timeout: int = 3  # requeues after a timeout or preemption
    gpus_per_step: int = 1  # local: GPUs (gloo ranks on a machine without) one LM step trains on
    slurm_layers: tuple[Layer, ...] = ()  # [backend.slurm…] tables, least specific first
    # How LM training steps run, never what they compute (not in any step id): sequences per
    # forward/backward pass per rank (0 = the rank's whole share of the batch; gradients
    # accumulate over its micro-batches), for every scale or per scale; torch.compile on CUDA;
    # how long a collective may wait for a rank before the step fails.
    micro_batch: int = 0
    micro_batch_per_scale: tuple[tuple[str, int], ...] = ()
    compile: bool = False
    collective_timeout_s: float = COLLECTIVE_TIMEOUT_S
    # a resumable checkpoint every N optimizer steps besides the time-based one (0 = time only):
    # what a preempted step resumes from, and what `[train] on_nonfinite` rewinds to
    checkpoint_every_steps: int = 0
    # Data worker processes per rank that parse, decode and tokenise file records ahead of the
    # step (models.data.workers); -1 = the rank's CPUs − 1, at most 8; 0 = in the training process.
    data_workers: int = -1

    def _layers(self, kind: str, scale: str) -> list[Layer]:
        return [layer for layer in self.slurm_layers if layer[0] in ("", scale) and layer[1] in ("", kind)]

    def slurm_for(self, kind: str, scale: str = "") -> SlurmSettings:
        values: dict[str, Any] = {}
        for _, _, layer in self._layers(kind, scale):
            values.update(layer)
        settings = replace(SlurmSettings(), **values)
        return settings if kind in MULTI_RANK_KINDS else settings.single_rank()

    def slurm_key(self, kind: str, scale: str, keys: tuple[str, ...] = _RANK_KEYS) -> str:
        """The study key that sets `keys` for this kind and scale (the most specific table)."""
        for layer_scale, layer_kind, values in reversed(self._layers(kind, scale)):
            found = [k for k in keys if k in dict(values)]
            if found:
                return ".".join(p for p in ("backend.slurm", layer_scale and f"scale.{layer_scale}",
                                            layer_kind, found[0]) if p)
        return f"backend.slurm.{keys[0]}"

    def micro_batch_for(self, scale: str) -> int:
        return dict(self.micro_batch_per_scale).get(scale, self.micro_batch)

    def run_options(self, scale: str, kind: str = "trunk") -> dict[str, Any]:
        """The `models.config.RunOptions` fields a scale's training steps of `kind` run with."""
        out: dict[str, Any] = {"micro_batch": self.micro_batch_for(scale), "compile": self.compile}
        strategy = self.slurm_for(kind, scale).strategy
        if strategy != DEFAULT_STRATEGY:
            out["strategy"] = strategy
        if self.collective_timeout_s != COLLECTIVE_TIMEOUT_S:
            out["collective_timeout_s"] = self.collective_timeout_s
        if self.checkpoint_every_steps:
            out["checkpoint_every_steps"] = self.checkpoint_every_steps
        if self.data_workers >= 0:
            out["data_workers"] = self.data_workers
        return out


def _parse_time(value: Any, t: Table, key: str) -> int:
    """Minutes, from an integer or "HH:MM:SS" / "D-HH:MM:SS"."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    m = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d\d):(\d\d)", str(value)) if isinstance(value, str) else None
    if not m:
        raise t.error(key, f"expected minutes (a positive integer) or \"HH:MM:SS\", got {value!r}")
    days, hours, minutes, seconds = (int(g or 0) for g in m.groups())
    return max(1, days * 1440 + hours * 60 + minutes + (1 if seconds else 0))


def _read_slurm(t: Table) -> tuple[tuple[str, Any], ...]:
    """The SlurmSettings values one [backend.slurm…] table sets."""
    if t.has("gpus"):
        raise t.error("gpus", "is now gpus_per_node (GPUs per node; one rank each unless "
                              "tasks_per_node says otherwise)")
    values: dict[str, Any] = {}
    for key in ("partition", "account", "qos"):
        if t.has(key):
            values[key] = t.str(key)
    if t.has("time"):
        values["time_min"] = _parse_time(t.raw("time"), t, "time")
    for key, lo in (("cpus", 1), ("gpus_per_node", 0), ("nodes", 1), ("tasks_per_node", 0),
                    ("mem_gb", 1), ("array_parallelism", 1)):
        if t.has(key):
            values[key] = t.int(key, lo=lo)
    if t.has("strategy"):
        values["strategy"] = t.str("strategy", choices=STRATEGIES)
    if t.has("extra"):
        values["extra"] = tuple(t.list("extra", lambda v, k: check_str(v, t.error, k), nonempty=False))
    return tuple(values.items())


def _read_kinds(t: Table, scale: str) -> list[Layer]:
    layers = []
    for kind in STEP_KINDS_WITH_OVERRIDES:
        if t.has(kind):
            sub = t.table(kind)
            layers.append((scale, kind, _read_slurm(sub)))
            sub.finish()
    return layers


def _read_slurm_layers(t: Table, scales: tuple[str, ...]) -> tuple[Layer, ...]:
    layers: list[Layer] = [("", "", _read_slurm(t)), *_read_kinds(t, "")]
    scale_table = t.table("scale")
    for name in list(scale_table.data):
        if name not in scales:
            raise scale_table.error(name, f"is not on the scale axis ({', '.join(scales)})")
        sub = scale_table.table(name)
        layers += [(name, "", _read_slurm(sub)), *_read_kinds(sub, name)]
        sub.finish()
    scale_table.finish()
    return tuple(layer for layer in layers if layer[2])


def _read_micro_batch(t: Table, scales: tuple[str, ...]) -> tuple[int, tuple[tuple[str, int], ...]]:
    """`micro_batch = N` for every scale, or a table of scale = N (unnamed scales: whole batches)."""
    if not t.has("micro_batch") or not isinstance(t.raw("micro_batch"), dict):
        return t.int("micro_batch", 0, lo=0), ()
    sub = t.table("micro_batch")
    per_scale = []
    for name in list(sub.data):
        if name not in scales:
            raise sub.error(name, f"is not on the scale axis ({', '.join(scales)})")
        per_scale.append((name, sub.int(name, lo=0)))
    sub.finish()
    return 0, tuple(per_scale)


def read_backend(t: Table, scales: tuple[str, ...] = ()) -> BackendSettings:
    slurm_t = t.table("slurm")
    layers = _read_slurm_layers(slurm_t, scales)
    slurm_t.finish()
    micro_batch, per_scale = _read_micro_batch(t, scales)
    s = BackendSettings(default=t.str("default", "local", choices=("inline", "local", "slurm")),
                        workers=t.int("workers", 0, lo=0), max_failures=t.int("max_failures", 3, lo=1),
                        max_num_timeout=t.int("max_num_timeout", 3, lo=0),
                        gpus_per_step=t.int("gpus_per_step", 1, lo=1), slurm_layers=layers,
                        micro_batch=micro_batch, micro_batch_per_scale=per_scale,
                        compile=t.bool("compile", False),
                        collective_timeout_s=t.float("collective_timeout_s", COLLECTIVE_TIMEOUT_S,
                                                     lo=0.0, lo_open=True),
                        checkpoint_every_steps=t.int("checkpoint_every_steps", 0, lo=0),
                        data_workers=t.int("data_workers", -1, lo=-1))
    t.finish()
    return s


def check_rank_split(study: Any) -> None:
    """Every LM step's global batch divides over its ranks (SLURM's and the local backend's), and
    each rank's rows into equal micro-batches; FSDP trains one forward/backward per step."""
    b, file = study.backend, str(study.path)
    for scale in study.axes["scale"]:
        micro = b.micro_batch_for(scale)
        micro_key = f"backend.micro_batch.{scale}" if dict(b.micro_batch_per_scale) else "backend.micro_batch"
        ft = study.finetune
        rows = {"trunk": (study.train_defaults(scale).batch_size, "train.batch_size"),
                "finetune": (ft.batch_size + replay_rows(ft.batch_size, ft.text_replay), "finetune.batch_size")}
        rows["branch"] = rows["trunk"]
        for kind, (batch, batch_key) in rows.items():
            slurm = b.slurm_for(kind, scale)
            for ranks, key in ((slurm.ranks, b.slurm_key(kind, scale)), (b.gpus_per_step, "backend.gpus_per_step")):
                where = f"{kind} steps of scale {scale} split a batch of {batch} rows ({batch_key})"
                if batch % ranks:
                    raise StudyError(file, key, f"{where} over {ranks} ranks: it does not divide")
                per_rank = batch // ranks
                if 0 < micro < per_rank and per_rank % micro:
                    raise StudyError(file, micro_key, f"{where} over {ranks} ranks, {per_rank} rows each: "
                                                      f"micro-batches of {micro} do not divide them")
            if slurm.strategy == "fsdp" and 0 < micro < batch // slurm.ranks:
                raise StudyError(file, b.slurm_key(kind, scale, ("strategy",)),
                                 f"fsdp trains one forward/backward per step ({kind}, scale {scale}): "
                                 f"set {micro_key} = 0 (sharding saves the memory micro-batches would)")
