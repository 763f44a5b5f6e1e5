"""The SLURM backend against a real single-node cluster (scripts/slurm-dev-cluster up).

Job arrays per DAG level and trunk family with afterany dependencies (a slow family holds back
only itself), failures blocking dependents, scancel and resume from a checkpoint, requeue on the
time-limit signal, idempotent reruns, the run lock, two studies sharing a trunk, and adaptive
search on SLURM. Most steps are `NoopStepJob`s; two tests train real debug steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweep.launch import get_backend, select_steps
from sweep.launch.cli import format_table
from sweep.launch.journal import read_jobs
from sweep.plan import plan_study
from sweep.spec import load_study
from sweep.status import reconcile
from tests.launch_helpers import SMALL_STUDY, noop, small_plan, wait_for, wait_settled

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]
REPO = Path(__file__).resolve().parents[1]


def _trunk(plan):
    return next(s for s in plan.steps if s.kind == "trunk")


def _tick(plan, step) -> int:
    path = plan.dir(step) / "ckpt" / "noop.json"
    try:
        return json.loads(path.read_text())["tick"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def _requeued(job: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T|%r"], capture_output=True,
                         text=True).stdout
    return out.startswith("PENDING")


def _result(plan, step):
    return json.loads((plan.dir(step) / "result.json").read_text())


def test_three_level_dag_runs_through_job_arrays(tmp_path):
    plan = small_plan(tmp_path)
    backend = get_backend("slurm")
    result = backend.run(plan, select_steps(plan, False, 3), job_factory=noop(0.3))
    # One array per level of the trunk's family, and the encoder (above every trunk) on its own.
    assert result.sbatch_calls == len(plan.levels()) + 1 == 5
    records = read_jobs(plan.root)
    assert len(records) == 12 and len({r.array_job_id for r in records}) == 4
    statuses = wait_settled(plan)
    assert {s.state for s in statuses.values()} == {"done"}
    for step in plan.steps:  # every parent finished before its child
        for _, pid in step.parents:
            assert _result(plan, plan.by_id[pid])["finished_at"] < _result(plan, step)["finished_at"]
    again = backend.run(plan, select_steps(plan, False, 3), job_factory=noop())
    assert (again.submitted, again.sbatch_calls) == (0, 0)
    assert len(read_jobs(plan.root)) == 12


def test_a_slow_trunk_family_does_not_hold_back_another(tmp_path):
    """Arrays are per level and trunk: a slow branch of one scale delays its own scale's
    fine-tune only, not the other scale's (one array per level would have held both)."""
    path = tmp_path / "two.toml"
    path.write_text(SMALL_STUDY.format(name="two", max_failures=3, time_min=10)
                    .replace('scale = ["debug"]', 'scale = ["debug", "170k"]')
                    .replace("intro_fraction = [0.5, 1.0]", "intro_fraction = [1.0]"))
    plan = plan_study(load_study(path), root=tmp_path / "root")
    slow = next(s for s in plan.steps if s.kind == "branch" and s.meta["scale"] == "170k")
    quick = next(s for s in plan.steps if s.kind == "finetune" and s.meta["scale"] == "debug")
    result = get_backend("slurm").run(plan, select_steps(plan, False, 3),
                                      job_factory=noop(0.2, slow=[(slow.step_id, 15.0)]))
    assert result.sbatch_calls > len(plan.levels())  # one array per level and trunk family
    statuses = wait_settled(plan, timeout_s=180)
    assert {s.state for s in statuses.values()} == {"done"}
    assert _result(plan, quick)["finished_at"] < _result(plan, slow)["finished_at"]
    for step in plan.steps:  # the dependency still orders every parent before its child
        for _, pid in step.parents:
            assert _result(plan, plan.by_id[pid])["finished_at"] < _result(plan, step)["finished_at"]


def test_failing_step_blocks_dependents_and_rerun_submits_only_missing(tmp_path):
    plan = small_plan(tmp_path)
    trunk = _trunk(plan)
    backend = get_backend("slurm")
    backend.run(plan, select_steps(plan, False, 3), job_factory=noop(0.0, {trunk.step_id}))
    statuses = wait_settled(plan)
    assert statuses[trunk.step_id].state == "failed"
    assert statuses[trunk.step_id].reason.startswith("exception: NoopFailure")
    assert "NoopFailure" in Path(statuses[trunk.step_id].log).read_text()
    encoder = next(s for s in plan.steps if s.kind == "encoder")
    assert statuses[encoder.step_id].state == "done"
    blocked = [s for s in statuses.values() if s.state == "blocked"]
    assert len(blocked) == 10
    table = format_table(plan, statuses)
    assert "blocked" in table and f"log: {statuses[trunk.step_id].log}" in table
    assert select_steps(plan, False, 3) == []
    retry = select_steps(plan, True, 3)
    assert len(retry) == 11 and encoder not in retry
    backend.run(plan, retry, job_factory=noop())
    assert {s.state for s in wait_settled(plan).values()} == {"done"}
    per_step = [r.step_id for r in read_jobs(plan.root)]
    assert per_step.count(encoder.step_id) == 1 and per_step.count(trunk.step_id) == 2


