"""The honest clock: a timed slice prices every step of a plan, the DAG is scheduled over the workers
longest chain first (the local backend's order too), the ETA starts from it and corrects itself by
kind; and the demo's catalog is refreshed while steps finish."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from analysis.store import connect
from analysis.synthetic import SyntheticSpec, write_synthetic_study
from sweep.demo import LiveIngest
from sweep.estimate import calibration_slice, critical_paths, expected_seconds, measured_rates, project
from sweep.launch import get_backend
from sweep.launch.journal import read_jobs
from sweep.launch.local import WorkerPool, _LocalRun, start_order
from sweep.launch.progress import estimate_eta
from tests.launch_helpers import noop, small_plan, wait_for

SECONDS = {"encoder": 1.0, "trunk": 10.0, "branch": 5.0, "eval": 1.0}


def durations(plan, long_finetune: str) -> dict[str, float]:
    """Seconds per step: one fine-tune 20 s (the long chain), the other 2 s."""
    return {s.step_id: (20.0 if s.step_id == long_finetune else 2.0) if s.kind == "finetune" else SECONDS[s.kind]
            for s in plan.steps}


def test_project_schedules_the_dag_with_the_longest_chain_first(tmp_path: Path) -> None:
    plan = small_plan(tmp_path)
    steps = list(plan.steps)
    finetunes = [s for s in steps if s.kind == "finetune"]
    seconds = durations(plan, finetunes[1].step_id)
    chain = critical_paths(steps, lambda s: seconds[s.step_id])
    trunk = next(s for s in steps if s.kind == "trunk")
    assert chain[trunk.step_id] == 10 + 5 + 20 + 1  # trunk → branch → long fine-tune → its eval
    assert project(steps, seconds, workers=2) == pytest.approx(36.0)  # the rest fits beside that chain
    assert project(steps, seconds, workers=1) == pytest.approx(sum(seconds.values()))
    # a step already running holds a worker until it ends; what is done is not in `steps`
    rest = [s for s in steps if s.kind not in ("encoder", "trunk")]
    assert project(rest, seconds, workers=2, busy={trunk.step_id: 4.0}) == pytest.approx(4.0 + 26.0)


def test_eta_is_known_from_the_start_and_corrects_itself_by_kind(tmp_path: Path) -> None:
    plan = small_plan(tmp_path)
    steps = list(plan.steps)
    seconds = durations(plan, next(s for s in steps if s.kind == "finetune").step_id)
    assert estimate_eta([], steps, [], workers=2) is None  # without expectations: nothing to price yet
    assert estimate_eta([], steps, [], workers=2, expected=seconds) == pytest.approx(project(steps, seconds, 2))
    encoder, trunk = (next(s for s in steps if s.kind == k) for k in ("encoder", "trunk"))
    branches = [s for s in steps if s.kind == "branch"]
    # the trunk took twice its expected time: kinds not yet timed are priced by all finished steps
    finished = [(encoder, 1.0), (trunk, 20.0)]
    waiting = [s for s in steps if s not in (encoder, trunk)]
    eta = estimate_eta([], waiting, finished, workers=2, expected=seconds)
    scaled = {sid: t * 21.0 / 11.0 for sid, t in seconds.items()}  # Σ actual / Σ expected of all finished
    assert eta == pytest.approx(project(waiting, scaled, 2))
    finished.append((branches[0], 5.0))  # a branch on time: branches are priced as expected again
    eta = estimate_eta([], waiting[1:], finished, workers=2, expected=seconds)
    priced = {sid: seconds[sid] * (1.0 if plan.by_id[sid].kind == "branch" else 26.0 / 16.0) for sid in seconds}
    assert eta == pytest.approx(project(waiting[1:], priced, 2))


def test_the_local_backend_starts_the_longest_chain_first(tmp_path: Path) -> None:
    plan = small_plan(tmp_path)
    steps = list(plan.steps)
    finetunes = [s for s in steps if s.kind == "finetune"]
    long_branch = finetunes[1].parent("branch")
    seconds = durations(plan, finetunes[1].step_id)
    order = start_order(steps, seconds)
    assert order[long_branch] > order[finetunes[0].parent("branch")]
    executor = WorkerPool(plan.root, 1)
    try:
        run = _LocalRun(plan, steps, executor, noop(0.0), 1, None, seconds)
        run.loop()
    finally:
        executor.close()
    started = [r.step_id for r in read_jobs(plan.root)]
    branches = [sid for sid in started if plan.by_id[sid].kind == "branch"]
    assert branches[0] == long_branch  # listed second in the plan, started first
    assert started.index(finetunes[1].step_id) < started.index(finetunes[0].step_id)


@pytest.mark.slow
def test_a_timed_slice_of_real_steps_prices_every_step_of_the_plan(tmp_path: Path) -> None:
    plan = small_plan(tmp_path)
    chain = calibration_slice(list(plan.steps), optimizer_steps=4, eval_items=2)
    kinds = [s.kind for s in chain]
    assert kinds.count("trunk") == kinds.count("branch") == kinds.count("finetune") == 1 and "encoder" in kinds
    assert not {s.step_id for s in chain} & {s.step_id for s in plan.steps}  # other ids: never the study's
    root = tmp_path / "timing"
    timing = dataclasses.replace(plan, root=root, steps=tuple(chain))
    assert get_backend("local").run(timing, chain, workers=2, progress=False).completed == len(chain)
    rates = measured_rates(root, chain)
    assert {k[0] for k in rates} == {"encoder", "trunk", "branch", "finetune", "eval"}
    assert all(r.per_unit_s > 0 and r.setup_s >= 0 for r in rates.values())
    expected = expected_seconds(plan.steps, rates)
    assert set(expected) == {s.step_id for s in plan.steps} and all(t > 0 for t in expected.values())
    trunk = next(s for s in plan.steps if s.kind == "trunk")
    short = next(s for s in chain if s.kind == "trunk")  # the full trunk is priced longer than its slice
    assert expected[trunk.step_id] > expected_seconds([short], rates)[short.step_id]


def test_live_ingest_refreshes_the_catalog_as_steps_finish(tmp_path: Path) -> None:
    root = tmp_path / "results"
    write_synthetic_study(root, SyntheticSpec(scales=("79m",), intro_fractions=(0.8, 1.0), image_ratios=(0.2,),
                                              seeds=(0,), finetune_epochs=(1,), metric_rows=4))
    with LiveIngest(root, every_s=0.2):
        wait_for(lambda: (root / "results.duckdb").exists(), timeout_s=60, what="the first ingest")
        time.sleep(0.5)
    with connect(root) as con:
        assert con.execute("SELECT count(*) FROM steps WHERE status = 'done'").fetchone()[0] > 0
