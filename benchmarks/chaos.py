"""Chaos: kill a process of a running study at a random moment of each phase, recover with a plain `run`.

Runs `studies/demo_smoke.toml` once uninterrupted (local backend, its two workers), which times its
phases (trunk, branch, fine-tune, eval: from the first start to the last end of the steps of that
kind), then N times (default 10) under fresh roots. Trial i draws its phase from a shuffled list
that holds every phase (those four and `ingest`) equally often, so a 10-kill run hits each twice,
and a moment inside that phase (it waits until a step of that kind runs, then up to 80% of the
phase's uninterrupted span more, then until a step of that kind runs; ingest: a moment of the whole
run); then a victim from the menu: for ingest, an `ingest` started at that moment and SIGKILLed
part-way through (a random share of the uninterrupted ingest's time); otherwise the runner with its
whole process group (SIGKILL), one busy worker (SIGKILL, or SIGTERM: the stop a scheduler sends),
preferring one that runs a step of the phase, or `diverge`: the runner killed as before in a copy
of the study with one more cell whose trunk diverges (a `170k` scale at LR 1e4), which must end
failed `diverged` with its descendants blocked and every other step done. Each is then recovered
with a plain `vlmsweep run` (no --retry-failed) and `vlmsweep ingest`, and counts when both exit as
expected (0; 1 with the diverging cell, its trunk the one failure) and the catalog's evals equal
the uninterrupted run's row for row, value for value (a diverged cell leaves no evals: it is not a
lost result). Last line:

    result: 10/10 recoveries completed with evals identical to the uninterrupted run
            (8 of the 10 kills hit a live process)

    .venv/bin/python benchmarks/chaos.py [--runs 10] [--seed 0] [--study studies/demo_smoke.toml] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb

from models import stepfiles as sf
from sweep.launch.journal import read_jobs
from sweep.launch.queue import local_job_state
from sweep.plan import plan_study
from sweep.spec import load_study
from sweep.status import reconcile

REPO = Path(__file__).resolve().parents[1]
PHASES = ("trunk", "branch", "finetune", "eval", "ingest")
VICTIMS = ("runner", "worker", "worker-sigterm", "diverge")  # for the training and eval phases
HOT_SCALE, HOT_LR = "170k", 1e4  # the diverging cell: its trunk's loss is NaN within a few steps


@dataclass(frozen=True, slots=True)
class Trial:
    phase: str
    victim: str
    killed: str  # what was killed, in words
    at_s: float
    recovered: bool
    identical: bool
    note: str = ""


def vlmsweep(*args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sweep.cli", *args], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **popen)


def finish(proc: subprocess.Popen, timeout: float = 3600) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def evals(root: Path) -> list[tuple]:
    with duckdb.connect(str(root / "results.duckdb"), read_only=True) as con:
        return con.execute("SELECT * FROM evals ORDER BY ALL").fetchall()


def hot_study(study: Path, folder: Path) -> Path:
    """A copy of `study` with one more scale on its axis whose trunk diverges (LR 1e4)."""
    text = study.read_text()
    scales = re.search(r"^scale\s*=\s*\[([^\]]*)\]", text, re.MULTILINE)
    if scales is None:
        sys.exit(f"chaos: {study} has no one-line `scale = [...]` to add the diverging cell to")
    text = (text[:scales.end(1)] + f', "{HOT_SCALE}"' + text[scales.end(1):]
            + f'\n[train.scale."{HOT_SCALE}"]\nlr = {HOT_LR}\n')
    path = folder / f"hot-{study.name}"
    path.write_text(text.replace(f'name = "{_study_name(study)}"', f'name = "{_study_name(study)}-hot"', 1))
    return path


def _study_name(study: Path) -> str:
    match = re.search(r'^name\s*=\s*"([^"]+)"', study.read_text(), re.MULTILINE)
    return match.group(1) if match else ""


def phase_windows(root: Path, began_at: float) -> dict[str, tuple[float, float]]:
    """kind -> (first start, last end) of its steps in seconds after `began_at` (an epoch time)."""
    spans: dict[str, list[float]] = {}
    for result in root.glob(f"{sf.STEPS_DIR}/*/*/{sf.RESULT}"):
        data = sf.read_json(result)
        start, end = (datetime.fromisoformat(data[k]).timestamp() - began_at
                      for k in ("started_at", "finished_at"))
        spans.setdefault(data["kind"], []).extend((start, end))
    return {kind: (max(0.0, min(v)), max(v)) for kind, v in spans.items()}


def outcome(study: Path, root: Path, hot: bool) -> str:
    """"" when the plan ended as it must: every step done, or (hot) the diverging trunk failed
    `diverged`, the steps under it blocked and every other step done; else what is wrong."""
    plan = plan_study(load_study(study), root=root)
    statuses = reconcile(plan)
    left = [s for s in statuses.values() if s.state != sf.DONE]
    if not hot:
        return "" if not left else f"{len(left)} steps not done"
    failed = [s for s in left if s.state == sf.FAILED]
    hot_ids = {s.step_id for s in plan.steps if s.meta.get("scale") == HOT_SCALE}
    if len(failed) != 1 or failed[0].kind != "trunk" or failed[0].cause != "diverged":
        return "the diverging trunk did not end failed diverged: " + "; ".join(
            f"{s.kind} {s.state} {s.cause} {s.reason[:80]}" for s in failed)
    wrong = [s for s in left if s.state != sf.FAILED and (s.state != sf.BLOCKED or s.step_id not in hot_ids)]
    return "" if not wrong else f"{wrong[0].kind} {wrong[0].step_id} {wrong[0].state}: {wrong[0].reason}"


def wait_gone(pgid: int, timeout: float = 120) -> None:
    """Until no process of the group is left: a recovery must not race a dying worker."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)


