"""The local backend on a multi-GPU machine (the GPU count faked through CUDA_VISIBLE_DEVICES):
each worker gets its own GPUs, the default worker count is the number of GPU groups, and with
gpus_per_step = 2 both ranks of an LM step see the same two GPUs, apart from every other step's."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import pytest

from sweep.launch import select_steps
from sweep.launch.devices import local_workers, visible_gpus, worker_devices
from sweep.launch.local import LocalBackend
from tests.launch_helpers import small_plan
from tests.ranks_helpers import DeviceProbeJob


def _probes(plan) -> list[dict]:
    out = []
    for step in plan.steps:
        for path in sorted(plan.dir(step).glob("probe-rank*.json")):
            out.append(json.loads(path.read_text()) | {"kind": step.kind, "step_id": step.step_id})
    return out


def _overlap(a: dict, b: dict) -> bool:
    return a["began"] < b["ended"] and b["began"] < a["ended"]


@pytest.mark.parametrize(("per_step", "groups"), [(1, {"0", "1", "2", "3"}), (2, {"0,1", "2,3"})])
def test_concurrent_local_workers_train_on_distinct_gpus(tmp_path, monkeypatch, per_step, groups) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")  # a 4-GPU machine, as far as we tell
    plan = small_plan(tmp_path, extra="[train]\nbatch_size = 8\n")
    plan = replace(plan, study=replace(plan.study, backend=replace(plan.study.backend, gpus_per_step=per_step)))
    workers = local_workers(None, plan.study.backend)
    assert workers == 4 // per_step
    result = LocalBackend().run(plan, select_steps(plan, False, 3), workers=workers, progress=False,
                                job_factory=DeviceProbeJob)
    assert result.completed == len(plan.steps) and result.failed == 0
    probes = _probes(plan)
    assert {p["devices"] for p in probes} == groups
    for step_id, ranks in itertools.groupby(sorted(probes, key=lambda p: p["step_id"]), key=lambda p: p["step_id"]):
        ranks = list(ranks)
        lm = ranks[0]["kind"] in ("trunk", "branch", "finetune")
        assert len(ranks) == (per_step if lm else 1), step_id
        assert len({r["devices"] for r in ranks}) == 1  # a step's ranks share its worker's GPUs
    starts = [p for p in probes if p["rank"] == 0]
    pairs = [(a, b) for a, b in itertools.combinations(starts, 2) if _overlap(a, b)]
    assert pairs, "no two steps ran at once"
    assert all(a["devices"] != b["devices"] for a, b in pairs)


def test_gpu_discovery_and_assignment(monkeypatch) -> None:
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "3,5"}) == ["3", "5"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert worker_devices(["0", "1", "2", "3"], 2, 3) == ["0,1", "2,3", "0,1"]  # more workers: shared
    assert worker_devices([], 2, 3) is None
    with pytest.raises(ValueError, match="gpus_per_step = 4 but this machine offers 2"):
        worker_devices(["0", "1"], 4, 1)
