"""Chaos: kill a random process of a running study at a random moment, recover with a plain `run`.

Runs `studies/demo_smoke.toml` once uninterrupted (local backend, its two workers), then N times
(default 10) under fresh roots, each time killing one process with SIGKILL at a random moment of
the run: the runner with its whole process group, one busy worker, or an `ingest` started at that
moment. Each is then recovered with a plain `vlmsweep run` (no --retry-failed) and `vlmsweep
ingest`, and counts when both exit 0 and the catalog's evals equal the uninterrupted run's row for
row, value for value. Last line:

    result: 10/10 recoveries completed with evals identical to the uninterrupted run
            (8 of the 10 kills hit a live process)

    .venv/bin/python benchmarks/chaos.py [--runs 10] [--seed 0] [--study studies/demo_smoke.toml] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb

from sweep.launch.journal import read_jobs
from sweep.launch.queue import local_job_state

REPO = Path(__file__).resolve().parents[1]
VICTIMS = ("runner", "worker", "ingest")


@dataclass(frozen=True, slots=True)
class Trial:
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


def wait_gone(pgid: int, timeout: float = 120) -> None:
    """Until no process of the group is left: a recovery must not race a dying worker."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)


def busy_worker(root: Path) -> tuple[int, str] | None:
    """(pid, "kind step_id") of a worker running a step now, if any."""
    running = [r for r in read_jobs(root) if r.backend == "local"
               and local_job_state(root, r.job_id).state == "RUNNING"]
    if not running:
        return None
    record = random.choice(running)
    return int(record.job_id.split(".")[0]), f"{record.kind} {record.step_id}"


def kill_at(victim: str, run: subprocess.Popen, study: Path, root: Path, at_s: float) -> str:
    """Wait `at_s` seconds into the run, kill the victim; what was killed, in words."""
    began = time.monotonic()
    while time.monotonic() - began < at_s and run.poll() is None:
        time.sleep(0.05)
    if run.poll() is not None:
        return "nothing (the run had ended)"
    if victim == "runner":
        os.killpg(run.pid, signal.SIGKILL)
        return f"the runner and its workers (pgid {run.pid})"
    if victim == "worker":
        while run.poll() is None:
            found = busy_worker(root)
            if found:
                os.kill(found[0], signal.SIGKILL)
                return f"worker {found[0]} running {found[1]}"
            time.sleep(0.05)
        return "nothing (no worker was busy before the run ended)"
    ingest = vlmsweep("ingest", str(study), "--root", str(root))
    time.sleep(random.uniform(0.2, 3.0))
    if ingest.poll() is not None:
        return f"nothing (ingest ended first, exit {ingest.returncode})"
    os.killpg(ingest.pid, signal.SIGKILL)
    ingest.wait()
    return f"ingest {ingest.pid}"


def one_trial(study: Path, root: Path, baseline: list[tuple], run_s: float) -> Trial:
    victim = random.choice(VICTIMS)
    at_s = random.uniform(0.05, 0.95) * run_s
    run = vlmsweep("run", str(study), "--root", str(root), "--backend", "local")
    killed = kill_at(victim, run, study, root, at_s)
    run.wait()
    wait_gone(run.pid)
    code, err = finish(vlmsweep("run", str(study), "--root", str(root), "--backend", "local"))
    if code != 0:
        return Trial(victim, killed, at_s, False, False, f"recovery run exit {code}: {err.strip()[-300:]}")
    code, err = finish(vlmsweep("ingest", str(study), "--root", str(root)))
    if code != 0:
        return Trial(victim, killed, at_s, False, False, f"ingest exit {code}: {err.strip()[-300:]}")
    rows = evals(root)
    same = rows == baseline
    note = "" if same else f"{len(rows)} eval rows vs {len(baseline)}; first difference: " + next(
        (f"{a} != {b}" for a, b in zip(rows, baseline) if a != b), "(a row is missing)")
    return Trial(victim, killed, at_s, True, same, note)


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
        began = time.monotonic()
        code, err = finish(vlmsweep("run", str(study), "--root", str(base / "clean"), "--backend", "local"))
        run_s = time.monotonic() - began
        if code != 0 or finish(vlmsweep("ingest", str(study), "--root", str(base / "clean")))[0] != 0:
            sys.exit(f"chaos: the uninterrupted run failed (exit {code}): {err[-500:]}")
        baseline = evals(base / "clean")
        print(f"uninterrupted: {run_s:.0f} s, {len(baseline)} eval rows", flush=True)
        good = hits = 0
        for i in range(args.runs):
            t = one_trial(study, base / f"run{i}", baseline, run_s)
            good += t.recovered and t.identical
            hits += not t.killed.startswith("nothing")
            verdict = ("recovered, evals identical" if t.recovered and t.identical
                       else "recovered, evals DIFFER" if t.recovered else "NOT recovered")
            print(f"{i + 1}/{args.runs}: killed {t.killed} at {t.at_s:.1f} s: {verdict}"
                  + (f" ({t.note})" if t.note else ""), flush=True)
        print(f"result: {good}/{args.runs} recoveries completed with evals identical to the "
              f"uninterrupted run ({hits} of the {args.runs} kills hit a live process)")
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
