"""Typed model configs: the decoder LM, the vision side, the projector and the VLM that joins them.

Every config is a frozen, slotted, keyword-only dataclass; `__post_init__` validates and derived
values are properties. `OptimConfig` and `RunOptions` (how a step runs, never what it computes)
live here too. Presets (`models.presets`) are instances of these, and variants are
`dataclasses.replace(...)`. This module imports nothing heavy: the planner uses it without torch.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Literal

from models.distributed import STRATEGIES, ranks_from_env

VisionKind = Literal["patch", "vit", "hf"]
ProjectorKind = Literal["mlp2", "linear"]
NormKind = Literal["rmsnorm", "layernorm"]

# Fields added after steps were cached are left out of a step's identity while they hold their
# default (`models.steps.identity`), so adding one re-trains nothing that it does not change.
ADDED = {"omit_default": True}


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def swiglu_hidden(d_model: int, multiple_of: int = 256) -> int:
    """open_lm's SwiGLU width: 2/3 of 4·d, rounded up to a multiple (keeps params ≈ a 4·d MLP)."""
    return multiple_of * ((int(2 * 4 * d_model / 3) + multiple_of - 1) // multiple_of)


@dataclass(frozen=True, kw_only=True, slots=True)
class LMConfig:
    """A pre-norm decoder-only transformer (RMSNorm, RoPE, SwiGLU, no biases)."""

    vocab_size: int  # rows of the token embedding; the world's tokenizer or GPT-NeoX's 50432
    d_model: int  # residual width
    n_layers: int  # transformer blocks
    n_heads: int  # attention heads; head_dim = d_model / n_heads
    ffn_hidden: int = 0  # SwiGLU inner width; 0 = open_lm's rule (swiglu_hidden)
    max_seq_len: int = 2048  # longest sequence RoPE tables are built for
    tie_embeddings: bool = False  # open_lm (and the paper) keep input and output embeddings apart
    rope_theta: float = 10_000.0  # RoPE base frequency
    norm_eps: float = 1e-5  # norm epsilon (open_lm's Params.norm_eps)
    # rmsnorm; or layernorm = open_lm's gain_only_lp_layer_norm (LayerNorm, a gain and no bias),
    # the norm DCLM's configs train with (dclm training/hyperparameters.py, `norm`)
    norm: NormKind = field(default="rmsnorm", metadata=ADDED)
    # open_lm's --qk-norm: the model's norm over all heads' queries and keys (one d_model-wide norm
    # each, before RoPE), open_lm/model.py CustomAttn; DCLM turns it on at every size
    qk_norm: bool = field(default=False, metadata=ADDED)

    def __post_init__(self) -> None:
        _require(self.vocab_size > 0, f"vocab_size must be positive, got {self.vocab_size}")
        _require(self.d_model > 0 and self.n_layers > 0 and self.n_heads > 0,
                 "d_model, n_layers and n_heads must be positive")
        _require(self.d_model % self.n_heads == 0,
                 f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        _require(self.head_dim % 2 == 0, f"head_dim {self.head_dim} must be even for RoPE")
        _require(self.ffn_hidden >= 0, "ffn_hidden must be >= 0 (0 = open_lm's rule)")
        _require(self.max_seq_len > 0, "max_seq_len must be positive")
        _require(self.norm in ("rmsnorm", "layernorm"),
                 f"unknown norm {self.norm!r} (expected rmsnorm or layernorm)")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffn_dim(self) -> int:
        """The SwiGLU inner width actually used."""
        return self.ffn_hidden or swiglu_hidden(self.d_model)


@dataclass(frozen=True, kw_only=True, slots=True)
class VisionConfig:
    """The image side: a bare patch projection, a small ViT, or a local Hugging Face encoder."""

    kind: VisionKind = "vit"  # patch = the paper's no-encoder ablation; hf = e.g. SigLIP on disk
    image_size: int = 32  # square input side in pixels (images are resized to it)
    patch_size: int = 4  # square patch side; image tokens = (image_size / patch_size)^2
    channels: int = 3  # RGB
    width: int = 128  # ViT width (patch: the projection's output width)
    n_layers: int = 2  # ViT blocks (ignored for patch and hf)
    n_heads: int = 4  # ViT heads (ignored for patch and hf)
    mlp_dim: int = 0  # ViT MLP inner width; 0 = 4 · width
    hf_path: str = ""  # local directory of a Hugging Face vision model (kind = hf)
    frozen: bool = True  # the paper freezes SigLIP; patch projections are always trained
    pretrain: bool = True  # pre-train contrastively in an `encoder` step before freezing (vit only)

    def __post_init__(self) -> None:
        _require(self.kind in ("patch", "vit", "hf"), f"unknown vision kind {self.kind!r}")
        _require(self.image_size > 0 and self.patch_size > 0, "image and patch sizes must be positive")
        # An hf encoder's convolution may drop a remainder (SigLIP: 384 px in 14 px patches → 27²).
        _require(self.kind == "hf" or self.image_size % self.patch_size == 0,
                 f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        _require(self.width > 0, "vision width must be positive")
        if self.kind == "vit":
            _require(self.width % self.n_heads == 0,
                     f"vision width {self.width} is not divisible by n_heads {self.n_heads}")
        if self.kind == "hf":
            _require(bool(self.hf_path), "vision kind 'hf' needs hf_path (a local directory)")
        if self.kind == "patch":
            _require(not self.frozen, "a patch projection has nothing pretrained: frozen must be false")

    @property
    def mlp_width(self) -> int:
        return self.mlp_dim or 4 * self.width

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def needs_encoder_step(self) -> bool:
        """Whether the planner adds an `encoder` step that pre-trains this encoder."""
        return self.kind == "vit" and self.pretrain


@dataclass(frozen=True, kw_only=True, slots=True)
class ProjectorConfig:
    """Maps vision features to LM embeddings: the paper's 2-layer MLP with GELU, or linear.

    `pixel_shuffle` s > 1 first folds each s×s block of patch features into one feature of s²
    times the width (Idefics3 / SmolVLM / nanoVLM), so an image takes s² times fewer LM positions.
    """

    kind: ProjectorKind = "mlp2"
    hidden: int = 0  # MLP inner width; 0 = the LM's d_model
    pixel_shuffle: int = 1  # s: s×s neighbouring patches → one image token

    def __post_init__(self) -> None:
        _require(self.kind in ("mlp2", "linear"), f"unknown projector kind {self.kind!r}")
        _require(self.hidden >= 0, "projector hidden must be >= 0")
        _require(self.pixel_shuffle >= 1, "projector pixel_shuffle must be >= 1")

    def image_tokens(self, n_patches: int) -> int:
        """LM positions of one image whose encoder gives `n_patches` (a square grid)."""
        side, s = math.isqrt(n_patches), self.pixel_shuffle
        _require(side * side == n_patches and side % s == 0,
                 f"projector pixel_shuffle {s} needs a square patch grid whose side it divides; "
                 f"the encoder gives {n_patches} patches")
        return n_patches // (s * s)


@dataclass(frozen=True, kw_only=True, slots=True)
class VLMConfig:
    """The whole model: image tokens (vision → projector) placed before the caption in the LM."""

    lm: LMConfig
    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)

    @property
    def image_tokens(self) -> int:
        """LM positions one image occupies (one per patch, or per pixel-shuffled block; no CLS)."""
        return self.projector.image_tokens(self.vision.n_patches)


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainDefaults:
    """A preset's optimisation defaults; a study may override each."""

    lr: float  # peak learning rate (AdamW)
    warmup_steps: int  # linear warmup before the cosine
    batch_size: int  # sequences per optimizer step
    seq_len: int  # tokens per text-only sequence
    image_seq_len: int = 0  # tokens per image-stage sequence; 0 = seq_len (the paper uses 1024)
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of the peak
    # absolute cosine floor (DCLM's `cd`, open_lm's --lr-cooldown-end); the floor is the larger
    # of this and min_lr_ratio · lr
    min_lr: float = field(default=0.0, metadata=ADDED)
    # open_lm's z-loss coefficient (--z-loss-coefficient): adds z_loss · mean(logsumexp(logits)²)
    # over the scored positions to the trunk's and image stage's loss; 0 = off
    z_loss: float = field(default=0.0, metadata=ADDED)
    weight_decay: float = 0.1  # AdamW decoupled weight decay
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # global-norm clip; 0 disables

    def __post_init__(self) -> None:
        _require(self.lr > 0, "lr must be positive")
        _require(self.warmup_steps >= 0, "warmup_steps must be >= 0")
        _require(self.batch_size > 0 and self.seq_len > 0, "batch_size and seq_len must be positive")
        _require(0 <= self.min_lr_ratio <= 1, "min_lr_ratio must be in [0, 1]")
        _require(0 <= self.min_lr <= self.lr, f"min_lr {self.min_lr} must be in [0, lr {self.lr}]")
        _require(self.z_loss >= 0, f"z_loss must be >= 0, got {self.z_loss}")

    @property
    def floor_lr(self) -> float:
        """Where the cosine ends: the larger of min_lr_ratio · lr and min_lr."""
        return max(self.lr * self.min_lr_ratio, self.min_lr)

    @property
    def image_stage_seq_len(self) -> int:
        return self.image_seq_len or self.seq_len


@dataclass(frozen=True, kw_only=True, slots=True)
class OptimConfig:
    """AdamW settings of a training stage (from the preset's TrainDefaults)."""

    weight_decay: float = 0.1  # AdamW decoupled decay on matrices only (not norms, biases)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # global-norm clip; 0 disables (the norm is still logged)


def default_threads() -> int:
    """Intra-op threads for one rank of one step: $VLMSWEEP_THREADS, else the cores shared among
    the local workers ($VLMSWEEP_WORKERS, set by the local launcher) and a step's ranks on this
    node, else every core.

    On a small shared CPU more threads than cores per process is ruinous: with two workers of two
    threads each on two cores, a 32-wide linear takes ~2 ms instead of ~10 µs (spinning OpenMP
    threads fight over the cores), so workers split the cores rather than share them. A SLURM
    task pinned to its CPUs sees only those; unpinned ranks of one node split the node's cores.
    """
    threads = _positive_env("VLMSWEEP_THREADS")
    if threads is not None:
        return threads
    cores = rank_cpus()
    workers = _positive_env("VLMSWEEP_WORKERS")
    return max(1, cores // workers) if workers is not None else max(1, cores)


def rank_cpus() -> int:
    """The CPUs one rank of a step may use: those it is pinned to (a SLURM task), else the node's
    shared among its ranks."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores == os.cpu_count():
        cores //= ranks_from_env().per_node
    return max(1, cores)


def default_data_workers() -> int:
    """Data worker processes per rank when the study does not say: the CPUs this rank may use
    minus the one the training process needs, at most 8 (more rarely pays: packing in the training
    process is then the limit)."""
    return max(0, min(rank_cpus() - 1, 8))


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

    # The ranks a step trains on come from the environment that started it (srun, or the local
    # launcher; models.distributed), never from here: a step resumes on any rank count.
    accelerator: str = "auto"  # auto = CUDA when present, else CPU
    strategy: str = "ddp"  # with several ranks: ddp (replicas) | fsdp (sharded, CUDA only)
    collective_timeout_s: float = 1800.0  # a collective waiting longer (a rank died) fails the step
    compile: bool = False  # torch.compile the model (CUDA)
    micro_batch: int = 0  # LM stages: rows per forward/backward (0 = whole batch), gradients accumulate
    checkpoint_every_steps: int = 0  # periodic resumable checkpoint; 0 = time-based only
    checkpoint_every_s: float = 600.0  # periodic checkpoint by wall clock
    progress_every_s: float = 2.0  # progress.json cadence
    threads: int = field(default_factory=default_threads)  # torch intra-op threads (CPU)
    # A non-finite loss or gradient norm ends the step as failed (`diverged`) unless the study allows
    # skipping that batch (no update) or rewinding the weights to the step's last checkpoint
    # (`[train] on_nonfinite`; 0 and 0: fail at once, see docs/divergence.md for why).
    nonfinite_skip_batches: int = 0
    nonfinite_rewinds: int = 0
    # A loss above spike_factor × the median of the previous spike_window losses is a `loss_spike`
    # event in the step's metrics (`[train] loss_spike`); it is recorded, never acted on.
    spike_factor: float = 2.0
    spike_window: int = 50
    # Processes per rank that parse, decode and tokenise file records ahead of the step
    # (models.data.workers); 0 = in the training process. Default: the rank's CPUs − 1, at most 8.
    data_workers: int = field(default_factory=lambda: default_data_workers())

    def __post_init__(self) -> None:
        if min(self.nonfinite_skip_batches, self.nonfinite_rewinds) < 0:
            raise ValueError("RunOptions.nonfinite_skip_batches and nonfinite_rewinds must be >= 0")
        if self.spike_factor <= 1.0 or self.spike_window < 2:
            raise ValueError(f"RunOptions.spike_factor must be > 1 and spike_window >= 2, got "
                             f"{self.spike_factor} and {self.spike_window}")
        if self.threads < 1:
            raise ValueError(f"RunOptions.threads must be >= 1, got {self.threads}")
        if self.data_workers < 0:
            raise ValueError(f"RunOptions.data_workers must be >= 0, got {self.data_workers}")
        if self.micro_batch < 0:
            raise ValueError(f"RunOptions.micro_batch must be >= 0, got {self.micro_batch}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"RunOptions.strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.collective_timeout_s <= 0:
            raise ValueError(f"RunOptions.collective_timeout_s must be > 0, got {self.collective_timeout_s}")