def test_scancel_mid_trunk_then_retry_resumes_from_checkpoint(tmp_path):
    plan = small_plan(tmp_path)
    trunk = _trunk(plan)
    backend = get_backend("slurm")
    job = backend.run(plan, [trunk], job_factory=noop(5.0)).job_ids[0]
    wait_for(lambda: _tick(plan, trunk) >= 10, what="the trunk to tick")
    subprocess.run(["scancel", job], check=True)
    status = wait_settled(plan)[trunk.step_id]
    assert status.state == "failed" and status.reason.startswith("CANCELLED")
    saved = _tick(plan, trunk)
    assert 10 <= saved < 50
    retry = select_steps(plan, True, 3)
    assert trunk in retry
    backend.run(plan, [trunk], job_factory=noop(5.0))
    assert wait_settled(plan)[trunk.step_id].state == "done"
    assert _result(plan, trunk)["resumed_from_tick"] >= saved


def test_time_limit_signal_checkpoints_and_requeues(tmp_path):
    plan = small_plan(tmp_path)
    trunk = _trunk(plan)
    job = get_backend("slurm").run(plan, [trunk], job_factory=noop(4.0)).job_ids[0]
    wait_for(lambda: _tick(plan, trunk) >= 10, what="the trunk to tick")
    # What SLURM sends `signal_delay_s` before the time limit (#SBATCH --signal=USR2@...).
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    # SLURM holds a requeued job back for two minutes (BeginTime); let it start sooner, but not
    # within the second its old credential was revoked (slurmd would refuse to launch it).
    wait_for(lambda: _requeued(job), timeout_s=30, what="the job to be requeued")
    time.sleep(2)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
    assert wait_settled(plan, timeout_s=90)[trunk.step_id].state == "done"
    result = _result(plan, trunk)
    assert result["resumed_from_tick"] >= 10  # the requeued job resumed, it did not restart
    assert [r.step_id for r in read_jobs(plan.root)] == [trunk.step_id]  # same job, requeued
    log = Path(reconcile(plan)[trunk.step_id].log).with_suffix(".out").read_text()
    assert "Requeued job" in log or "requeue" in log.lower()


def test_studies_sharing_a_trunk_train_it_once(tmp_path):
    a = small_plan(tmp_path, name="a")
    b = small_plan(tmp_path, name="b", root=a.root,
                   extra="[[include]]\nintro_fraction = [0.8]\nimage_ratio = [0.1]\n")
    assert _trunk(a).step_id == _trunk(b).step_id
    backend = get_backend("slurm")
    backend.run(a, select_steps(a, False, 3), job_factory=noop(0.2))
    chosen_b = select_steps(b, False, 3)
    assert _trunk(b) not in chosen_b  # in flight for study a
    backend.run(b, chosen_b, job_factory=noop(0.2))
    settled = wait_settled(b)
    trunk_b = settled[_trunk(b).step_id]
    # Study a's trunk finished without b's extra checkpoint (f = 0.8): b's next `run` only
    # extends it (a real trunk replays from its nearest earlier checkpoint); nothing retrains.
    assert trunk_b.state == "not submitted" and "0.8" in trunk_b.reason
    assert {s.state for sid, s in settled.items() if sid != _trunk(b).step_id} == {"done"}
    again = select_steps(b, False, 3)
    assert [s.step_id for s in again] == [_trunk(b).step_id]
    backend.run(b, again, job_factory=noop(0.2))
    assert {s.state for s in wait_settled(b).values()} == {"done"}
    assert [r.step_id for r in read_jobs(a.root)].count(_trunk(a).step_id) == 2


