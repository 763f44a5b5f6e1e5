"""Training steps fed by data workers from files: a trunk killed (kill -9) mid-run under 4 workers
and rerun under 2 equals the uninterrupted run with none, and a trunk on 2 gloo ranks × 2 workers
trains as one rank does. Each step records `data_wait_s`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from models.config import RunOptions
from models.data.materialize import read_world_manifest, write_world
from models.presets import get_preset
from models.run import run_step
from models.stepfiles import step_dir, step_paths
from models.steps import DataSource, Step, TrunkConfig
from tests.models_helpers import assert_same_run, one_thread  # noqa: F401  (autouse)

pytestmark = pytest.mark.slow
PRESET = get_preset("debug")


@pytest.fixture(scope="module")
def text_files(tmp_path_factory) -> DataSource:
    out = tmp_path_factory.mktemp("world")
    write_world(out, 5, text_docs=300, pairs=8, instructions=4, eval_items=4, shards=4)
    s = read_world_manifest(out)["sources"]["text"]
    return DataSource(name="text", kind=s["kind"], paths=tuple(s["paths"]),
                      options=tuple(sorted(s.get("options", {}).items())))


def file_trunk(source: DataSource, steps: int) -> Step:
    train = PRESET.train
    cfg = TrunkConfig(lm=PRESET.model.lm, train=train, data=source, seed=0,
                      tokens=steps * train.batch_size * train.seq_len)
    return Step(kind="trunk", config=cfg, meta={"checkpoint_fractions": [0.5]})


def _children(pid: int) -> list[int]:
    """Data worker processes of `pid` (spawned children; not multiprocessing's resource tracker)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        try:
            spawned = b"spawn_main" in (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and spawned:
            out.append(int(stat.parent.name))
    return out


_KILL_SCRIPT = """
import sys
sys.path.insert(0, {repo!r})
from models.config import RunOptions
from models.run import run_step
from models.steps import DataSource
from tests.test_input_pipeline_steps import file_trunk
source = DataSource(name="text", kind="jsonl", paths={paths!r}, options={options!r})
run_step(file_trunk(source, {steps}), {root!r}, RunOptions(checkpoint_every_steps=3, data_workers=4))
"""


def test_kill_9_under_4_workers_then_rerun_under_2_equals_uninterrupted(text_files, tmp_path):
    steps = 150
    step = file_trunk(text_files, steps)
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    script = _KILL_SCRIPT.format(repo=str(Path(__file__).parents[1]), root=str(killed), steps=steps,
                                 paths=text_files.paths, options=text_files.options)
    proc = subprocess.Popen([sys.executable, "-c", script])
    latest = step_dir(killed, "trunk", step.step_id) / "ckpt" / "latest.pt"
    deadline = time.monotonic() + 180
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    workers = _children(proc.pid)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (step_dir(killed, "trunk", step.step_id) / "result.json").exists(), \
        "the run finished before the kill: make it longer"
    assert len(workers) >= 4
    deadline = time.monotonic() + 10  # orphaned workers notice their parent is gone and exit
    while any(Path(f"/proc/{w}").exists() for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [w for w in workers if Path(f"/proc/{w}/stat").exists()
                and Path(f"/proc/{w}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
    run_step(step, killed, RunOptions(checkpoint_every_steps=3, data_workers=2))
    run_step(step, clean, RunOptions(data_workers=0))
    assert_same_run(clean, killed, step)  # every row but the timing ones (data_wait_s among them)
    waits = _rows(killed, step, "data_wait_s")
    assert len(waits) == steps and waits.min() >= 0


def test_two_gloo_ranks_with_two_workers_each_equal_one_rank(text_files, tmp_path):
    from sweep.launch.ranks import LocalRanks

    step = file_trunk(text_files, 16)
    one, two = tmp_path / "one", tmp_path / "two"
    run_step(step, one, RunOptions(data_workers=0))
    LocalRanks(FileJob(step, two, workers=2), 2)()
    a, b = _rows(one, step, "train_loss"), _rows(two, step, "train_loss")
    assert len(a) == len(b) == 16
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=0)
    assert len(_rows(two, step, "data_wait_s")) == 16


def _rows(root: Path, step: Step, name: str) -> np.ndarray:
    m = pl.read_parquet(step_paths(root, "trunk", step.step_id).metrics)
    return m.filter(pl.col("name") == name).sort("step")["value"].to_numpy()


class FileJob:
    """`run_step` on the real data layer with `workers` data workers per rank (picklable)."""

    def __init__(self, step: Step, root: Path, workers: int) -> None:
        self.step, self.root, self.workers = step, root, workers

    def __call__(self):
        return run_step(self.step, self.root, RunOptions(data_workers=self.workers))

    def is_preempted(self, error: BaseException) -> bool:
        return False


def test_a_worker_killed_mid_step_fails_the_step_with_its_reason(text_files, tmp_path):
    import threading

    from models import stepfiles as sf
    from models.data.workers import DataWorkerError

    step = file_trunk(text_files, 400)
    killed: list[int] = []

    def kill_a_worker() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            workers = _children(os.getpid())
            if len(workers) >= 2 and (step_dir(tmp_path, "trunk", step.step_id) / "progress.json").exists():
                os.kill(workers[-1], signal.SIGKILL)
                killed.append(workers[-1])
            time.sleep(0.05)
    thread = threading.Thread(target=kill_a_worker, daemon=True)
    thread.start()
    with pytest.raises(DataWorkerError, match=r"data worker \d \(pid \d+\) died \(killed by signal 9\)"):
        run_step(step, tmp_path, RunOptions(data_workers=2, progress_every_s=0.0))
    thread.join(timeout=5)
    assert killed
    failure = sf.read_failure(step_dir(tmp_path, "trunk", step.step_id))
    assert "killed by signal 9" in failure.summary and "DataWorkerError" in failure.summary
