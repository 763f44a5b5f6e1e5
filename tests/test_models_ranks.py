"""One step on two local ranks (gloo on CPU, `sweep.launch.ranks`): the same losses as one rank,
one writer, a stop signal that reaches one rank stops both after the same step, and the step
resumes on another rank count; ranks from srun's and the local launcher's variables."""

from __future__ import annotations

import json

import numpy as np
import pytest

import models.synthetic as syn
from models.checkpoint import Preempted, load_torch
from models.distributed import Ranks, ranks_from_env, rows_per_rank
from models.run import run_step
from models.stepfiles import step_paths
from sweep.launch.ranks import LocalRanks, rank_variables
from tests.models_helpers import metrics, one_thread, trunk_step  # noqa: F401  (autouse: one thread)
from tests.ranks_helpers import SyntheticJob

pytestmark = pytest.mark.slow
FIRST = 20  # optimizer steps compared tightly; later ones drift with float order


def _losses(root, step) -> np.ndarray:
    m = metrics(root, step)
    return m.filter(m["name"] == "train_loss").sort("step")["value"].to_numpy()


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    root = tmp_path_factory.mktemp("one")
    step = trunk_step(steps=24, fractions=(0.5,))
    run_step(step, root, data=syn)
    return root, step


def test_two_ranks_match_one_and_rank_zero_alone_writes(one_rank, tmp_path) -> None:
    root, step = one_rank
    result = LocalRanks(SyntheticJob(step, tmp_path), 2)()
    assert result["ranks"] == 2
    a, b = _losses(root, step), _losses(tmp_path, step)
    assert len(a) == len(b) == 24
    np.testing.assert_allclose(b[:FIRST], a[:FIRST], rtol=1e-5, atol=0)
    written = sorted(p.name for p in step_paths(tmp_path, "trunk", step.step_id).dir.iterdir())
    assert written == ["ckpt", "config.json", "evals.parquet", "metrics.parquet", "model.pt",
                       "progress.json", "result.json"]


def test_a_signal_to_one_rank_stops_both_and_resumes_on_one_rank(one_rank, tmp_path) -> None:
    """Rank 1 alone is signalled before batch 6: both ranks stop after the same step, rank 0
    saves (failure.json says preempted), and one rank finishes it to the uninterrupted losses."""
    root, step = one_rank
    with pytest.raises(Preempted):
        LocalRanks(SyntheticJob(step, tmp_path, signal_rank=1, at=6), 2)()
    paths = step_paths(tmp_path, "trunk", step.step_id)
    failure = json.loads(paths.failure.read_text())
    assert failure["reason"] == "preempted" and failure["error"].startswith("rank 0 of 2")
    saved = load_torch(paths.latest)
    assert 4 <= saved["step"] <= 8 and not paths.result.exists()
    run_step(step, tmp_path, data=syn)  # one rank now: the batch split does not enter the state
    np.testing.assert_allclose(_losses(tmp_path, step), _losses(root, step), rtol=1e-5, atol=0)
    assert json.loads(paths.result.read_text())["ranks"] == 1


def test_rank_variables_and_batch_split() -> None:
    ranks = ranks_from_env(rank_variables(1, 2, 29500))
    assert ranks == Ranks(rank=1, local_rank=1, world=2, nodes=1, per_node=2, source="local")
    slurm = ranks_from_env({"SLURM_NTASKS": "16", "SLURM_PROCID": "9", "SLURM_LOCALID": "1",
                            "SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "8(x2)",
                            "SLURM_JOB_NAME": "study.L0"})
    assert (slurm.rank, slurm.local_rank, slurm.nodes, slurm.per_node, slurm.writes_files) == (9, 1, 2, 8, False)
    assert ranks_from_env({"SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_JOB_NAME": "bash"}) == Ranks()
    assert rows_per_rank(512, 16) == 32
    with pytest.raises(ValueError, match="does not divide over 3 ranks"):
        rows_per_rank(512, 3)


def test_a_nan_loss_on_one_rank_fails_the_step_on_every_rank(tmp_path) -> None:
    """Rank 1 alone sees a NaN loss (its gradients stay finite): the ranks agree, no rank takes
    the update, and the step fails as diverged at that step instead of hanging or desyncing."""
    from models.stages.guard import Diverged
    from tests.ranks_helpers import NanLossJob

    step = trunk_step(steps=8, fractions=(0.5,))
    with pytest.raises(Diverged):
        LocalRanks(NanLossJob(step, tmp_path, nan_rank=1, at=3), 2)()
    failure = json.loads(step_paths(tmp_path, "trunk", step.step_id).failure.read_text())
    assert (failure["reason"], failure["optimizer_step"]) == ("diverged", 3)
