"""Nothing lost: a step whose process died with its runner (kill -9 of the whole `vlmsweep run`
process group) is interrupted, not failed, and a plain `run` resumes it from its checkpoint without
spending a retry; a crashed worker is retried by a plain `run` within max_failures; `run` exits
non-zero and says what is left whenever the study is not complete; the root lock says at once that
it waits, and for whom; `vlmsweep ... | head` ends quietly."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from models import stepfiles as sf
from sweep.launch import select_steps
from sweep.launch.cli import run_run
from sweep.launch.journal import append_failure, read_failures, read_jobs
from sweep.launch.local import LocalBackend
from sweep.locking import root_lock
from sweep.status import reconcile
from tests.launch_helpers import noop, small_plan, wait_for

REPO = Path(__file__).resolve().parent.parent

RUN = """
import sys
from pathlib import Path
from sweep.launch import get_backend, select_steps
from tests.launch_helpers import noop, small_plan

if __name__ == "__main__":  # spawned workers re-import this file as __mp_main__
    plan = small_plan(Path(sys.argv[1]))
    get_backend(sys.argv[2]).run(plan, select_steps(plan, False, 3), workers=2, progress=False,
                                 job_factory=noop(30.0))
"""


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


@pytest.mark.parametrize("backend", ["local", "inline"])
def test_kill_9_of_the_run_group_leaves_steps_interrupted_and_a_plain_run_resumes(tmp_path, backend):
    script = tmp_path / "run.py"
    script.write_text(RUN)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path), backend],
                            env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    plan = small_plan(tmp_path)
    in_flight = [s for s in plan.steps if not s.parents][: 2 if backend == "local" else 1]
    ticked = [plan.dir(s) / "ckpt" / "noop.json" for s in in_flight]
    wait_for(lambda: all(p.exists() for p in ticked), timeout_s=90, what="the steps to tick")
    time.sleep(0.3)
    pids = {proc.pid} | {int(r.job_id.split(".")[0]) for r in read_jobs(plan.root) if backend == "local"}
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its workers, no cleanup anywhere
    proc.wait(timeout=30)
    wait_for(lambda: all(_gone(pid) for pid in pids), timeout_s=30, what="the workers to die")

    statuses = reconcile(plan)
    for step in in_flight:
        status = statuses[step.step_id]
        assert status.state == "interrupted", status
        assert "died with its runner" in status.reason and status.failures == 0
    chosen = select_steps(plan, retry_failed=False, max_failures=1)  # a plain run, no retry left
    assert {s.step_id for s in in_flight} <= {s.step_id for s in chosen}
    result = LocalBackend().run(plan, chosen, workers=2, progress=False, job_factory=noop(0.0))
    assert result.completed == len(plan.steps)
    for step in in_flight:  # resumed from the tick saved before the kill, not from the start
        assert json.loads(plan.dir(step).joinpath("result.json").read_text())["resumed_from_tick"] > 0
    assert read_failures(plan.root) == []


def test_a_killed_worker_is_retried_by_a_plain_run_within_max_failures(tmp_path):
    plan = small_plan(tmp_path, max_failures=2)
    trunk = next(s for s in plan.steps if s.kind == "trunk")
    tick = plan.dir(trunk) / "ckpt" / "noop.json"

    def kill_the_trunk_worker():
        wait_for(tick.exists, timeout_s=90, what="the trunk to tick")
        record = next(r for r in read_jobs(plan.root) if r.step_id == trunk.step_id)
        os.kill(int(record.job_id.split(".")[0]), signal.SIGKILL)

    killer = threading.Thread(target=kill_the_trunk_worker)
    killer.start()
    LocalBackend().run(plan, select_steps(plan, False, 2), workers=2, progress=False,
                       job_factory=noop(0.0, slow=((trunk.step_id, 30.0),)))
    killer.join()
    status = reconcile(plan)[trunk.step_id]
    assert status.state == "failed" and status.cause == "crash" and "SIGKILL" in status.reason
    assert trunk in select_steps(plan, retry_failed=False, max_failures=2)
    assert trunk not in select_steps(plan, retry_failed=False, max_failures=1)  # its one is spent


def _run_args(plan, **kw) -> argparse.Namespace:
    return argparse.Namespace(study=plan.study.path, root=plan.root, backend="inline", workers=None,
                              retry_failed=False, dry_run=False, **kw)


def test_run_exits_nonzero_and_says_what_is_left(tmp_path, capsys):
    plan = small_plan(tmp_path)
    encoder, trunk = (next(s for s in plan.steps if s.kind == k) for k in ("encoder", "trunk"))
    for step in (encoder, trunk):
        append_failure(plan.root, step.step_id, "1", "RuntimeError: boom")
    assert run_run(_run_args(plan), plan) == 1  # nothing runnable: the study is not complete
    out = capsys.readouterr().out
    assert "not complete: 12 of 12 steps left (2 failed, 10 blocked)" in out
    assert f"failed      trunk    {trunk.step_id}  RuntimeError: boom" in out
    assert f"vlmsweep run {plan.study.path} --root {plan.root} --retry-failed" in out
    # a failure the user must fix (bad input, a full disk) makes it exit 2
    sf.write_failure(plan.dir(trunk), sf.Failure(step_id=trunk.step_id, kind="trunk", reason="input",
                                                 error="DataError: x.jsonl: record 5: not valid JSON",
                                                 finished_at=sf.now_iso()))
    assert run_run(_run_args(plan), plan) == 2


def test_the_lock_says_at_once_that_it_waits_and_for_whom(tmp_path):
    said: list[tuple[float, str]] = []
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from sweep.locking import root_lock\n"
        "with root_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)"), str(tmp_path)],
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        began = time.monotonic()
        with pytest.raises(Exception, match=f"pid {holder.pid}"):
            with root_lock(tmp_path, wait_s=1.0, say=lambda text: said.append((time.monotonic(), text))):
                pass
    finally:
        holder.kill()
        holder.wait()
    (at, text), = said
    assert at - began < 0.5, "the wait was silent"
    assert f"waiting up to 1 s for pid {holder.pid} (" in text and "root_lock" in text


def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    # 64 steps' configs as JSON: ~70 kB, more than a pipe holds, so `head` closes it mid-write
    shell = (f"{sys.executable} -m sweep.cli plan {REPO / 'studies' / 'demo.toml'} --root {tmp_path} "
             "--json | head -c 20")
    out = subprocess.run(["bash", "-c", shell], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert out.stdout.startswith("{")
    assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr, out.stderr


def test_a_garbled_result_is_corrupt_not_done_and_ingest_refuses_it(tmp_path, capsys):
    from sweep.cli import main
    from sweep.launch import get_backend

    plan = small_plan(tmp_path)
    get_backend("inline").run(plan, select_steps(plan, False, 3), progress=False, job_factory=noop())
    argv = ["ingest", str(plan.study.path), "--root", str(plan.root)]
    assert main(argv) == 0
    trunk = next(s for s in plan.steps if s.kind == "trunk")
    result = plan.dir(trunk) / "result.json"
    result.write_text('{"step_id": ')
    statuses = reconcile(plan)
    assert statuses[trunk.step_id].state == "corrupt" and str(result) in statuses[trunk.step_id].reason
    assert all(statuses[s.step_id].state == "done" for s in plan.children(trunk.step_id))
    assert trunk not in select_steps(plan, retry_failed=True, max_failures=3)  # never overwritten
    capsys.readouterr()
    assert main(argv) == 2
    error = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(error) == 1 and error[0].startswith(f"vlmsweep ingest: error: {result}: cannot read JSON")
    assert main(argv + ["--skip-unreadable"]) == 0
