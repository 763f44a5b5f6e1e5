"""Memory: an address-space limit too small for torch is refused in one line before anything is
written, and a step killed without a trace twice in a row is failed with reason `oom` (a plain
`run` would otherwise resume it forever)."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

from models import stepfiles as sf
from sweep.launch import select_steps
from sweep.launch.cli import run_run
from sweep.launch.journal import read_failures, read_jobs
from sweep.status import reconcile
from tests.launch_helpers import small_plan, wait_for

REPO = Path(__file__).resolve().parent.parent


def test_run_refuses_an_address_space_limit_too_small_for_torch(tmp_path):
    plan = small_plan(tmp_path)

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (700 * 1024 ** 2, resource.RLIM_INFINITY))
    proc = subprocess.run([sys.executable, "-m", "sweep.cli", "run", str(plan.study.path), "--root",
                           str(plan.root), "--backend", "inline"], preexec_fn=limit, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "the address-space limit (ulimit -v) is 700 MB" in proc.stderr and "Traceback" not in proc.stderr
    assert not (plan.root / "steps").exists()


KILLED_RUN = """
import sys
from sweep.launch import get_backend, select_steps
from tests.launch_helpers import noop, small_plan
from pathlib import Path
plan = small_plan(Path(sys.argv[1]))
get_backend("inline").run(plan, select_steps(plan, False, 3), progress=False, job_factory=noop(60.0))
"""


def _kill_run_mid_step(tmp_path: Path, plan) -> None:
    """Start an inline run of noop steps and SIGKILL it once its first step ticks (as the OOM killer would)."""
    script = tmp_path / "run.py"
    script.write_text(KILLED_RUN)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    first = plan.steps[0]
    before = len([r for r in read_jobs(plan.root) if r.step_id == first.step_id]) if plan.root.exists() else 0
    wait_for(lambda: len([r for r in read_jobs(plan.root) if r.step_id == first.step_id]) > before
             and (plan.dir(first) / "ckpt" / "noop.json").exists(), timeout_s=60, what="the step to tick")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_a_step_killed_twice_in_a_row_is_failed_as_oom(tmp_path, capsys):
    plan = small_plan(tmp_path)
    first = plan.steps[0]
    _kill_run_mid_step(tmp_path, plan)
    assert reconcile(plan)[first.step_id].state == "interrupted"  # once: resumed, no failure
    assert first in select_steps(plan, False, 3)
    (plan.dir(first) / "ckpt" / "noop.json").unlink()
    _kill_run_mid_step(tmp_path, plan)  # the resumed attempt is killed too
    import argparse
    args = argparse.Namespace(study=plan.study.path, root=plan.root, backend="inline", workers=None,
                              retry_failed=False, dry_run=True)
    run_run(args, plan)  # a dry run records nothing
    assert reconcile(plan)[first.step_id].state == "interrupted"
    from sweep.launch.memory import record_repeated_kills
    assert record_repeated_kills(plan, reconcile(plan)) == [first.step_id]
    status = reconcile(plan)[first.step_id]
    assert (status.state, status.cause, status.failures) == ("failed", "oom", 1)
    assert "killed without a trace 2 times in a row" in status.reason
    assert sf.read_failure(plan.dir(first)).reason == "oom"
    assert [f.step_id for f in read_failures(plan.root)] == [first.step_id]
    assert first not in select_steps(plan, False, 3)  # not resumed forever; --retry-failed reruns it
    assert first in select_steps(plan, True, 3)


def test_oom_kills_reads_the_cgroup_counter_v1_and_v2(tmp_path):
    from sweep.launch.memory import oom_kills

    v2 = tmp_path / "v2"
    (v2 / "proc/self").mkdir(parents=True)
    (v2 / "proc/self/cgroup").write_text("0::/user.slice/run.scope\n")
    (v2 / "sys/fs/cgroup/user.slice/run.scope").mkdir(parents=True)
    (v2 / "sys/fs/cgroup/user.slice/run.scope/memory.events").write_text(
        "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\noom_group_kill 0\n")
    assert oom_kills(v2) == 2
    v1 = tmp_path / "v1"  # a container: its own cgroup is mounted at the root
    (v1 / "proc/self").mkdir(parents=True)
    (v1 / "proc/self/cgroup").write_text("5:cpu:/\n4:memory:/process_api/abc\n")
    (v1 / "sys/fs/cgroup/memory").mkdir(parents=True)
    (v1 / "sys/fs/cgroup/memory/memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 7\n")
    assert oom_kills(v1) == 7
    assert oom_kills(tmp_path / "nothing") is None


def test_a_worker_sigkilled_while_the_oom_counter_rose_fails_as_oom(monkeypatch):
    from types import SimpleNamespace

    from sweep.launch import pool

    job = SimpleNamespace(oom_kills=3)
    monkeypatch.setattr(pool, "oom_kills", lambda: 3)
    assert pool._death_reason(-signal.SIGKILL, job)[1] == "crash"  # kill -9: no memory evidence
    monkeypatch.setattr(pool, "oom_kills", lambda: 4)
    error, cause = pool._death_reason(-signal.SIGKILL, job)
    assert cause == "oom" and "OOM killer" in error
    assert pool._death_reason(-signal.SIGSEGV, job)[1] == "crash"
