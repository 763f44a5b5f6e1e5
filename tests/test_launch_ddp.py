"""One step on two ranks through SLURM (gloo, --ntasks-per-node=2 on the single-node dev cluster):
a trunk → branch → finetune → eval chain of real debug-preset steps runs once per step with the
one-rank chain's losses; SIGKILL of one rank fails the step once, without a hung rank, and a retry
finishes it from its checkpoint; a requeue resumes it. Gloo's reductions on CPU are deterministic,
so an interrupted 2-rank trunk ends bit-identical to the uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from models import stepfiles as sf
from models.distributed import MULTI_RANK_KINDS
from sweep.launch import get_backend, select_steps
from sweep.launch.journal import read_jobs
from sweep.plan import plan_study
from sweep.spec import load_study
from sweep.status import reconcile
from tests.launch_helpers import wait_for, wait_settled

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]

TIMEOUT_S = 60  # [backend] collective_timeout_s below
FIRST = 20  # optimizer steps whose losses must match one rank's tightly
STUDY = f"""
[study]
name = "ddp"
[axes]
scale = ["debug"]
intro_fraction = [0.5]
image_ratio = [0.5]
[model.vision]                  # a trained patch projection: no encoder step
kind = "patch"
frozen = false
pretrain = false
[train]
trunk_tokens_per_param = 0.2    # 73 optimizer steps
image_tokens_per_param = 0.1    # 37
[finetune]
samples = 80
batch_size = 4                  # 20 per epoch
[eval]
n_per_task = 2
pretrained = false              # evals: the fine-tuned model, and the trunk at f = 0.5
[backend]
collective_timeout_s = {TIMEOUT_S}
[backend.slurm]
cpus = 1
mem_gb = 2
time = 10
tasks_per_node = 2              # two ranks, gloo, on the dev cluster's one node
"""


@pytest.fixture(scope="module")
def chains(tmp_path_factory, slurm_cluster):
    """The chain on two SLURM ranks, and the same steps inline on one rank (meanwhile)."""
    base = tmp_path_factory.mktemp("ddp")
    study = base / "ddp.toml"
    study.write_text(STUDY)
    two = plan_study(load_study(study), root=base / "two")
    get_backend("slurm").run(two, list(two.steps), progress=False)
    one = plan_study(load_study(study), root=base / "one")
    get_backend("inline").run(one, list(one.steps), progress=False)
    return {"study": study, "two": two, "one": one, "statuses": wait_settled(two, timeout_s=1200)}


def _trunk(plan, checkpoint_every_steps: int = 0):
    trunk = next(s for s in plan.steps if s.kind == "trunk")
    run = {**trunk.meta.get("run", {}), "checkpoint_every_steps": checkpoint_every_steps}
    return dataclasses.replace(trunk, meta={**trunk.meta, "run": run})  # same id: run options


def _metrics(plan, step) -> pl.DataFrame:
    df = pl.read_parquet(plan.dir(step) / sf.METRICS)
    return df.filter(~pl.col("name").is_in(sf.TIMING_METRICS)).sort("step", "name")


def _losses(plan, step) -> np.ndarray:
    m = _metrics(plan, step)
    return m.filter(pl.col("name") == "train_loss")["value"].to_numpy()


def _task_pid(job: str, rank: int) -> int:
    """The pid of global rank `rank` of the job's srun step (`scontrol listpids`)."""
    out = subprocess.run(["scontrol", "listpids", job], capture_output=True, text=True).stdout
    for line in out.splitlines()[1:]:
        pid, _, step, _, global_id = (line.split() + [""] * 5)[:5]
        if step == "0" and global_id == str(rank):
            return int(pid)
    raise AssertionError(f"no rank {rank} in job {job}: {out}")


def _same_trunk(a, b, step) -> None:
    """Metrics and final weights bit-identical (gloo on CPU reduces in a fixed order)."""
    assert _metrics(a, step).equals(_metrics(b, step))
    wa = sf.read_json_or_none(a.dir(step) / sf.RESULT)
    assert wa is not None and wa["ranks"] == 2
    from models.checkpoint import load_torch

    ma, mb = load_torch(a.dir(step) / sf.WEIGHTS)["model"], load_torch(b.dir(step) / sf.WEIGHTS)["model"]
    assert all(ma[k].equal(mb[k]) for k in ma)


