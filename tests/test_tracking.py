"""Experiment trackers: `[logging]` in a study reaches every step (never its id), a missing
package is a one-line study error, and a step's run in TensorBoard, CSV, MLflow (file store) and
W&B (offline) holds its metrics rows, its axes and config, and survives a kill -9 as one run
with each step once. Everything offline; read back with each tracker's own reader."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from mlflow.tracking import MlflowClient

import models.synthetic as syn
from models.run import RunOptions, run_step
from models.stages.tracking import TrackingCallback
from models.stepfiles import step_dir
from models.steps import Step
from models.trackers import MlflowSettings, TrackingConfig, WandbSettings
from sweep.cli import main
from sweep.errors import StudyError
from sweep.plan import plan_study
from sweep.spec import load_study
from tests.models_helpers import eval_step, one_thread, trunk_step  # noqa: F401  (autouse fixture)
from tests.tracking_helpers import csv_rows, mlflow_history, mlflow_runs, tensorboard_scalars, wandb_offline_runs

REPO = Path(__file__).resolve().parents[1]
SMALL = """
[study]
name = "small"
[axes]
scale = ["debug"]
intro_fraction = [0.5, 1.0]
image_ratio = [0.1]
"""


@pytest.fixture(autouse=True)
def _offline(tmp_path, monkeypatch):
    """W&B offline with its files, cache and settings in tmp; no tracker may reach a network."""
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def _study(tmp_path: Path, text: str):
    path = tmp_path / "s.toml"
    path.write_text(text)
    return load_study(path)


def _tracked(step: Step, settings: TrackingConfig) -> Step:
    return Step(kind=step.kind, config=step.config, parents=step.parents,
                meta={**step.meta, "scale": "debug", "logging": settings.to_meta()})


def _metric_rows(root: Path, step: Step, name: str = "train_loss") -> list[tuple[int, float]]:
    table = pl.read_parquet(step_dir(root, step.kind, step.step_id) / "metrics.parquet")
    return [(s, v) for s, v in table.filter(pl.col("name") == name).select("step", "value").iter_rows()]


def _same(got: list[tuple[int, float]], expected: list[tuple[int, float]]) -> None:
    """Each step once, in order, with the value metrics.parquet holds (float32 on the way)."""
    assert [s for s, _ in got] == [s for s, _ in expected]
    assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6)


# -- the study section --------------------------------------------------------------------------
def test_logging_reaches_every_step_and_no_step_id(tmp_path):
    base = plan_study(_study(tmp_path, SMALL))
    text = SMALL + ('\n[logging]\ntrackers = ["tensorboard", "csv", "wandb", "mlflow"]\nsave_dir = "tb"\n'
                    'every_steps = 5\n[logging.wandb]\nproject = "p"\nentity = "lab"\nmode = "offline"\n'
                    '[logging.mlflow]\ntracking_uri = "http://mlflow:5000"\nexperiment = "e"\n')
    tracked = plan_study(_study(tmp_path, text))
    assert [s.step_id for s in base.steps] == [s.step_id for s in tracked.steps]
    for step in tracked.steps:
        settings = TrackingConfig.from_meta(dict(step.meta))
        assert settings == TrackingConfig(
            trackers=("tensorboard", "csv", "wandb", "mlflow"), save_dir=str(tmp_path / "tb"),
            study="small", every_steps=5, wandb=WandbSettings(project="p", entity="lab", mode="offline"),
            mlflow=dataclasses.replace(settings.mlflow, tracking_uri="http://mlflow:5000", experiment="e"))
    assert all("logging" not in s.meta for s in base.steps)
    default = plan_study(_study(tmp_path, SMALL + '[logging]\ntrackers = ["csv"]\n')).steps[0]
    assert TrackingConfig.from_meta(dict(default.meta)).save_dir == str(tmp_path / "runs" / "small" / "tracking")


@pytest.mark.parametrize("extra, message", [
    ('trackers = ["neptune"]', "'neptune' is not one of"),
    ('trackers = ["csv", "csv"]', "lists a tracker twice"),
    ('trackers = ["csv"]\n[logging.wandb]\nmode = "offline"', "trackers does not list it"),
    ('trackers = ["wandb"]\n[logging.wandb]\nmode = "sometimes"', "'sometimes' is not one of"),
    ('trackers = ["csv"]\nevery_steps = 0', "out of range"),
])
def test_bad_logging_sections_name_the_key(tmp_path, extra, message):
    with pytest.raises(StudyError, match=message) as info:
        _study(tmp_path, SMALL + "[logging]\n" + extra + "\n")
    assert info.value.key.startswith("logging")


@pytest.mark.parametrize("tracker, module, extra", [
    ("wandb", "wandb", "wandb"), ("mlflow", "mlflow", "mlflow"), ("tensorboard", "tensorboard", "tensorboard")])
def test_a_missing_tracker_package_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys,
                                                                 tracker, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # what an environment without it gives find_spec
    path = tmp_path / "s.toml"
    path.write_text(SMALL + f'[logging]\ntrackers = ["csv", "{tracker}"]\n')
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"logging.trackers[1]: tracker '{tracker}' needs the {module} package" in err
    assert f"vlmsweep[{extra}]" in err
    assert not (tmp_path / "runs").exists()


# -- runs -----------------------------------------------------------------------------------------
def test_a_trained_step_and_its_eval_log_to_tensorboard_csv_and_mlflow(tmp_path):
    settings = TrackingConfig(trackers=("tensorboard", "csv", "mlflow"), save_dir=str(tmp_path / "t"),
                              study="demo", every_steps=4, mlflow=MlflowSettings(experiment="exp"))
    trunk = _tracked(trunk_step(10), settings)
    run_step(trunk, tmp_path / "root", data=syn)
    name = f"trunk-{trunk.step_id}"
    expected = _metric_rows(tmp_path / "root", trunk)
    assert [s for s, _ in expected] == list(range(1, 11))
    scalars = tensorboard_scalars(tmp_path / "t" / "tensorboard" / name)
    assert [s for s, _ in scalars["train_loss"]] == list(range(1, 11))  # steps 9, 10 come at the end
    assert [v for _, v in scalars["train_loss"]] == pytest.approx([v for _, v in expected], rel=1e-6)
    assert {"lr", "grad_norm", "tokens"} <= set(scalars)
    rows = csv_rows(tmp_path / "t" / "csv" / name / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 11))
    uri = f"file:{tmp_path}/t/mlruns"
    (run,) = mlflow_runs(uri)
    assert run.info.run_name == name and run.info.status == "FINISHED"
    assert MlflowClient(tracking_uri=uri).get_experiment(run.info.experiment_id).name == "exp"
    assert run.data.tags["study"] == "demo" and run.data.tags["scale"] == "debug"
    assert run.data.params["step_id"] == trunk.step_id and run.data.params["config/seed"] == "0"
    _same(mlflow_history(uri, run.info.run_id, "train_loss"), expected)

    evaluation = _tracked(eval_step(trunk), settings)
    evaluation = dataclasses.replace(evaluation, config=dataclasses.replace(evaluation.config, groups=("text",)))
    run_step(evaluation, tmp_path / "root", data=syn)
    evals = pl.read_parquet(step_dir(tmp_path / "root", "eval", evaluation.step_id) / "evals.parquet")
    (eval_run,) = [r for r in mlflow_runs(uri) if r.info.run_name == f"eval-{evaluation.step_id}"]
    summary = {f"eval/{t}/{m}": v for t, m, v in evals.select("task", "metric", "value").iter_rows()}
    assert summary and eval_run.data.metrics == pytest.approx(summary)
    eval_scalars = tensorboard_scalars(tmp_path / "t" / "tensorboard" / f"eval-{evaluation.step_id}")
    assert {k: v[0][1] for k, v in eval_scalars.items()} == pytest.approx(summary)


def test_a_rerun_under_another_study_continues_the_same_mlflow_run(tmp_path):
    """MLflow params never change: a step another study started (and shares) still reruns."""
    first = TrackingConfig(trackers=("mlflow",), save_dir=str(tmp_path / "t"), study="a", every_steps=2)
    trunk = _tracked(trunk_step(4), first)
    run_step(trunk, tmp_path / "root", data=syn)
    (step_dir(tmp_path / "root", "trunk", trunk.step_id) / "result.json").unlink()
    run_step(_tracked(trunk, dataclasses.replace(first, study="b")), tmp_path / "root", data=syn)
    uri = f"file:{tmp_path}/t/mlruns"
    (run,) = mlflow_runs(uri)
    _same(mlflow_history(uri, run.info.run_id, "train_loss"), _metric_rows(tmp_path / "root", trunk))


def test_trackers_get_new_rows_every_every_steps_steps(tmp_path):
    """The cadence: rows reach a tracker at multiples of every_steps (and at the end), each once."""
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(save_dir=str(tmp_path), name="", version="run")
    module = type("Stage", (), {"rows": [], "step_count": 0})()
    callback = TrackingCallback(loggers=[logger], every_steps=4, held=[0])
    held = []
    for step in range(1, 11):
        module.step_count = step
        module.rows.append((step, 128 * step, "train_loss", 1.0 / step))
        callback.on_train_batch_end(None, module)
        path = tmp_path / "run" / "metrics.csv"
        held.append([int(r["step"]) for r in csv_rows(path)] if path.exists() else [])
    assert held[2] == [] and held[3] == [1, 2, 3, 4] and held[8] == held[7] == list(range(1, 9))
    callback.on_train_end(None, module)
    assert [int(r["step"]) for r in csv_rows(tmp_path / "run" / "metrics.csv")] == list(range(1, 11))


def test_a_step_logs_to_wandb_offline_as_its_own_run_in_the_study_group(tmp_path):
    settings = TrackingConfig(trackers=("wandb",), save_dir=str(tmp_path / "t"), study="demo",
                              every_steps=3, wandb=WandbSettings(project="p", entity="lab", mode="offline"))
    trunk = _tracked(trunk_step(6), settings)
    run_step(trunk, tmp_path / "root", data=syn)
    (run,) = wandb_offline_runs(tmp_path / "t")
    assert (run["id"], run["group"], run["name"]) == (trunk.step_id, "demo", f"trunk-{trunk.step_id}")
    assert (run["project"], run["entity"]) == ("p", "lab")
    assert [int(h["trainer/global_step"]) for h in run["history"]] == list(range(1, 7))
    losses = [float(h["train_loss"]) for h in run["history"]]
    assert losses == pytest.approx([v for _, v in _metric_rows(tmp_path / "root", trunk)], rel=1e-6)
    assert '"debug"' in run["config"]["scale"]


_KILL_SCRIPT = """
import sys
sys.path.insert(0, {repo!r})
import models.synthetic as syn
from models.run import run_step, RunOptions
from models.steps import Step
from tests.models_helpers import trunk_step
base = trunk_step({steps}, fractions=(0.5,))
step = Step(kind="trunk", config=base.config, meta={{**base.meta, "scale": "debug", "logging": {logging!r}}})
run_step(step, {root!r}, RunOptions(checkpoint_every_steps=3), data=syn)
"""


@pytest.mark.slow  # a subprocess, W&B's service twice and 2 × 100 tiny steps: 20–80 s
def test_kill_9_then_resume_continues_one_run_per_tracker(tmp_path):
    settings = TrackingConfig(trackers=("tensorboard", "csv", "mlflow", "wandb"), study="demo",
                              save_dir=str(tmp_path / "t"), every_steps=1,
                              wandb=WandbSettings(mode="offline"))
    steps = 100
    trunk = _tracked(trunk_step(steps, fractions=(0.5,)), settings)
    root = tmp_path / "root"
    script = _KILL_SCRIPT.format(repo=str(REPO), steps=steps, logging=settings.to_meta(), root=str(root))
    # Its own W&B service, as a requeued job has: an inherited WANDB_SERVICE (this process's, from
    # an earlier test) would outlive the kill and keep holding the run.
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"} | {"PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    written = tmp_path / "t" / "csv" / f"trunk-{trunk.step_id}" / "metrics.csv"
    deadline = time.monotonic() + 180
    # Kill once the trackers hold 20 steps: past the checkpoint of step 18, so the rerun
    # retrains steps they hold already, and W&B's and TensorBoard's buffers may hold unsent ones.
    while proc.poll() is None and time.monotonic() < deadline:
        if written.exists() and written.read_text().count("\n") > 20:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (step_dir(root, "trunk", trunk.step_id) / "result.json").exists(), "finished before the kill"
    run_step(trunk, root, RunOptions(checkpoint_every_steps=3), data=syn)
    expected = _metric_rows(root, trunk)
    assert [s for s, _ in expected] == list(range(1, steps + 1))
    name = f"trunk-{trunk.step_id}"

    assert [p.name for p in (tmp_path / "t" / "tensorboard").iterdir()] == [name]
    scalars = tensorboard_scalars(tmp_path / "t" / "tensorboard" / name)["train_loss"]
    _same(scalars, expected)  # each step once, the killed attempt's included
    rows = csv_rows(tmp_path / "t" / "csv" / name / "metrics.csv")
    _same([(int(r["step"]), float(r["train_loss"])) for r in rows], expected)
    uri = f"file:{tmp_path}/t/mlruns"
    (run,) = mlflow_runs(uri)
    assert run.info.status == "FINISHED"
    _same(mlflow_history(uri, run.info.run_id, "train_loss"), expected)
    # W&B: the killed attempt's service died with it (its offline file may hold nothing), so the
    # resumed attempt, the same run id, sends every row: once synced, one run with every step.
    attempts = [a for a in wandb_offline_runs(tmp_path / "t") if "id" in a]
    assert {a["id"] for a in attempts} == {trunk.step_id}
    resumed = [(int(h["trainer/global_step"]), float(h["train_loss"])) for h in attempts[-1]["history"]]
    _same(resumed, expected)


@pytest.mark.slow  # two gloo ranks in subprocesses: 15–40 s
def test_on_two_ranks_rank_zero_alone_logs(tmp_path):
    from sweep.launch.ranks import LocalRanks
    from tests.ranks_helpers import SyntheticJob

    settings = TrackingConfig(trackers=("tensorboard", "csv", "mlflow"), save_dir=str(tmp_path / "t"),
                              study="demo", every_steps=2)
    trunk = _tracked(trunk_step(8, fractions=(0.5,)), settings)
    assert LocalRanks(SyntheticJob(trunk, tmp_path / "root"), 2)()["ranks"] == 2
    expected = _metric_rows(tmp_path / "root", trunk)
    name = f"trunk-{trunk.step_id}"
    folder = tmp_path / "t" / "tensorboard" / name
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1  # one writer
    _same(tensorboard_scalars(folder)["train_loss"], expected)
    _same([(int(r["step"]), float(r["train_loss"])) for r in csv_rows(tmp_path / "t" / "csv" / name / "metrics.csv")],
          expected)
    (run,) = mlflow_runs(f"file:{tmp_path}/t/mlruns")
    _same(mlflow_history(f"file:{tmp_path}/t/mlruns", run.info.run_id, "train_loss"), expected)
