"""The inline and local backends: DAG order, failures blocking dependents, reruns, progress."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest

from sweep.launch import get_backend, select_steps
from sweep.launch.cli import run_run, run_status
from sweep.launch.journal import read_jobs
from sweep.launch.progress import ProgressLine, estimate_eta
from sweep.status import reconcile, summary
from tests.launch_helpers import noop, small_plan

REAL_STUDY = """
[study]
name = "real"
[axes]
scale = ["debug"]
intro_fraction = [0.5]
image_ratio = [0.1]
[train]
trunk_tokens_per_param = 0.05
image_tokens_per_param = 0.05
[encoder]
samples = 64
[finetune]
samples = 16
[eval]
n_per_task = 4
"""


def _result(plan, step):
    return json.loads((plan.dir(step) / "result.json").read_text())


def test_inline_failure_blocks_dependents_and_retry_resumes(tmp_path):
    plan = small_plan(tmp_path)
    trunk = next(s for s in plan.steps if s.kind == "trunk")
    backend = get_backend("inline")
    result = backend.run(plan, select_steps(plan, False, 3), progress=False,
                         job_factory=noop(0.0, fail_ids={trunk.step_id}))
    statuses = reconcile(plan)
    assert (result.completed, result.failed, result.blocked) == (1, 1, 10)
    assert statuses[trunk.step_id].state == "failed"
    assert "NoopFailure" in statuses[trunk.step_id].reason
    assert summary(statuses) | {} == {"done": 1, "running": 0, "pending": 0, "failed": 1,
                                      "blocked": 10, "not submitted": 0, "interrupted": 0,
                                      "corrupt": 0}
    assert select_steps(plan, False, 3) == []  # nothing runnable without --retry-failed
    retry = select_steps(plan, True, 3)
    assert len(retry) == 11
    result = backend.run(plan, retry, progress=False, job_factory=noop())
    assert (result.completed, result.failed) == (11, 0)
    assert select_steps(plan, True, 3) == []


def test_local_workers_respect_the_dag_and_show_progress(tmp_path):
    plan = small_plan(tmp_path)
    out = io.StringIO()
    steps = select_steps(plan, False, 3)
    import sweep.launch.local as local
    line = ProgressLine(root=plan.root, total=len(steps), workers=2, stream=out, interval_s=0.5)
    executor = local.WorkerPool(plan.root, 2)
    run = local._LocalRun(plan, steps, executor, noop(1.2), 2, line)
    try:
        run.loop()
    finally:
        executor.close()
    result = run.result()
    assert (result.completed, result.failed, result.submitted) == (12, 0, 12)
    for step in plan.steps:
        for _, pid in step.parents:
            assert _result(plan, plan.by_id[pid])["finished_at"] < _result(plan, step)["finished_at"]
    records = read_jobs(plan.root)
    assert {r.backend for r in records} == {"local"} and len(records) == 12
    assert all(Path(r.log).parent.exists() for r in records)
    assert len({r.job_id.split(".")[0] for r in records}) == 2  # two persistent workers ran all twelve
    text = out.getvalue()
    assert "[12/12 done]" in text and "tok/s" in text and "ETA" in text
    backend = local.LocalBackend()
    assert backend.run(plan, select_steps(plan, False, 3), progress=False).submitted == 0


def test_eta_prices_waiting_steps_by_their_flops_and_kind(tmp_path):
    """A waiting step costs its planned FLOPs at the seconds per FLOP of finished steps of its
    kind (else of the LM steps); an eval (no FLOPs) the mean of finished evals, not of all steps."""
    plan = small_plan(tmp_path)
    by_kind = {k: [s for s in plan.steps if s.kind == k] for k in ("trunk", "branch", "finetune", "eval")}
    trunk, branch, finetune, evals = (by_kind[k][0] for k in ("trunk", "branch", "finetune", "eval"))
    flops = lambda s: plan.cost(s).flops
    assert all(flops(s) for s in (trunk, branch, finetune)) and not flops(evals)
    finished = [(trunk, 100.0), (evals, 2.0)]
    per_flop = 100.0 / flops(trunk)
    running = [(branch, {"tokens": 100, "total_tokens": 500, "tokens_per_s": 10, "updated_at": 0.0})]
    eta = estimate_eta(running, [finetune, by_kind["eval"][1]], finished, workers=2)
    assert eta == pytest.approx(40 + (flops(finetune) * per_flop + 2.0) / 2)
    # A running step without progress yet is priced like a waiting one.
    assert estimate_eta([(branch, None)], [], finished, workers=1) == pytest.approx(flops(branch) * per_flop)
    finished.append((branch, 50.0))  # its own kind's rate now prices the branches
    other = by_kind["branch"][1]
    assert estimate_eta([], [other], finished, workers=1) == pytest.approx(50.0 * flops(other) / flops(branch))
    assert estimate_eta([], [evals], [], workers=1) == 0.0  # evals are free until one is timed
    assert estimate_eta([], [trunk], [], workers=1) is None  # nothing finished: no price yet
    encoder = next(s for s in plan.steps if s.kind == "encoder")  # another model: not the LM's rate
    assert estimate_eta([], [trunk], [(encoder, 10.0)], workers=1) is None


def test_cli_run_trains_real_steps_inline_then_submits_nothing(tmp_path, capsys):
    study = tmp_path / "real.toml"
    study.write_text(REAL_STUDY)
    args = argparse.Namespace(study=study, root=tmp_path / "root", backend="inline", workers=None,
                              retry_failed=False, dry_run=False, json=True, watch=False)
    assert run_run(args) == 0
    assert "ran 7 steps: 7 done, 0 failed" in capsys.readouterr().out
    assert run_run(args) == 0
    assert "to run: 0 steps" in capsys.readouterr().out
    assert run_status(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"]["done"] == 7 and len(report["steps"]) == 7


def test_an_interrupted_run_prints_the_command_that_continues_it(tmp_path, capsys, monkeypatch):
    from sweep.cli import main
    from sweep.launch.worker import StepJob

    def ctrl_c(self):
        raise KeyboardInterrupt  # as Ctrl-C inside a step of the inline backend
    monkeypatch.setattr(StepJob, "run", ctrl_c)
    study = tmp_path / "real.toml"
    study.write_text(REAL_STUDY)
    root = tmp_path / "the root"
    assert main(["run", str(study), "--root", str(root), "--backend", "inline"]) == 130
    err = capsys.readouterr().err
    assert f"continue with `vlmsweep run {study} --root '{root}'`" in err, err