def test_two_ranks_run_the_chain_once_with_one_rank_losses(chains) -> None:
    two, one = chains["two"], chains["one"]
    assert {s.state for s in chains["statuses"].values()} == {sf.DONE}
    assert len(list((two.root / sf.STEPS_DIR).glob(f"*/*/{sf.RESULT}"))) == len(two.steps) == 5
    jobs = {r.step_id: r.job_id for r in read_jobs(two.root)}
    for step in two.steps:
        result = json.loads((two.dir(step) / sf.RESULT).read_text())
        ranks = 2 if step.kind in MULTI_RANK_KINDS else 1
        assert result["ranks"] == ranks and not (two.dir(step) / sf.FAILURE).exists()
        tasks = sorted(p.name for p in sf.job_log_dir(two.root, jobs[step.step_id]).glob("*_log.err"))
        assert len(tasks) == ranks, tasks  # one srun task per rank
        if step.kind in MULTI_RANK_KINDS:
            a, b = _losses(one, step), _losses(two, step)
            assert len(a) == len(b) >= FIRST
            np.testing.assert_allclose(b[:FIRST], a[:FIRST], rtol=1e-5, atol=0, err_msg=step.kind)


def test_sigkill_of_one_rank_fails_the_step_once_and_a_retry_resumes_it(chains, tmp_path) -> None:
    plan = plan_study(load_study(chains["study"]), root=tmp_path / "root")
    trunk = _trunk(plan, checkpoint_every_steps=10)
    backend = get_backend("slurm")
    job = backend.run(plan, [trunk]).job_ids[0]
    paths = sf.paths_of(plan.root, trunk)
    wait_for(paths.latest.exists, timeout_s=600, poll_s=0.5, what="the trunk's first checkpoint")
    os.kill(_task_pid(job, rank=1), signal.SIGKILL)
    killed = time.monotonic()
    status = wait_settled(plan, timeout_s=TIMEOUT_S + 60)[trunk.step_id]
    assert time.monotonic() - killed < TIMEOUT_S + 60  # rank 0 did not hang on its collective
    assert status.state == sf.FAILED and status.failures == 1, status
    failure = json.loads(paths.failure.read_text())
    assert failure["reason"] == "exception" and failure["error"].startswith("rank 0 of 2"), failure
    assert subprocess.run(["scontrol", "listpids", job], capture_output=True, text=True).stdout.count("\n") <= 1
    assert trunk in select_steps(plan, True, 3)
    backend.run(plan, [trunk])
    assert wait_settled(plan, timeout_s=900)[trunk.step_id].state == sf.DONE
    _same_trunk(chains["two"], plan, trunk)


def _requeued(job: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout
    return out.startswith("PENDING")


def test_a_requeue_under_two_ranks_resumes_to_the_same_metrics_and_evals(chains, tmp_path) -> None:
    plan = plan_study(load_study(chains["study"]), root=tmp_path / "root")
    trunk = _trunk(plan)
    trunk_eval = next(s for s in plan.steps if s.kind == "eval" and s.parents[0][0] == "trunk")
    job = get_backend("slurm").run(plan, [trunk, trunk_eval]).job_ids[0]
    progress = sf.paths_of(plan.root, trunk).progress
    wait_for(lambda: (sf.read_json_or_none(progress) or {}).get("tokens", 0) > 0, timeout_s=600,
             poll_s=0.5, what="the trunk to train")
    # What SLURM sends before the time limit (#SBATCH --signal=USR2@…), to both ranks.
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    wait_for(lambda: _requeued(job), timeout_s=120, what="the job to be requeued")
    time.sleep(2)  # not within the second its old credential was revoked
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
    assert {s.state for s in wait_settled(plan, timeout_s=900).values()} >= {sf.DONE}
    assert reconcile(plan)[trunk.step_id].state == sf.DONE
    assert [r.step_id for r in read_jobs(plan.root)].count(trunk.step_id) == 1  # requeued, not resubmitted
    log = Path(reconcile(plan)[trunk.step_id].log).with_suffix(".out").read_text()
    assert "requeue" in log.lower()
    _same_trunk(chains["two"], plan, trunk)
    evals = [pl.read_parquet(p.dir(trunk_eval) / sf.EVALS) for p in (plan, chains["two"])]
    assert evals[0].equals(evals[1]) and len(evals[0]) > 0
