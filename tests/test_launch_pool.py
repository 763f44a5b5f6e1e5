"""The persistent local worker pool: crash isolation, exceptions, logs, env, and stopping a run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from models.stepfiles import step_dir
from sweep.launch import select_steps
from sweep.launch.cli import format_table
from sweep.launch.journal import read_failures, read_jobs
from sweep.launch.local import LocalBackend
from sweep.launch.noop import NoopStepJob
from sweep.status import reconcile
from tests.launch_helpers import noop, small_plan, wait_for

REPO = Path(__file__).resolve().parent.parent


class SlowFor:
    """A job factory: noop steps lasting `seconds[step_id]`, instant for the others."""

    def __init__(self, seconds: dict[str, float]):
        self.seconds = seconds

    def __call__(self, step, root):
        return NoopStepJob(step, root, seconds=self.seconds.get(step.step_id, 0.0))


class EnvJob(NoopStepJob):
    """A noop step that prints to stdout and stores what its worker saw (pid, VLMSWEEP_WORKERS)."""

    def run(self):
        print(f"hello from {self.step.step_id}", flush=True)
        result = super().run()
        folder = step_dir(self.root, self.step.kind, self.step.step_id)
        (folder / "env.json").write_text(json.dumps(
            {"pid": os.getpid(), "workers": os.environ.get("VLMSWEEP_WORKERS")}))
        return result


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def _pid(job_id: str) -> int:
    return int(job_id.split(".")[0])


def test_a_killed_worker_fails_its_step_and_is_replaced(tmp_path):
    plan = small_plan(tmp_path)
    encoder = next(s for s in plan.steps if s.kind == "encoder")
    trunk = next(s for s in plan.steps if s.kind == "trunk")
    progress = step_dir(plan.root, encoder.kind, encoder.step_id) / "progress.json"
    killed: list[int] = []

    def kill_encoder_worker():
        wait_for(progress.exists, timeout_s=60, what="the encoder to start")
        record = next(r for r in read_jobs(plan.root) if r.step_id == encoder.step_id)
        killed.append(_pid(record.job_id))
        os.kill(killed[0], signal.SIGKILL)

    killer = threading.Thread(target=kill_encoder_worker)
    killer.start()
    result = LocalBackend().run(plan, select_steps(plan, False, 3), workers=2, progress=False,
                                job_factory=SlowFor({encoder.step_id: 30.0, trunk.step_id: 3.0}))
    killer.join()
    statuses = reconcile(plan)
    # The encoder failed; the trunk and its two evals (no encoder below them) still ran.
    assert statuses[encoder.step_id].state == "failed"
    assert "SIGKILL" in statuses[encoder.step_id].reason
    assert (result.failed, result.completed) == (1, 3)
    assert result.completed + result.failed + result.blocked == len(plan.steps)
    assert {s.state for s in statuses.values()} == {"done", "failed", "blocked"}
    failure = json.loads((plan.dir(encoder) / "failure.json").read_text())
    assert "SIGKILL" in failure["error"] and failure["reason"] == "crash"
    assert [f.step_id for f in read_failures(plan.root)] == [encoder.step_id]
    log = Path(statuses[encoder.step_id].log)
    assert "SIGKILL" in log.read_text() and str(log) in format_table(plan, statuses)
    # The trunk's two evals, ready together after the kill, ran on the survivor and a replacement.
    later = [_pid(r.job_id) for r in read_jobs(plan.root)][2:]
    assert len(later) == 2 and killed[0] not in later and len(set(later)) == 2


def test_an_exception_fails_the_step_but_the_worker_lives_on(tmp_path):
    plan = small_plan(tmp_path)
    trunk = next(s for s in plan.steps if s.kind == "trunk")
    result = LocalBackend().run(plan, select_steps(plan, False, 3), workers=1, progress=False,
                                job_factory=noop(0.0, fail_ids={trunk.step_id}))
    assert (result.completed, result.failed, result.blocked) == (1, 1, 10)
    records = read_jobs(plan.root)
    assert len({_pid(r.job_id) for r in records}) == 1  # one worker ran both steps
    status = reconcile(plan)[trunk.step_id]
    assert status.state == "failed" and "NoopFailure" in status.reason
    assert "Traceback" in Path(status.log).read_text()  # the step's stderr went to its own log


class Unpicklable(NoopStepJob):
    def __init__(self, step, root):
        super().__init__(step, root)
        self.callback = lambda: None  # a lambda cannot cross the pipe to a worker


def test_a_job_that_cannot_be_pickled_fails_with_a_reason(tmp_path):
    plan = small_plan(tmp_path)
    encoder = next(s for s in plan.steps if s.kind == "encoder")
    result = LocalBackend().run(plan, [encoder], workers=1, progress=False, job_factory=Unpicklable)
    assert (result.submitted, result.failed) == (1, 1)
    status = reconcile(plan)[encoder.step_id]
    assert status.state == "failed" and "could not be pickled" in status.reason


def test_workers_do_not_rerun_the_parents_main_script(tmp_path, monkeypatch):
    # Streamlit's AppTest (and other runners) leave a temporary script as __main__; `spawn` would
    # re-run it in every worker. The pool must start workers whatever __main__ is.
    script = tmp_path / "main_script.py"
    script.write_text("raise SystemExit('the parent main script ran in a worker')\n")
    fake_main = type(sys)("__main__")
    fake_main.__file__ = str(script)
    monkeypatch.setitem(sys.modules, "__main__", fake_main)
    plan = small_plan(tmp_path)
    encoder = next(s for s in plan.steps if s.kind == "encoder")
    result = LocalBackend().run(plan, [encoder], workers=1, progress=False, job_factory=noop(0.0))
    assert (result.submitted, result.completed, result.failed) == (1, 1, 0)
    assert sys.modules["__main__"] is fake_main  # restored after the start


def test_workers_are_told_the_worker_count_and_log_each_step_apart(tmp_path):
    plan = small_plan(tmp_path)
    result = LocalBackend().run(plan, select_steps(plan, False, 3), workers=2, progress=False,
                                job_factory=EnvJob)
    assert result.completed == 12
    seen = [json.loads((plan.dir(s) / "env.json").read_text()) for s in plan.steps]
    assert {e["workers"] for e in seen} == {"2"}
    assert len({e["pid"] for e in seen}) == 2  # persistent: 12 steps, two processes
    for record in read_jobs(plan.root):
        out = Path(record.log).with_suffix(".out").read_text()
        assert out.strip() == f"hello from {record.step_id}"
    assert not any(_alive(e["pid"]) for e in seen)  # the run ended its workers


STOPPABLE_RUN = """
import sys
from pathlib import Path
from sweep.launch import select_steps
from sweep.launch.local import LocalBackend
from tests.launch_helpers import noop, small_plan

