"""What a `run` submits and what `status` says, from files, the journal and parsed queue output."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from models.stepfiles import step_paths
from sweep.launch import run_levels, select_steps
from sweep.launch.journal import JobRecord, JournalError, append_failure, append_jobs, read_jobs
from sweep.launch.queue import JobState, expand_job_ids, parse_sacct, parse_squeue
from sweep.locking import LockBusy, root_lock
from sweep.status import reconcile, summary
from tests.launch_helpers import small_plan


def _finish(plan, step):
    folder = plan.dir(step)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.json").write_text(json.dumps({"step_id": step.step_id}))
    for fraction in step.meta.get("checkpoint_fractions", ()):  # a finished trunk's checkpoints
        path = step_paths(plan.root, "trunk", step.step_id).fraction(fraction)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def _record(plan, step, job_id, backend="slurm"):
    append_jobs(plan.root, [JobRecord(step_id=step.step_id, kind=step.kind, job_id=job_id,
                                      backend=backend, study="small", log=f"/logs/{job_id}.err",
                                      submitted_at=time.time())])


def _trunk(plan):
    return next(s for s in plan.steps if s.kind == "trunk")


def test_fresh_plan_selects_every_step_parents_first(tmp_path):
    plan = small_plan(tmp_path)
    chosen = select_steps(plan, retry_failed=False, max_failures=3)
    assert [s.step_id for s in chosen] == [s.step_id for s in plan.steps]
    levels = run_levels(chosen)
    assert max(levels.values()) + 1 == len(plan.levels()) == 4
    for step in chosen:
        assert all(levels[p] < levels[step.step_id] for _, p in step.parents)


def test_done_steps_are_never_selected_and_levels_restart(tmp_path):
    plan = small_plan(tmp_path)
    for step in plan.levels()[0]:
        _finish(plan, step)
    chosen = select_steps(plan, retry_failed=False, max_failures=3)
    assert len(chosen) == len(plan.steps) - len(plan.levels()[0])
    assert min(run_levels(chosen).values()) == 0  # the branches now form the first level
    for step in plan.steps:
        _finish(plan, step)
    assert select_steps(plan, retry_failed=False, max_failures=3) == []


def test_failed_step_needs_retry_flag_and_stops_after_max_failures(tmp_path):
    plan = small_plan(tmp_path, max_failures=2)
    trunk = _trunk(plan)
    append_failure(plan.root, trunk.step_id, "1_0", "RuntimeError: boom")
    statuses = reconcile(plan)
    assert statuses[trunk.step_id].state == "failed"
    assert statuses[trunk.step_id].reason == "RuntimeError: boom"
    below = [s for s in plan.steps if s.step_id != trunk.step_id and s.kind != "encoder"]
    assert {statuses[s.step_id].state for s in below} == {"blocked"}
    assert "trunk" in statuses[below[0].step_id].reason
    # without --retry-failed: only the encoder (not under the trunk) runs
    assert [s.kind for s in select_steps(plan, False, 2)] == ["encoder"]
    assert len(select_steps(plan, True, 2)) == len(plan.steps)
    append_failure(plan.root, trunk.step_id, "2_0", "RuntimeError: boom again")
    assert reconcile(plan)[trunk.step_id].failures == 2
    assert [s.kind for s in select_steps(plan, True, 2)] == ["encoder"]


def test_in_flight_steps_are_not_resubmitted(tmp_path):
    plan = small_plan(tmp_path)
    trunk = _trunk(plan)
    _record(plan, trunk, "7_1")
    states = parse_squeue("7_1|RUNNING|None\n")
    statuses = reconcile(plan, states=states)
    assert statuses[trunk.step_id].state == "running"
    assert statuses[trunk.step_id].job_id == "7_1"
    chosen = select_steps(plan, False, 3, statuses=statuses)
    assert trunk not in chosen and len(chosen) == len(plan.steps) - 1


def test_slurm_reasons_and_never_started_jobs(tmp_path):
    plan = small_plan(tmp_path)
    trunk = _trunk(plan)
    branch = next(s for s in plan.steps if s.kind == "branch")
    _record(plan, trunk, "7_0")
    _record(plan, branch, "8_0")
    # what `sacct -X -n -P -o JobID,State,Reason,Start,NodeList` prints for an OOM and a dead
    # dependency (SLURM 22.05 gives a pending array cancelled by it Start = the cancel time)
    states = parse_sacct("7_0|OUT_OF_MEMORY|None|2026-01-01T00:00:00|node1\n"
                         "8_[0-3]|CANCELLED by 0|None|2026-01-01T00:00:05|None assigned\n")
    statuses = reconcile(plan, states=states)
    assert statuses[trunk.step_id].state == "failed"
    assert statuses[trunk.step_id].reason.startswith("OOM")
    assert statuses[trunk.step_id].log == "/logs/7_0.err"
    assert statuses[trunk.step_id].failures == 1
    assert statuses[branch.step_id].state == "blocked"
    assert summary(statuses)["failed"] == 1


def test_a_job_slurm_lost_sight_of_under_a_failed_parent_is_blocked_not_pending(tmp_path):
    """kill_invalid_depend cancels a job whose parent failed; until slurmdbd records it, neither
    squeue nor sacct lists it. Under a failed parent that step is blocked (a retry resubmits it),
    not "just submitted" pending (which a retry skips: CI saw 3 of 11 steps resubmitted)."""
    plan = small_plan(tmp_path)
    trunk = _trunk(plan)
    branch = next(s for s in plan.steps if s.kind == "branch")
    _record(plan, trunk, "7_0")
    _record(plan, branch, "8_0")
    lost = {"8_0": JobState(job_id="8_0", state="UNKNOWN", started=False)}  # what query_slurm gives
    statuses = reconcile(plan, states=parse_sacct("7_0|FAILED|NonZeroExitCode|2026-01-01T00:00:00|node1\n") | lost)
    assert statuses[trunk.step_id].state == "failed"
    assert statuses[branch.step_id].state == "blocked" and "trunk" in statuses[branch.step_id].reason
    assert branch in select_steps(plan, True, 3, statuses=statuses)
    _record(plan, trunk, "9_0")  # the trunk resubmitted and queued: its child's lost job is pending
    statuses = reconcile(plan, states=parse_squeue("9_0|PENDING|Priority\n") | lost)
    assert statuses[branch.step_id].state == "pending" and statuses[branch.step_id].reason == "just submitted"


def test_expand_array_ids():
    assert expand_job_ids("12_[0-2,5%2]") == ["12_0", "12_1", "12_2", "12_5"]
    assert expand_job_ids("12_3") == ["12_3"] and expand_job_ids("12") == ["12"]
    states = parse_sacct("9|CANCELLED by 0|None|2026-01-01T00:00:01|node1\n"
                         "10|CANCELLED by 0|DependencyNeverSatisfied|None|None assigned\n")
    assert states["9"].state == "CANCELLED" and states["9"].started
    assert states["10"].state == "CANCELLED" and not states["10"].started


def test_journal_round_trip_and_bad_line(tmp_path):
    plan = small_plan(tmp_path)
    _record(plan, _trunk(plan), "3")
    assert [r.job_id for r in read_jobs(plan.root)] == ["3"]
    with open(plan.root / "launch" / "jobs.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(JournalError, match=r"jobs.jsonl: line 2"):
        read_jobs(plan.root)


def test_root_lock_excludes_a_second_process(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, '.');"
        "from sweep.locking import root_lock\n"
        f"with root_lock({str(tmp_path)!r}):\n print('held', flush=True); time.sleep(30)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockBusy, match=f"pid {holder.pid}"):
            with root_lock(tmp_path, wait_s=0.3):
                pass
    finally:
        holder.kill()
        holder.wait()
    with root_lock(tmp_path, wait_s=5):  # released by the kernel when the holder died
        pass


def test_a_lost_node_interrupts_its_step_and_a_plain_run_resumes_it(tmp_path):
    plan = small_plan(tmp_path, max_failures=1)
    trunk = _trunk(plan)
    _record(plan, trunk, "7_0")
    states = parse_sacct("7_0|NODE_FAIL|None|2026-01-01T00:00:00|node1\n")
    status = reconcile(plan, states=states)[trunk.step_id]
    assert (status.state, status.failures) == ("interrupted", 0)
    assert "NODE_FAIL" in status.reason
    assert trunk in select_steps(plan, False, 1, statuses=reconcile(plan, states=states))
