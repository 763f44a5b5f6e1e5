"""GPU layouts in a study and what `vlmsweep plan` makes of them: [backend.slurm…] layers per kind
and scale, one-rank kinds, run options in meta (never in ids), GPU-hours at the measured MFU
against the issue's H200 throughputs, and the makespan with and without a GPU limit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sweep.cli import main
from sweep.gpuhours import MEASURED_MFU, rate_for
from sweep.plan import plan_study
from sweep.plancli import plan_json
from sweep.spec import load_study

REPO = Path(__file__).resolve().parents[1]
LAYERS = """
[study]
name = "layers"
[axes]
scale = ["debug", "1m"]
intro_fraction = [1.0]
image_ratio = [0.1]
[train]
batch_size = 16
[backend.slurm]
gpus_per_node = 8
time = 60
[backend.slurm.trunk]
time = 600
[backend.slurm.scale.1m]
nodes = 2
cpus = 6
[backend.slurm.scale.1m.trunk]
gpus_per_node = 4
strategy = "fsdp"
[backend.slurm.eval]
gpus_per_node = 1
"""


def test_slurm_layers_apply_kind_then_scale_then_both(tmp_path) -> None:
    path = tmp_path / "layers.toml"
    path.write_text(LAYERS)
    backend = load_study(path).backend
    trunk_1m, trunk_debug = backend.slurm_for("trunk", "1m"), backend.slurm_for("trunk", "debug")
    assert (trunk_1m.nodes, trunk_1m.gpus_per_node, trunk_1m.ranks, trunk_1m.cpus, trunk_1m.time_min,
            trunk_1m.strategy) == (2, 4, 8, 6, 600, "fsdp")
    assert (trunk_debug.nodes, trunk_debug.ranks, trunk_debug.time_min) == (1, 8, 600)
    branch = backend.slurm_for("branch", "1m")
    assert (branch.ranks, branch.time_min, branch.strategy) == (16, 60, "ddp")
    for kind in ("eval", "encoder"):  # one rank whatever the scale's layout
        one = backend.slurm_for(kind, "1m")
        assert (one.nodes, one.ranks, one.gpus_per_node) == (1, 1, 1)
    assert backend.slurm_key("trunk", "1m") == "backend.slurm.scale.1m.trunk.gpus_per_node"
    assert backend.slurm_key("branch", "1m") == "backend.slurm.scale.1m.nodes"
    plan = plan_study(load_study(path))
    trunks = {s.meta["scale"]: s for s in plan.steps if s.kind == "trunk"}
    assert trunks["1m"].meta["run"]["strategy"] == "fsdp" and "run" not in trunks["debug"].meta
    plain = tmp_path / "plain.toml"
    plain.write_text(LAYERS.split("[backend.slurm]")[0])
    default = load_study(plain).backend  # one-rank kinds share the LM kinds' arrays when equal
    assert default.slurm_for("eval", "1m") == default.slurm_for("trunk", "1m")
    assert {s.step_id for s in plan_study(load_study(plain)).steps} == {s.step_id for s in plan.steps}


def test_gpu_hours_reproduce_the_measured_throughputs() -> None:
    """The paper's 79m trunk (237B tokens) at 44.6% MFU on an H200 is 2.6 days on one GPU, as
    1.05M tokens/s makes it; the 411m trunk about 75 GPU-days (issue 16)."""
    data = plan_json(plan_study(load_study(REPO / "studies" / "paper.toml")), gpu="h200")
    rows = {(r["kind"], r["scale"]): r for r in data["gpu_hours"]["rows"]}
    steps = {(s["kind"], s["meta"]["scale"]): s for s in data["steps"] if s["kind"] == "trunk"}
    hours_79m = steps[("trunk", "79m")]["tokens"] / 1.05e6 / 3600
    assert rows[("trunk", "79m")]["gpu_hours"] == pytest.approx(hours_79m, rel=0.02)
    assert rows[("trunk", "411m")]["gpu_hours"] / 24 == pytest.approx(75, rel=0.02)
    assert rows[("trunk", "1.4b")]["measured_on"] == "h100"  # not measured on an H200: borrowed
    assert rows[("trunk", "1.4b")]["gpus_per_step"] == 16  # [backend.slurm.scale."1.4b"] nodes = 2
    assert rate_for("debug", "h100") is None and set(MEASURED_MFU) == {"79m", "154m", "411m", "1.4b"}


TWO_SCALES = """
[study]
name = "two"
[axes]
scale = ["79m", "411m"]
intro_fraction = [0.5, 1.0]
image_ratio = [0.1]
[model.vision]
kind = "patch"
frozen = false
pretrain = false
[train]
trunk_tokens_per_param = 100.0
[eval]
pretrained = false
trunk_checkpoints = false
[backend.slurm]
gpus_per_node = 8
"""


def test_makespan_is_the_longest_chain_or_the_work_over_a_gpu_limit(tmp_path, capsys) -> None:
    path = tmp_path / "two.toml"
    path.write_text(TWO_SCALES)
    assert main(["plan", str(path), "--json"]) == 0
    cost = json.loads(capsys.readouterr().out)["gpu_hours"]
    hours = {(r["kind"], r["scale"]): r["gpu_hours"] for r in cost["rows"]}
    # Each scale: its trunk, then its two branches at once, then their two fine-tunes at once.
    chain = {s: (hours[("trunk", s)] + (hours[("branch", s)] + hours[("finetune", s)]) / 2) / 8
             for s in ("79m", "411m")}
    assert cost["makespan_hours"] == pytest.approx(max(chain.values()))
    assert main(["plan", str(path), "--json", "--gpus", "8"]) == 0  # one 8-GPU step at a time
    serial = json.loads(capsys.readouterr().out)["gpu_hours"]
    assert serial["makespan_hours"] == pytest.approx(serial["total_gpu_hours"] / 8)
    assert main(["plan", str(path), "--gpus", "8"]) == 0
    out = capsys.readouterr().out
    assert "MFU measured on H100: docs/gpu.md" in out and "at most 8 GPUs at once" in out
    assert main(["plan", str(path), "--gpus", "4"]) == 2  # fewer GPUs than one step takes
    assert "--gpus 4 is fewer than the 8 GPUs" in capsys.readouterr().err
