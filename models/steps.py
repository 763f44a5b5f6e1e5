"""What a step is: its kind, the config fields that change its result, its parents — and its id.

The planner (`sweep.plan`) builds these; `models.run.run_step` executes them; a step reads its
parents' typed configs back from their config.json with `load_step_config`. A step's id is a short
hash of (kind, canonical JSON of its config, its parents' ids, CODE_SALT), so changing a field that
does not matter (labels in `meta`, output root, backend) changes no id. Bump CODE_SALT by hand when
a code change alters what a step computes (the git commit is recorded in result.json instead).
No torch here: planning a 300-step study must take milliseconds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Union

from models import stepfiles
from models.config import LMConfig, ProjectorConfig, TrainDefaults, VisionConfig
from models.harness import OWN

CODE_SALT = 10  # bump when a change alters what any step computes
STEP_KINDS = ("encoder", "trunk", "branch", "finetune", "eval")
StepKind = Literal["encoder", "trunk", "branch", "finetune", "eval"]
SchedulePolicy = Literal["continue", "rewarm"]


@dataclass(frozen=True, kw_only=True, slots=True)
class DataSource:
    """A named data source: the built-in world, or shards on disk. The name is only a label."""

    name: str = field(metadata={"identity": False})  # what the study calls it
    kind: str  # world | jsonl | parquet | tokens | webdataset | parquet_images | llava | vqa_jsonl | mc_jsonl
    paths: tuple[str, ...] = ()  # absolute shard paths or globs (empty for the world)
    options: tuple[tuple[str, Any], ...] = ()  # kind-specific settings, sorted (e.g. world seed)

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)


@dataclass(frozen=True, kw_only=True, slots=True)
class EncoderConfig:
    """Contrastive (SigLIP-style sigmoid loss) pre-training of a small ViT on image-caption pairs."""

    vision: VisionConfig
    data: DataSource  # image-caption pairs
    text_width: int  # width of the caption tower used only by this step
    text_layers: int
    vocab_size: int
    samples: int  # image-caption pairs seen in total
    batch_size: int
    lr: float
    seed: int


@dataclass(frozen=True, kw_only=True, slots=True)
class TrunkConfig:
    """Text-only LM pre-training with warmup + cosine over `tokens`."""

    lm: LMConfig
    train: TrainDefaults
    data: DataSource  # text
    tokens: int  # T: the schedule's full length in tokens
    seed: int
    on_bad_record: Literal["error", "skip"] = "error"


@dataclass(frozen=True, kw_only=True, slots=True)
class BranchConfig:
    """Resume the trunk at intro_fraction·T and train the image-text mix for `tokens`."""

    intro_fraction: float
    schedule: SchedulePolicy  # resolved: `paper` becomes continue (0<f<1) or rewarm (f=0, f=1)
    image_data: DataSource
    instruction_data: DataSource | None  # only when instruction_share > 0
    image_ratio: float  # share of image-stage tokens that come from image-caption data
    instruction_share: float  # share of instruction data inside the image part
    tokens: int  # image-stage length in tokens
    vision: VisionConfig
    projector: ProjectorConfig
    train: TrainDefaults  # lr / warmup used by rewarm; batch and image_stage_seq_len
    loss_on_image_positions: bool = False  # the paper puts loss on text tokens only
    on_bad_record: Literal["error", "skip"] = "error"
    seed: int = 0  # the image stage's data order and new weights (the cell's seed; the trunk's may differ)


@dataclass(frozen=True, kw_only=True, slots=True)
class FinetuneConfig:
    """Instruction fine-tuning (LLaVA-style data) for `epochs` epochs, loss on responses only."""

    data: DataSource
    epochs: int
    lr: float
    batch_size: int
    max_samples: int  # 0 = the whole data set
    seed: int
    seq_len: int = 256  # tokens per fine-tuning sequence (the planner sets the image stage's)
    text_replay: float = 0.0  # share of each batch's rows that are packed text of `replay_data`
    replay_data: DataSource | None = None  # the trunk's text data (set when text_replay > 0)


def replay_rows(batch_size: int, share: float) -> int:
    """Text rows a fine-tune adds to `batch_size` conversations so that they are `share` of the rows."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"text replay share must be in [0, 1), got {share}")
    return round(batch_size * share / (1.0 - share))


@dataclass(frozen=True, kw_only=True, slots=True)
class EvalConfig:
    """Zero-shot evaluation on VL and/or text tasks of one checkpoint of the parent."""

    data: tuple[DataSource, ...]  # benchmark sources (the world's, JSONL eval files); a task is in one
    tasks: tuple[str, ...]  # task names; empty = every task the sources have
    groups: tuple[str, ...]  # ("vl", "text") or ("text",) for a text-only trunk
    n_per_task: int  # held-out samples per task (0 = all)
    checkpoint: float | None = None  # trunk evals: which intro-fraction checkpoint; None = final
    seed: int = 0
    stable_metric: tuple[tuple[str, str], ...] = ()  # task → the metric its stable score uses
    chance: tuple[tuple[str, float], ...] = ()  # task → chance level, over what its source says
    # Prompts and decoding limits change the answers, so they are part of an eval step's id.
    prompt: tuple[tuple[str, str], ...] = ()  # task → template with {question}, over its family's
    max_new_tokens: tuple[tuple[str, int], ...] = ()  # task → greedy decoding limit, over its records'
    text_harness: str = OWN  # who scores text multiple choice: the project's scorer | lm-eval (harness.LM_EVAL)
    num_fewshot: tuple[tuple[str, int], ...] = ()  # task → examples before each question (default 0)


