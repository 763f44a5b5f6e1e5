"""Experiment trackers for one step: Lightning's TensorBoard, CSV, W&B and MLflow loggers, one
tracker run per step, named `<kind>-<step_id>`, its axes and config as hyperparameters, the study
as its group.

Rank 0 alone logs. A resumed or requeued step continues its run: W&B's run id is the step id
(resume "allow"), TensorBoard and CSV write to the same folder, and MLflow's run id is recorded
in the step's tracking.json and reused. Each tracker holds each optimizer step once: on resume,
what a tracker already holds is read back (its last step) and only later rows are sent, first the
restored rows it lost in the kill (unflushed buffers), then new ones. Training metrics come from
the stage's own metrics rows, named as metrics.parquet names them, every `every_steps` steps; an
eval step's rows are its run's summary metrics, `eval/<task>/<metric>`.
"""

from __future__ import annotations

import csv
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L

from models import stepfiles as sf
from models.steps import Step
from models.trackers import TrackingConfig

_NOT_AXES = ("logging", "run", "checkpoint_fractions")  # meta keys that are no labels of the step


def run_name(step: Step) -> str:
    return f"{step.kind}-{step.step_id}"


def hyperparameters(step: Step, settings: TrackingConfig) -> dict[str, Any]:
    """What a run records about its step: identity, study, axes (meta labels) and full config."""
    axes = {k: v for k, v in dict(step.meta).items() if k not in _NOT_AXES}
    return {"step_id": step.step_id, "kind": step.kind, "study": settings.study, **axes,
            "parents": {role: parent for role, parent in step.parents}, "config": step.to_json()["config"]}


def _log_params(logger: Any, params: dict[str, Any]) -> None:
    if type(logger).__name__ != "MLFlowLogger":
        logger.log_hyperparams(params)
        return
    from mlflow.exceptions import MlflowException

    try:
        logger.log_hyperparams(params)
    except MlflowException:  # a resumed run that another study started: MLflow params never change
        pass


def _tags(step: Step, settings: TrackingConfig) -> dict[str, str]:
    axes = {k: v for k, v in dict(step.meta).items() if k not in _NOT_AXES and k != "tokens"}
    return {"step_id": step.step_id, "kind": step.kind, "study": settings.study,
            **{k: str(v) for k, v in axes.items()}}


def _make_loggers(step: Step, directory: Path, settings: TrackingConfig) -> list[Any]:
    save, name = Path(settings.save_dir), run_name(step)
    out: list[Any] = []
    for tracker in settings.trackers:
        if tracker == "tensorboard":
            from lightning.pytorch.loggers import TensorBoardLogger

            _after_earlier_event_files(save / "tensorboard" / name)
            out.append(TensorBoardLogger(save_dir=str(save / "tensorboard"), name="", version=name,
                                         default_hp_metric=False))
        elif tracker == "csv":
            out.append(_csv_logger(save / "csv", name))
        elif tracker == "wandb":
            from lightning.pytorch.loggers import WandbLogger

            w = settings.wandb
            out.append(WandbLogger(name=name, id=step.step_id, resume="allow", save_dir=str(save),
                                   project=w.project or settings.study, entity=w.entity or None,
                                   group=settings.study, job_type=step.kind,
                                   offline=w.mode == "offline",
                                   tags=[f"{k}={v}"[:64] for k, v in _tags(step, settings).items()]))
        elif tracker == "mlflow":
            out.append(_mlflow_logger(step, directory, settings))
    return out


def _after_earlier_event_files(folder: Path) -> None:
    """Wait, on a resume, until the clock is past the second of the run's newest event file.

    TensorBoard reads a run's event files in name order (`events.out.tfevents.<second>.<host>.
    <pid>…`): a resumed attempt's file written in the same second as the killed one's sorts by pid
    and may be read first, and the killed attempt's earlier steps then read as out of order and
    are purged from the run. A later second sorts after: at most a one-second wait, on resume only."""
    seconds = [int(p.name.split(".")[3]) for p in folder.glob("events.out.tfevents.*")
               if p.name.split(".")[3].isdigit()]
    while seconds and time.time() < max(seconds) + 1:
        time.sleep(0.05)


def _csv_logger(save: Path, name: str) -> Any:
    """Lightning's CSVLogger deletes an existing metrics.csv when it starts: keep its complete rows
    and hand them back to the writer, so a resumed step's file runs on from where it stopped."""
    from lightning.pytorch.loggers import CSVLogger

    path = save / name / "metrics.csv"
    kept: list[dict[str, str]] = []
    if path.exists():
        text = path.read_text()
        lines = text.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines = lines[:-1]  # a row cut by the kill
        kept = list(csv.DictReader(lines))
    logger = CSVLogger(save_dir=str(save), name="", version=name, flush_logs_every_n_steps=10**9)
    with warnings.catch_warnings():  # "previous log files will be deleted": their rows are kept
        warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
        logger.experiment.metrics.extend(kept)
    logger.save()
    return logger


