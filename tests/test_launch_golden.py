"""The sbatch scripts generated for each step kind (and a 2-node, 8-GPU trunk) match golden files
in tests/golden/.

When a change to them is intended, regenerate with VLMSWEEP_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from models.steps import STEP_KINDS
from sweep.launch.slurm import SlurmSettingsError, parse_extra, sbatch_parameters, source_setup
from sweep.launch.submitit_adapter import render_sbatch
from sweep.spec import load_study

GOLDEN = Path(__file__).resolve().parent / "golden"


def _script(kind: str, scale: str = "") -> str:
    study = load_study(GOLDEN / "golden_study.toml")
    params = sbatch_parameters(study.backend.slurm_for(kind, scale))
    text = render_sbatch(params, folder="/ROOT/logs/%j", job_name=f"golden.{kind}",
                         array_size=5, command="<PYTHON> -u -m submitit.core._submit <FOLDER>")
    return text.replace(source_setup()[0], "export PYTHONPATH=<SRC>${PYTHONPATH:+:$PYTHONPATH}")


@pytest.mark.parametrize(("kind", "scale", "name"), [
    *[(kind, "", f"sbatch_{kind}.sh") for kind in STEP_KINDS],
    ("trunk", "debug", "sbatch_trunk_2nodes_8gpus.sh"),  # [backend.slurm.scale.debug.trunk]
    ("eval", "debug", "sbatch_eval.sh"),  # a one-rank kind: the scale's trunk layout is not its
])
def test_sbatch_script_matches_golden(kind, scale, name):
    path = GOLDEN / name
    text = _script(kind, scale)
    if os.environ.get("VLMSWEEP_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with VLMSWEEP_UPDATE_GOLDEN=1 to create it"
    expected = path.read_text()
    assert text == expected, (
        f"the sbatch script for {kind} steps changed (see the diff below). If intended, run\n"
        f"  VLMSWEEP_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_launch_golden.py\n"
        f"and commit the new {path.name} after reviewing it.")


def test_per_kind_overrides_reach_the_script():
    assert "#SBATCH --partition=gpu" in _script("trunk")
    assert "#SBATCH --gpus-per-node=1" in _script("trunk")
    assert "#SBATCH --time=1440" in _script("trunk")
    assert "#SBATCH --partition=cpu" in _script("branch")
    assert "#SBATCH --time=20" in _script("eval")
    assert "#SBATCH --array=0-4%5" in _script("eval")
    assert "#SBATCH --signal=USR2@120" in _script("trunk")
    assert "#SBATCH --exclusive" in _script("encoder")


def test_a_two_node_step_runs_one_task_per_gpu():
    script = _script("trunk", "debug")
    for line in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--cpus-per-task=12",
                 "--mem=480GB", "--partition=gpu"):
        assert f"#SBATCH {line}\n" in script
    assert "\nsrun " in script  # srun starts the 16 ranks; nothing else launches processes
    for kind in ("branch", "finetune", "eval"):  # the layer is the trunk's of scale debug only
        assert "#SBATCH --nodes=1\n" in _script(kind, "debug")
    assert "#SBATCH --ntasks-per-node=1\n" in _script("eval", "debug")


def test_bad_extra_option_names_the_setting():
    assert parse_extra(["--mail-type=END"]) == {"mail-type": "END"}
    with pytest.raises(SlurmSettingsError, match=r"backend.slurm.extra: '-x' is not a long"):
        parse_extra(["-x"])
