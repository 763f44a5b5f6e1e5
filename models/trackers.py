"""What a study's `[logging]` section asks of experiment trackers (`TrackingConfig`), and which
optional extra each tracker needs.

Torch-free: the planner validates a study with it (a tracker whose package is missing is a study
error before anything trains) and carries it to every step in `meta["logging"]`, never in a step
id. `models.stages.tracking` builds the Lightning loggers from it inside the step.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field
from typing import Any

TRACKERS = ("tensorboard", "csv", "wandb", "mlflow")
# tracker → (the module it imports, the pip extra of vlmsweep that installs it); csv needs nothing
EXTRAS: dict[str, tuple[str, str]] = {"tensorboard": ("tensorboard", "tensorboard"),
                                      "wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}
WANDB_MODES = ("online", "offline")
META_KEY = "logging"  # the Step.meta key the settings travel in


def missing_extra(tracker: str) -> str | None:
    """None when `tracker` can run here, else the one line that says which extra to install."""
    if tracker not in EXTRAS:
        return None
    module, extra = EXTRAS[tracker]
    if importlib.util.find_spec(module) is None:
        return f"tracker {tracker!r} needs the {module} package: pip install 'vlmsweep[{extra}]'"
    return None


@dataclass(frozen=True, kw_only=True, slots=True)
class WandbSettings:
    project: str = ""  # W&B project; empty = the study's name
    entity: str = ""  # W&B team or user; empty = the account's default
    mode: str = "online"  # offline: runs stay under save_dir until `wandb sync` (no network)

    def __post_init__(self) -> None:
        if self.mode not in WANDB_MODES:
            raise ValueError(f"wandb mode must be one of {WANDB_MODES}, got {self.mode!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class MlflowSettings:
    tracking_uri: str = ""  # e.g. http://mlflow:5000 or file:/path; empty = file:<save_dir>/mlruns
    experiment: str = ""  # MLflow experiment; empty = the study's name


@dataclass(frozen=True, kw_only=True, slots=True)
class TrackingConfig:
    """Trackers every training and eval step of a study logs to (one run per step)."""

    trackers: tuple[str, ...]  # any of TRACKERS
    save_dir: str  # absolute: TensorBoard and CSV folders, W&B's offline files, MLflow's file store
    study: str  # the study's name: the runs' group (W&B group, MLflow tag, a hyperparameter)
    every_steps: int = 10  # training metrics reach the trackers every N optimizer steps (and at the end)
    wandb: WandbSettings = field(default_factory=WandbSettings)
    mlflow: MlflowSettings = field(default_factory=MlflowSettings)

    def __post_init__(self) -> None:
        unknown = [t for t in self.trackers if t not in TRACKERS]
        if unknown:
            raise ValueError(f"unknown tracker {unknown[0]!r}; known: {', '.join(TRACKERS)}")
        if self.every_steps < 1:
            raise ValueError(f"logging every_steps must be >= 1, got {self.every_steps}")

    @property
    def mlflow_uri(self) -> str:
        return self.mlflow.tracking_uri or f"file:{self.save_dir}/mlruns"

    def to_meta(self) -> dict[str, Any]:
        return asdict(self) | {"trackers": list(self.trackers)}

    @classmethod
    def from_meta(cls, meta: dict[str, Any] | None) -> "TrackingConfig | None":
        """The settings a step's meta carries, or None (no [logging] in its study)."""
        raw = (meta or {}).get(META_KEY)
        if not raw:
            return None
        return cls(trackers=tuple(raw["trackers"]), save_dir=raw["save_dir"], study=raw["study"],
                   every_steps=int(raw.get("every_steps", 10)),
                   wandb=WandbSettings(**raw.get("wandb", {})),
                   mlflow=MlflowSettings(**raw.get("mlflow", {})))
