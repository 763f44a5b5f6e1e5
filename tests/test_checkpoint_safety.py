"""Checkpoint files are data, never code: every checkpoint and weights file loads with
`weights_only=True` (RNG and stream state are tensors and plain numbers), a crafted pickle is
refused with one line naming the file before any of it runs, and a damaged `latest.pt` falls back
to the step's newest valid checkpoint or names the file to delete."""

from __future__ import annotations

import json
import os

import pytest
import torch

import models.synthetic as syn
from models import checkpoint as ck
from models.run import run_step
from models.stepfiles import step_paths
from tests.models_helpers import (  # noqa: F401 - one_thread is an autouse fixture
    assert_same_run,
    branch_step,
    finetune_step,
    interrupting,
    one_thread,
    trunk_step,
)


class RunsACommand:
    """What an attacker pickles: unpickling it calls os.system."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _stopped(step, root, at: int) -> None:
    """Run `step` until a checkpoint-and-stop before batch `at` (ckpt/latest.pt is saved)."""
    with pytest.raises(ck.Preempted):
        run_step(step, root, data=interrupting(at))


def _failure(root, step) -> dict:
    return json.loads(step_paths(root, step.kind, step.step_id).failure.read_text())


@pytest.fixture(scope="module")
def trunk_root(tmp_path_factory):
    """A finished trunk (its fraction checkpoints are what branches load)."""
    root = tmp_path_factory.mktemp("trunk")
    trunk = trunk_step()
    run_step(trunk, root, data=syn)
    return root, trunk


def test_checkpoints_hold_only_tensors_and_plain_data(tmp_path):
    trunk = trunk_step()
    _stopped(trunk, tmp_path, at=5)
    latest = step_paths(tmp_path, "trunk", trunk.step_id).latest
    # no allow-listed globals at all: RNG state, stream position, metrics rows are plain
    payload = torch.load(latest, map_location="cpu", weights_only=True)
    assert isinstance(payload["rng"]["numpy"]["keys"], torch.Tensor)
    assert payload["data"] and payload["step"] == 5


@pytest.mark.parametrize("target", ["latest", "trunk_fraction"])
def test_a_crafted_pickle_is_refused_and_never_runs(tmp_path, trunk_root, target):
    import shutil

    root, trunk = trunk_root
    shutil.copytree(root, tmp_path, dirs_exist_ok=True)
    branch = branch_step(trunk)
    if target == "latest":  # an interrupted branch whose checkpoint someone replaced
        _stopped(branch, tmp_path, at=2)
        planted = step_paths(tmp_path, "branch", branch.step_id).latest
    else:  # the trunk checkpoint every branch at f = 0.5 starts from
        planted = step_paths(tmp_path, "trunk", trunk.step_id).fraction(0.5)
    marker = tmp_path / "the-command-ran"
    torch.save({"step": 1, "model": RunsACommand(f"touch {marker}")}, planted)
    with pytest.raises(ck.CheckpointError) as err:
        run_step(branch, tmp_path, data=syn)
    assert not marker.exists(), "unpickling the checkpoint ran its command"
    message = str(err.value)
    assert str(planted) in message and "refused" in message and "\n" not in message
    failure = _failure(tmp_path, branch)
    assert failure["reason"] == "input" and str(planted) in failure["error"]


def test_a_truncated_latest_falls_back_to_the_newest_fraction_checkpoint(tmp_path, trunk_root, capfd):
    clean_root, trunk = trunk_root
    _stopped(trunk, tmp_path, at=9)  # fractions 0 and 0.5 (step 6) saved, latest.pt at step 9
    paths = step_paths(tmp_path, "trunk", trunk.step_id)
    assert torch.load(paths.latest, weights_only=True)["step"] == 9
    paths.latest.write_bytes(paths.latest.read_bytes()[:1000])
    run_step(trunk, tmp_path, data=syn)
    err = capfd.readouterr().err
    assert f"{paths.latest}: unreadable checkpoint" in err
    assert f"resuming from {paths.fraction(0.5)} (step 6) instead" in err
    assert_same_run(clean_root, tmp_path, trunk)  # the fallback replays steps 7-9 exactly


def test_a_truncated_latest_without_a_fallback_names_the_file_to_delete(tmp_path, trunk_root):
    import shutil

    root, trunk = trunk_root
    shutil.copytree(root, tmp_path, dirs_exist_ok=True)
    branch = branch_step(trunk)
    finetune = finetune_step(branch)
    run_step(branch, tmp_path, data=syn)
    _stopped(finetune, tmp_path, at=2)
    latest = step_paths(tmp_path, "finetune", finetune.step_id).latest
    latest.write_bytes(b"PK\x03\x04 not a whole checkpoint")
    with pytest.raises(ck.CheckpointError, match="delete it to restart the step") as err:
        run_step(finetune, tmp_path, data=syn)
    assert str(err.value).startswith(f"{latest}: unreadable checkpoint")
    assert _failure(tmp_path, finetune)["reason"] == "input"
    latest.unlink()  # what the message says to do
    assert run_step(finetune, tmp_path, data=syn)["status"] == "done"