def _mlflow_logger(step: Step, directory: Path, settings: TrackingConfig) -> Any:
    from lightning.pytorch.loggers import MLFlowLogger

    if settings.mlflow_uri.startswith("file:"):
        # MLflow 3 keeps its file store in maintenance and refuses it unless asked; many SLURM
        # jobs writing at once suit its one-folder-per-run layout better than one SQLite file.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    record = sf.read_json_or_none(directory / sf.TRACKING) or {}
    run_id = record.get("mlflow_run_id")
    logger = MLFlowLogger(experiment_name=settings.mlflow.experiment or settings.study,
                          run_name=run_name(step), tracking_uri=settings.mlflow_uri,
                          tags=_tags(step, settings), run_id=run_id)
    if run_id is None:
        _ = logger.experiment  # creates the run
        sf.write_json(directory / sf.TRACKING, record | {"mlflow_run_id": logger.run_id})
    return logger


def _held_through(logger: Any) -> int:
    """The last optimizer step `logger`'s run already holds (0: none)."""
    kind = type(logger).__name__
    if kind == "TensorBoardLogger":
        folder = Path(logger.log_dir)
        if not any(folder.glob("events.out.tfevents.*")):
            return 0
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        events.Reload()
        return max((e.step for tag in events.Tags()["scalars"] for e in events.Scalars(tag)), default=0)
    if kind == "CSVLogger":
        return max((int(float(r["step"])) for r in _csv_rows(logger)), default=0)
    if kind == "MLFlowLogger":
        client, run_id = logger.experiment, logger.run_id
        keys = list(client.get_run(run_id).data.metrics)
        return max((m.step for k in keys[:1] for m in client.get_metric_history(run_id, k)), default=0)
    if kind == "WandbLogger":
        # Online, a resumed run's step counter stands after the last step W&B holds; offline it
        # starts at 0 (a killed attempt's service may have written nothing): send every row again.
        return max(int(logger.experiment.step) - 1, 0)
    return 0


def _csv_rows(logger: Any) -> list[dict[str, str]]:
    path = Path(logger.experiment.metrics_file_path)
    return list(csv.DictReader(path.open())) if path.exists() else []


def _send(logger: Any, metrics: dict[str, float], step: int) -> None:
    if type(logger).__name__ == "WandbLogger":  # W&B's own step axis is the optimizer step
        logger.experiment.log(metrics | {"trainer/global_step": step}, step=step)
    else:
        logger.log_metrics(metrics, step=step)


@dataclass(kw_only=True, eq=False)
class TrackingCallback(L.Callback):
    """Sends a stage's new metrics rows to every tracker every `every_steps` optimizer steps."""

    loggers: list[Any]
    every_steps: int
    held: list[int] = field(default_factory=list)  # per logger: the last step it holds

    def _flush(self, module: Any) -> None:
        rows = module.rows
        for i, logger in enumerate(self.loggers):
            by_step: dict[int, dict[str, float]] = {}
            for step, tokens, name, value in rows:
                if step > self.held[i]:
                    by_step.setdefault(step, {"tokens": float(tokens)})[name] = float(value)
            for step, metrics in by_step.items():
                _send(logger, metrics, step)
            if by_step:
                self.held[i] = max(by_step)
                logger.save()

    def on_train_start(self, trainer: L.Trainer, module: Any) -> None:
        self._flush(module)  # restored rows a tracker lost when the last attempt was killed

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, *args: Any) -> None:
        if module.step_count % self.every_steps == 0:
            self._flush(module)

    def on_train_end(self, trainer: L.Trainer, module: Any) -> None:
        self._flush(module)

    def on_exception(self, trainer: L.Trainer, module: Any, exception: BaseException) -> None:
        self._flush(module)  # a preemption's last steps reach the trackers before they close


@dataclass(kw_only=True)
class StepTracking:
    """A step's loggers (for the Trainer) and the callback that feeds them."""

    loggers: list[Any]
    callback: TrackingCallback

    def close(self) -> None:
        """End this attempt's W&B run (a worker's next step starts its own)."""
        for logger in self.loggers:
            if type(logger).__name__ == "WandbLogger" and logger._experiment is not None:
                logger._experiment.finish()


def open_tracking(step: Step, directory: Path) -> StepTracking | None:
    """The step's trackers (None without [logging]), each told the last step it holds."""
    settings = TrackingConfig.from_meta(dict(step.meta))
    if settings is None:
        return None
    loggers = _make_loggers(step, directory, settings)
    params = hyperparameters(step, settings)
    for logger in loggers:
        _log_params(logger, params)
    held = [_held_through(logger) for logger in loggers]
    return StepTracking(loggers=loggers, callback=TrackingCallback(
        loggers=loggers, every_steps=settings.every_steps, held=held))


def log_evals(step: Step, directory: Path, rows: list[Any]) -> None:
    """An eval step's rows as its run's summary metrics (`eval/<task>/<metric>`)."""
    settings = TrackingConfig.from_meta(dict(step.meta))
    if settings is None or not rows:
        return
    names = [c for c, _ in sf.EVALS_COLUMNS]
    rows = [r if isinstance(r, dict) else dict(zip(names, r)) for r in rows]
    summary = {f"eval/{r['task']}/{r['metric']}": float(r["value"]) for r in rows}
    loggers = _make_loggers(step, directory, settings)
    params = hyperparameters(step, settings)
    for logger in loggers:
        _log_params(logger, params)
        if type(logger).__name__ == "WandbLogger":
            logger.experiment.summary.update(summary)
        else:
            logger.log_metrics(summary, step=0)
        logger.save()
        logger.finalize("success")
    StepTracking(loggers=loggers, callback=TrackingCallback(loggers=[], every_steps=1)).close()
