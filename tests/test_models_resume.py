"""Resume equals uninterrupted: a SIGUSR2 mid-run (trunk, branch, finetune) and a `kill -9` of a
subprocess, each rerun to completion, give the same metrics, weights and evals to 1e-6 on CPU."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import torch

import models.synthetic as syn
from models import checkpoint as ck
from models.run import RunOptions, run_step
from models.stepfiles import step_dir, step_paths
from tests.models_helpers import (
    assert_same_run,
    branch_step,
    eval_step,
    finetune_step,
    metrics,
    one_thread,  # noqa: F401  (autouse: one torch thread)
    run_interrupted,
    trunk_step,
    weights,
)


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict:
    """An uninterrupted trunk → branch → finetune → eval chain in one root."""
    torch.use_deterministic_algorithms(True)
    root = tmp_path_factory.mktemp("uninterrupted")
    trunk = trunk_step()
    branch = branch_step(trunk)
    finetune = finetune_step(branch)
    evaluation = eval_step(finetune)
    for step in (trunk, branch, finetune, evaluation):
        run_step(step, root, data=syn)
    return {"root": root, "trunk": trunk, "branch": branch, "finetune": finetune,
            "eval": evaluation}


def test_micro_batches_give_the_whole_batch_run(chain, tmp_path) -> None:
    """Gradient accumulation over uneven micro-batches (3 + 1 rows, images split with their rows)
    computes what whole batches compute, up to float summation order. The trunk takes its
    micro-batch from the study (meta "run"), the branch and finetune from the caller's options."""
    trunk = dataclasses.replace(chain["trunk"], meta={**chain["trunk"].meta, "run": {"micro_batch": 3}})
    assert trunk.step_id == chain["trunk"].step_id  # how a step runs is not in its id
    run_step(trunk, tmp_path, data=syn)
    options = RunOptions(micro_batch=3)
    for step in (chain["branch"], chain["finetune"]):
        run_step(step, tmp_path, data=syn, options=options)
    for step in (trunk, chain["branch"], chain["finetune"]):
        ma, mb = metrics(chain["root"], step), metrics(tmp_path, step)
        assert ma.select("step", "name").equals(mb.select("step", "name"))
        torch.testing.assert_close(torch.tensor(mb["value"].to_numpy()),
                                   torch.tensor(ma["value"].to_numpy()), rtol=1e-4, atol=1e-5)
        wa, wb = weights(chain["root"], step), weights(tmp_path, step)
        for k in wa:
            torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("signum", [signal.SIGUSR2, signal.SIGTERM])
def test_trunk_resumes_to_the_bit_after_a_signal(chain, tmp_path, signum) -> None:
    run_interrupted(chain["trunk"], tmp_path, at=5, signum=signum)
    assert_same_run(chain["root"], tmp_path, chain["trunk"])
    for f in (0.0, 0.5, 1.0):
        a = ck.load_torch(step_paths(chain["root"], "trunk", chain["trunk"].step_id).fraction(f))
        b = ck.load_torch(step_paths(tmp_path, "trunk", chain["trunk"].step_id).fraction(f))
        assert a["step"] == b["step"] and a["data"] == b["data"]
        for k in a["model"]:
            torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=1e-6)


def test_branch_and_finetune_resume_to_the_bit(chain, tmp_path) -> None:
    trunk_dir = step_dir(chain["root"], "trunk", chain["trunk"].step_id)
    shutil.copytree(trunk_dir, step_dir(tmp_path, "trunk", chain["trunk"].step_id))
    run_interrupted(chain["branch"], tmp_path, at=3)
    assert_same_run(chain["root"], tmp_path, chain["branch"])
    run_interrupted(chain["finetune"], tmp_path, at=2)
    assert_same_run(chain["root"], tmp_path, chain["finetune"])
    run_step(chain["eval"], tmp_path, data=syn)
    ea = pl.read_parquet(step_dir(chain["root"], "eval", chain["eval"].step_id) / "evals.parquet")
    eb = pl.read_parquet(step_dir(tmp_path, "eval", chain["eval"].step_id) / "evals.parquet")
    assert ea.equals(eb)


def test_branch_continues_the_trunk_lr_and_optimizer_moments(chain) -> None:
    root, trunk, branch = chain["root"], chain["trunk"], chain["branch"]
    trunk_lr = metrics(root, trunk).filter(pl.col("name") == "lr")["value"].to_list()
    branch_lr = metrics(root, branch).filter(pl.col("name") == "lr")["value"].to_list()
    # the trunk's step 7 (index 6) is the first step after f = 0.5 of 12 steps
    assert branch_lr[0] == pytest.approx(trunk_lr[6])
    assert branch_lr[-1] < branch_lr[0]


_KILL_SCRIPT = """
import sys, dataclasses
import models.synthetic as syn
from models.run import run_step, RunOptions
sys.path.insert(0, {repo!r})
from tests.models_helpers import trunk_step
run_step(trunk_step({steps}), {root!r}, RunOptions(checkpoint_every_steps=3), data=syn)
"""


@pytest.mark.slow  # 5–20 s depending on load (a subprocess start and 2 × 200 steps)
def test_kill_9_mid_step_then_rerun_equals_uninterrupted(tmp_path) -> None:
    steps = 200
    step = trunk_step(steps, fractions=(0.5,))
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    script = _KILL_SCRIPT.format(repo=str(Path(__file__).parents[1]), steps=steps, root=str(killed))
    proc = subprocess.Popen([sys.executable, "-c", script])
    latest = step_dir(killed, "trunk", step.step_id) / "ckpt" / "latest.pt"
    deadline = time.monotonic() + 120
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # land the kill somewhere inside a later step (or a checkpoint write)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (step_dir(killed, "trunk", step.step_id) / "result.json").exists(), \
        "the run finished before the kill: make it longer"
    run_step(step, killed, RunOptions(checkpoint_every_steps=3), data=syn)
    run_step(step, clean, data=syn)
    assert_same_run(clean, killed, step)