if __name__ == "__main__":  # spawned workers re-import this file as __mp_main__
    plan = small_plan(Path(sys.argv[1]))
    LocalBackend().run(plan, select_steps(plan, False, 3), workers=2, progress=False,
                       job_factory=noop(30.0))
"""


def test_sigterm_checkpoints_running_steps_ends_workers_and_a_rerun_resumes(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(STOPPABLE_RUN)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    plan = small_plan(tmp_path)
    first = [s for s in plan.steps if not s.parents]  # encoder and trunk, one per worker
    ticked = [plan.dir(s) / "ckpt" / "noop.json" for s in first]
    wait_for(lambda: all(p.exists() for p in ticked), timeout_s=60, what="both steps to tick")
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0, output
    workers = {_pid(r.job_id) for r in read_jobs(plan.root)}
    assert len(workers) == 2 and not any(_alive(pid) for pid in workers), output
    statuses = reconcile(plan)
    for step in first:
        assert statuses[step.step_id].state == "interrupted"
        assert "stopped mid-step" in statuses[step.step_id].reason
    assert read_failures(plan.root) == []  # a requested stop is not a failure
    chosen = select_steps(plan, False, 3)
    assert len(chosen) == 12
    result = LocalBackend().run(plan, chosen, workers=2, progress=False, job_factory=noop(0.0))
    assert result.completed == 12
    for step in first:  # they resumed from the tick they saved at SIGTERM
        assert json.loads((plan.dir(step) / "result.json").read_text())["resumed_from_tick"] > 0


def test_a_killed_supervisor_leaves_no_orphan_workers(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(STOPPABLE_RUN)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    plan = small_plan(tmp_path)
    ticked = [plan.dir(s) / "ckpt" / "noop.json" for s in plan.steps if not s.parents]
    wait_for(lambda: all(p.exists() for p in ticked), timeout_s=60, what="both steps to tick")
    proc.kill()  # SIGKILL: no cleanup runs in the supervisor
    proc.wait(timeout=10)
    workers = {_pid(r.job_id) for r in read_jobs(plan.root)}
    assert len(workers) == 2
    wait_for(lambda: not any(_alive(pid) for pid in workers), timeout_s=30,
             what="the workers to follow their supervisor")
    statuses = reconcile(plan)
    assert all(s.state != "running" for s in statuses.values())  # its locks went with it
    for step in (s for s in plan.steps if not s.parents):  # nothing failed: a plain run resumes them
        assert statuses[step.step_id].state == "interrupted" and statuses[step.step_id].failures == 0


def test_sigterm_to_one_busy_worker_requeues_its_step_and_blames_no_other(tmp_path):
    plan = small_plan(tmp_path)
    first = [s for s in plan.steps if not s.parents]  # encoder and trunk: one worker runs both
    ticks = {s.step_id: plan.dir(s) / "ckpt" / "noop.json" for s in first}
    termed: list[str] = []

    def term_the_busy_worker():
        wait_for(lambda: any(p.exists() for p in ticks.values()), timeout_s=60, what="a step to tick")
        busy = next(sid for sid, p in ticks.items() if p.exists())
        record = next(r for r in read_jobs(plan.root) if r.step_id == busy)
        termed.append(busy)
        os.kill(_pid(record.job_id), signal.SIGTERM)

    killer = threading.Thread(target=term_the_busy_worker)
    killer.start()
    result = LocalBackend().run(plan, select_steps(plan, False, 3), workers=1, progress=False,
                                job_factory=SlowFor({s.step_id: 3.0 for s in first}))
    killer.join()
    # The stopped step was handed to a fresh worker and resumed; no step was blamed for the exit.
    assert (result.completed, result.failed, result.blocked) == (12, 0, 0)
    assert read_failures(plan.root) == []
    resumed = json.loads((plan.dir(plan.by_id[termed[0]]) / "result.json").read_text())
    assert resumed["resumed_from_tick"] > 0
    assert len({_pid(r.job_id) for r in read_jobs(plan.root)}) == 2  # the stopped worker took no more