def busy_worker(root: Path, kind: str) -> tuple[int, str] | None:
    """(pid, "kind step_id") of a worker running a step now, one running a `kind` step if any."""
    running = [r for r in read_jobs(root) if r.backend == "local"
               and local_job_state(root, r.job_id).state == "RUNNING"]
    if not running:
        return None
    record = random.choice([r for r in running if r.kind == kind] or running)
    return int(record.job_id.split(".")[0]), f"{record.kind} {record.step_id}"


def running_kinds(root: Path) -> set[str]:
    """Kinds of the steps local workers are running now."""
    return {r.kind for r in read_jobs(root) if r.backend == "local"
            and local_job_state(root, r.job_id).state == "RUNNING"}


def wait_for_phase(phase: str, run: subprocess.Popen, root: Path, delay_s: float) -> bool:
    """Until a `phase` step runs, `delay_s` more seconds, and then until a `phase` step runs (the
    kill lands inside the phase); whether the run is still going."""
    while run.poll() is None and phase not in running_kinds(root):
        time.sleep(0.05)
    began = time.monotonic()
    while run.poll() is None and time.monotonic() - began < delay_s:
        time.sleep(0.05)
    while run.poll() is None and phase not in running_kinds(root):
        time.sleep(0.05)
    return run.poll() is None


def kill_at(victim: str, phase: str, run: subprocess.Popen, study: Path, root: Path, at_s: float,
            delay_s: float, ingest_s: float = 3.0) -> str:
    """Kill the victim `delay_s` into the phase (ingest: `at_s` into the run); what was killed."""
    if phase == "ingest":
        began = time.monotonic()
        while time.monotonic() - began < at_s and run.poll() is None:
            time.sleep(0.05)
    else:
        wait_for_phase(phase, run, root, delay_s)
    if run.poll() is not None:
        return "nothing (the run had ended)"
    during = ", ".join(sorted(running_kinds(root))) or "no step"
    if victim in ("runner", "diverge"):
        os.killpg(run.pid, signal.SIGKILL)
        return f"the runner and its workers (pgid {run.pid}) while running {during}"
    if victim.startswith("worker"):
        sig = signal.SIGTERM if victim == "worker-sigterm" else signal.SIGKILL
        while run.poll() is None:
            found = busy_worker(root, phase)
            if found:
                os.kill(found[0], sig)
                return f"worker {found[0]} running {found[1]} ({sig.name})"
            time.sleep(0.05)
        return "nothing (no worker was busy before the run ended)"
    ingest = vlmsweep("ingest", str(study), "--root", str(root))
    time.sleep(random.uniform(0.1, 0.9) * ingest_s)  # a moment of an uninterrupted ingest
    if ingest.poll() is not None:
        return f"nothing (ingest ended first, exit {ingest.returncode})"
    os.killpg(ingest.pid, signal.SIGKILL)
    ingest.wait()
    return f"ingest {ingest.pid} while running {during}"


