"""The study's `[logging]` section: which experiment trackers every step logs to, and their
settings. How a step is watched, never what it computes: no step id holds any of it.

    [logging]
    trackers = ["tensorboard", "wandb"]   # any of tensorboard, csv, wandb, mlflow
    save_dir = "tracking"                 # relative to the study file; default <root>/tracking
    every_steps = 10                      # training metrics reach the trackers every N steps
    [logging.wandb]                       # project (default: the study's name), entity, mode
    mode = "offline"
    [logging.mlflow]                      # tracking_uri (default file:<save_dir>/mlruns), experiment

A tracker whose package is not installed is refused here, naming the extra that installs it.
"""

from __future__ import annotations

from pathlib import Path

from models.trackers import TRACKERS, WANDB_MODES, MlflowSettings, TrackingConfig, WandbSettings, missing_extra
from sweep.reader import Table, check_str


def read_logging(t: Table, study: str, root: Path, base: Path) -> TrackingConfig | None:
    """`[logging]`, or None when the study has none (or lists no tracker)."""
    if not t.data:
        t.finish()
        return None
    trackers = t.list("trackers", lambda v, k: check_str(v, t.error, k, TRACKERS), nonempty=False)
    if len(set(trackers)) != len(trackers):
        raise t.error("trackers", f"lists a tracker twice: {trackers!r}")
    for i, tracker in enumerate(trackers):
        problem = missing_extra(tracker)
        if problem:
            raise t.error(f"trackers[{i}]", problem)
    save_dir = t.str("save_dir", "")
    every = t.int("every_steps", 10, lo=1)
    wandb = _sub(t, "wandb", trackers)
    mlflow = _sub(t, "mlflow", trackers)
    settings = TrackingConfig(
        trackers=tuple(trackers), study=study, every_steps=every,
        save_dir=str((base / save_dir).resolve() if save_dir else root / "tracking"),
        wandb=WandbSettings(project=wandb.str("project", ""), entity=wandb.str("entity", ""),
                            mode=wandb.str("mode", "online", choices=WANDB_MODES)),
        mlflow=MlflowSettings(tracking_uri=mlflow.str("tracking_uri", ""),
                              experiment=mlflow.str("experiment", "")))
    wandb.finish()
    mlflow.finish()
    t.finish()
    return settings if trackers else None


def _sub(t: Table, name: str, trackers: list[str]) -> Table:
    """A tracker's settings table; one given for a tracker not listed is almost always a slip."""
    if t.has(name) and name not in trackers:
        raise t.error(name, f"settings for {name}, but trackers does not list it ({trackers!r})")
    return t.table(name)