@pytest.mark.slow
def test_two_concurrent_cli_runs_submit_each_real_step_once(tmp_path):
    study = tmp_path / "real.toml"
    study.write_text((REPO / "tests" / "golden" / "real_study.toml").read_text())
    cmd = [sys.executable, "-m", "sweep.cli", "run", str(study), "--root", str(tmp_path / "root"),
           "--backend", "slurm"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    runs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in runs]
    assert [p.returncode for p in runs] == [0, 0], outputs
    assert sum("to run: 0 steps" in out for out in outputs) == 1, outputs
    submitted = next(out for out in outputs if "submitted" in out)  # its hint: the whole command
    assert f"vlmsweep status {study} --root {tmp_path / 'root'}`" in submitted
    records = read_jobs(tmp_path / "root")
    assert len(records) == len({r.step_id for r in records}) == 7
    from sweep.plan import plan_study
    from sweep.spec import load_study
    plan = plan_study(load_study(study), root=tmp_path / "root")
    first = [s for s in plan.steps if not s.parents]  # encoder and trunk: real training on SLURM
    wait_for(lambda: all((plan.dir(s) / "result.json").exists() for s in first), timeout_s=90,
             what="the real encoder and trunk to train")
    subprocess.run(["scancel", *{r.array_job_id or r.job_id for r in records}], check=True)
    assert _result(plan, _trunk(plan))["step_id"] == _trunk(plan).step_id


def test_search_trains_its_trunk_and_trials_as_slurm_jobs(tmp_path):
    """`vlmsweep search --backend slurm`: the shared trunk and encoder, then each trial's steps,
    run as ordinary SLURM jobs training the debug preset (journal entries, `status`); the search
    waits for them and scores them."""
    from sweep.plan import plan_cells
    from sweep.search import SearchSettings, search, trial_cell
    from sweep.status import reconcile
    from tests.test_search import STUDY

    path = tmp_path / "srch.toml"
    path.write_text(STUDY + "[backend.slurm]\ncpus = 1\nmem_gb = 2\ntime = 10\n")
    study = load_study(path)
    log: list[str] = []
    out = search(study, study.root, SearchSettings(trials=2, workers=2, lattice=0.5,
                                                   ratio_range=(0.05, 0.5), backend="slurm"),
                 log=log.append)
    trials = [t for t in out["trials"] if not t["from_grid"]]
    assert len(trials) == 2 and all(t["state"] == "COMPLETE" and t["values"] for t in trials), log
    assert out["pareto_front"]
    records = read_jobs(study.root)
    assert {r.backend for r in records} == {"slurm"}
    assert {"encoder", "trunk", "branch", "finetune", "eval"} <= {r.kind for r in records}
    cells = [trial_cell(study, t["scale"], t["params"]["intro_fraction"], t["params"]["image_ratio"])
             for t in trials]
    statuses = reconcile(plan_cells(study, cells, study.root, trunk_lattice=(0.0, 0.5, 1.0)))
    assert {s.state for s in statuses.values()} == {"done"}  # what `vlmsweep status` reports
    jobs = sorted({r.array_job_id or r.job_id for r in records})
    def states() -> list[str]:  # the result file lands just before the job itself ends
        return subprocess.run(["sacct", "-n", "-X", "-j", ",".join(jobs), "-o", "State"],
                              capture_output=True, text=True).stdout.split()
    wait_for(lambda: "RUNNING" not in states(), timeout_s=60, what="the trial jobs to end")
    assert set(states()) == {"COMPLETED"}, states()
    trunk = next(s for s in plan_study(study).steps if s.kind == "trunk")
    assert any(r.step_id == trunk.step_id for r in records)  # trunk went through sbatch


def test_scancel_of_one_array_task_spares_its_siblings_children(tmp_path):
    """One array holds both branches; cancelling one task stops only that branch's chain. With
    `afterok` on the whole array its sibling's fine-tune and evals were cancelled too."""
    plan = small_plan(tmp_path)
    victim, sibling = (s for s in plan.steps if s.kind == "branch")
    get_backend("slurm").run(plan, select_steps(plan, False, 3),
                             job_factory=noop(0.2, slow=[(victim.step_id, 30.0)]))
    records = {r.step_id: r for r in read_jobs(plan.root)}
    assert records[victim.step_id].array_job_id == records[sibling.step_id].array_job_id
    wait_for(lambda: _tick(plan, victim) >= 10, timeout_s=120, what="the slow branch to tick")
    subprocess.run(["scancel", records[victim.step_id].job_id], check=True)
    statuses = wait_settled(plan, timeout_s=180)
    assert statuses[victim.step_id].state == "failed"
    assert statuses[victim.step_id].reason.startswith("CANCELLED")

    def chain(step):  # the step's descendants
        below = plan.children(step.step_id)
        return below + [d for child in below for d in chain(child)]
    assert chain(sibling) and {statuses[s.step_id].state for s in chain(sibling)} == {"done"}
    assert {statuses[s.step_id].state for s in chain(victim)} == {"blocked"}
    finetune = next(s for s in plan.children(victim.step_id) if s.kind == "finetune")
    log = Path(statuses[finetune.step_id].log).read_text()
    assert f"not run: parent branch {victim.step_id} has no result" in log
    assert select_steps(plan, False, 3) == []  # the cancelled branch waits for --retry-failed