def one_trial(phase: str, studies: tuple[Path, Path], root: Path, baseline: list[tuple],
              windows: dict[str, tuple[float, float]], run_s: float, ingest_s: float) -> Trial:
    victim = "ingest" if phase == "ingest" else random.choice(VICTIMS)
    lo, hi = windows.get(phase, (0.0, run_s))
    # ingest: a moment of the whole run; a training phase: a moment into its steps' span
    at_s = random.uniform(0.05 * run_s, 0.95 * run_s) if phase == "ingest" else random.uniform(0.0, 0.8 * (hi - lo))
    hot = victim == "diverge"
    study = studies[hot]
    run = vlmsweep("run", str(study), "--root", str(root), "--backend", "local")
    killed = kill_at(victim, phase, run, study, root, at_s, at_s, ingest_s)
    run.wait()
    wait_gone(run.pid)
    code, err = finish(vlmsweep("run", str(study), "--root", str(root), "--backend", "local"))
    if code != (1 if hot else 0):
        return Trial(phase, victim, killed, at_s, False, False, f"recovery run exit {code}: {err.strip()[-300:]}")
    wrong = outcome(study, root, hot)
    if wrong:
        return Trial(phase, victim, killed, at_s, False, False, wrong)
    code, err = finish(vlmsweep("ingest", str(study), "--root", str(root)))
    if code != 0:
        return Trial(phase, victim, killed, at_s, False, False, f"ingest exit {code}: {err.strip()[-300:]}")
    rows = evals(root)
    same = rows == baseline
    note = "" if same else f"{len(rows)} eval rows vs {len(baseline)}; first difference: " + next(
        (f"{a} != {b}" for a, b in zip(rows, baseline) if a != b), "(a row is missing)")
    return Trial(phase, victim, killed, at_s, True, same, note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--study", type=Path, default=REPO / "studies" / "demo_smoke.toml")
    parser.add_argument("--keep", type=Path, default=None, help="keep the roots under this folder")
    args = parser.parse_args()
    random.seed(args.seed)
    base = args.keep or Path(tempfile.mkdtemp(prefix="vlmsweep-chaos-"))
    study = args.study.resolve()
    try:
        base.mkdir(parents=True, exist_ok=True)
        studies = (study, hot_study(study, base))
        began, began_at = time.monotonic(), time.time()
        code, err = finish(vlmsweep("run", str(study), "--root", str(base / "clean"), "--backend", "local"))
        run_s = time.monotonic() - began
        began = time.monotonic()
        if code != 0 or finish(vlmsweep("ingest", str(study), "--root", str(base / "clean")))[0] != 0:
            sys.exit(f"chaos: the uninterrupted run failed (exit {code}): {err[-500:]}")
        ingest_s = time.monotonic() - began
        baseline = evals(base / "clean")
        windows = phase_windows(base / "clean", began_at)
        print(f"uninterrupted: {run_s:.0f} s, ingest {ingest_s:.1f} s, {len(baseline)} eval rows; phases (s): "
              + ", ".join(f"{k} {a:.0f}-{b:.0f}" for k, (a, b) in sorted(windows.items())), flush=True)
        phases = [PHASES[i % len(PHASES)] for i in range(args.runs)]
        random.shuffle(phases)
        good = hits = 0
        for i, phase in enumerate(phases):
            t = one_trial(phase, studies, base / f"run{i}", baseline, windows, run_s, ingest_s)
            good += t.recovered and t.identical
            hits += not t.killed.startswith("nothing")
            verdict = ("recovered, evals identical" if t.recovered and t.identical
                       else "recovered, evals DIFFER" if t.recovered else "NOT recovered")
            where = "into the run" if t.phase == "ingest" else "into the phase"
            print(f"{i + 1}/{args.runs}: {t.phase} phase, {t.victim}: killed {t.killed} {t.at_s:.1f} s {where}: "
                  f"{verdict}" + (f" ({t.note})" if t.note else ""), flush=True)
        print(f"result: {good}/{args.runs} recoveries completed with evals identical to the "
              f"uninterrupted run ({hits} of the {args.runs} kills hit a live process)")
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