StepConfig = Union[EncoderConfig, TrunkConfig, BranchConfig, FinetuneConfig, EvalConfig]
CONFIG_TYPES: dict[str, type] = {"encoder": EncoderConfig, "trunk": TrunkConfig,
                                  "branch": BranchConfig, "finetune": FinetuneConfig,
                                  "eval": EvalConfig}


def identity(obj: Any) -> Any:
    """The JSON-able value of a config with every non-identity field (labels) left out, and every
    field added after steps were cached (metadata `omit_default`) left out while at its default. A
    `tokens` source counts as the text it was tokenised from while its tokens are exactly that
    text's (`models.data.tokens.tokens_identity`)."""
    if isinstance(obj, DataSource) and obj.kind == "tokens":
        from models.data.tokens import identity_source

        origin, own = identity_source(obj)
        return identity(origin) if origin is not None else own
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: identity(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if f.metadata.get("identity", True) and not _at_added_default(f, getattr(obj, f.name))
                } | _revision(obj)
    if isinstance(obj, (list, tuple)):
        return [identity(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): identity(v) for k, v in obj.items()}
    return obj


# Inputs whose processing changed without any config field changing carry a revision in their
# identity, so the steps that read them run again while every other step keeps its id (bumping
# CODE_SALT would retrain the built-in world's studies too, which compute exactly as before).
IMAGE_FILE_KINDS = ("webdataset", "parquet_images", "llava")
DECODE_REVISION = 2  # image files: JPEG draft decoding when >= 2x the target, one bicubic resize
HF_PIXELS_REVISION = 2  # the hf encoder: pixels normalised once by its mean/std (SigLIP saw [-3, 1])


def _revision(obj: Any) -> dict[str, int]:
    if isinstance(obj, DataSource) and obj.kind in IMAGE_FILE_KINDS:
        return {"decode_revision": DECODE_REVISION}
    if isinstance(obj, VisionConfig) and obj.kind == "hf":
        return {"pixels_revision": HF_PIXELS_REVISION}
    return {}


def _at_added_default(f: dataclasses.Field, value: Any) -> bool:
    return bool(f.metadata.get("omit_default")) and value == f.default


def to_json(obj: Any) -> Any:
    """The full JSON-able value of a config (labels included), for config.json."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_json(v) for k, v in obj.items()}
    return obj


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


@dataclass(frozen=True, kw_only=True, slots=True)
class Step:
    """One node of the study DAG.

    `parents` are (role, step_id) pairs — roles: encoder, trunk, branch, finetune — so a step knows
    where its inputs live. `meta` holds what does not change the result and so is not hashed: the
    axis values as the study names them (scale, text_data, …, for analysis), the trunk's checkpoint
    fractions (a trunk asked for one more checkpoint replays from the nearest earlier one), labels.
    """

    kind: StepKind
    config: StepConfig
    parents: tuple[tuple[str, str], ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        expected = CONFIG_TYPES[self.kind]
        if not isinstance(self.config, expected):
            raise TypeError(f"{self.kind} step needs {expected.__name__}, got {type(self.config).__name__}")

    @property
    def identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "config": identity(self.config),
                "parents": [list(p) for p in self.parents], "salt": CODE_SALT}

    @property
    def step_id(self) -> str:
        return hashlib.sha256(canonical_json(self.identity).encode()).hexdigest()[:12]

    def parent(self, role: str) -> str:
        for r, sid in self.parents:
            if r == role:
                return sid
        raise KeyError(f"{self.kind} step {self.step_id} has no {role} parent")

    def to_json(self) -> dict[str, Any]:
        """What config.json holds: identity, full config (labels included), parents, meta."""
        return {"step_id": self.step_id, "kind": self.kind, "config": to_json(self.config),
                "parents": [list(p) for p in self.parents], "meta": to_json(dict(self.meta)),
                "code_salt": CODE_SALT}


def _decode(tp: Any, value: Any) -> Any:
    """JSON value → the typed config value (dataclasses, optional dataclasses, tuples)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
        origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        hints = typing.get_type_hints(tp)
        return tp(**{k: _decode(hints[k], v) for k, v in value.items() if k in hints})
    if origin is tuple or (isinstance(value, list) and origin is None and tp is not list):
        return tuple(_decode(Any, v) if not isinstance(v, list) else _decode(tuple, v) for v in value)
    return value


def load_step_config(root: str | Path, kind: str, step_id: str) -> tuple[Any, list[tuple[str, str]]]:
    """A parent step's config (typed) and parents, from its config.json."""
    path = stepfiles.step_paths(root, kind, step_id).config
    try:
        data = stepfiles.read_json(path)
    except stepfiles.StepFileError as exc:
        raise FileNotFoundError(f"{exc}; run the {kind} step first") from exc
    config = _decode(CONFIG_TYPES[kind], data["config"])
    return config, [tuple(p) for p in data.get("parents", [])]
