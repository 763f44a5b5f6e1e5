"""Local backend: persistent worker pool vs one fresh process per step, same study, same run.

Trains a 12-step debug study (real steps, real torch) twice under fresh roots with 2 workers:
once with one fresh process per step through submitit's LocalExecutor (the baseline, kept here
only: every step pays the torch and Lightning import; the local backend used to offer it) and
once through the local backend's worker pool. Last line: `result:` with the ratio.

    .venv/bin/python benchmarks/local_pool.py [--workers 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import submitit

from sweep.launch import select_steps
from sweep.launch.local import LocalBackend, _LocalRun
from sweep.launch.slurm import source_setup
from sweep.launch.worker import StepJob
from sweep.plan import plan_study
from sweep.spec import load_study

STUDY = """
[study]
name = "tiny"
[axes]
scale = ["debug"]
intro_fraction = [0.5, 1.0]
image_ratio = [0.2]
[train]
trunk_tokens_per_param = 1.0
image_tokens_per_param = 0.5
[encoder]
samples = 512
[finetune]
samples = 64
[eval]
n_per_task = 10
"""


class PerProcess:
    """The baseline executor: one fresh `python` per step through submitit's LocalExecutor."""

    def __init__(self, root: Path, workers: int):
        self.executor = submitit.LocalExecutor(folder=root / "logs" / "%j")
        self.executor.update_parameters(timeout_min=7 * 24 * 60, setup=source_setup() + [
            f"export VLMSWEEP_WORKERS={max(1, workers)}"])

    def submit(self, job):
        return self.executor.submit(job)

    def wait(self, timeout: float) -> None:
        time.sleep(timeout)

    def stop(self) -> None:
        pass

    def close(self) -> None:
        pass


def _per_process(plan, steps, workers: int):
    run = _LocalRun(plan, steps, PerProcess(plan.root, workers), StepJob, workers, None)
    run.loop()
    return run.result()


def run_once(folder: Path, *, pool: bool, workers: int) -> tuple[float, int, int]:
    """Wall seconds, steps done and steps failed for one full run under a fresh root."""
    folder.mkdir(parents=True)
    (folder / "tiny.toml").write_text(STUDY)
    plan = plan_study(load_study(folder / "tiny.toml"), root=folder / "root")
    steps = select_steps(plan, False, 3)
    began = time.perf_counter()
    if pool:
        result = LocalBackend().run(plan, steps, workers=workers, progress=False)
    else:
        result = _per_process(plan, steps, workers)
    return time.perf_counter() - began, result.completed, result.failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", type=Path, default=None, help="keep the roots under this folder")
    args = parser.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="vlmsweep-pool-bench-"))
    try:
        times = {}
        for name, pool in (("per-process", False), ("pool", True)):
            seconds, done, failed = run_once(base / name, pool=pool, workers=args.workers)
            if failed or done != 12:
                raise SystemExit(f"{name}: {done} done, {failed} failed (logs under {base / name})")
            times[name] = seconds
            print(f"{name:<12} {done} steps in {seconds:6.1f} s  ({seconds / done:.1f} s/step)",
                  flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    ratio = times["per-process"] / times["pool"]
    print(f"result: 12 debug steps, {args.workers} workers: per-process {times['per-process']:.1f} s,"
          f" pool {times['pool']:.1f} s, speedup x{ratio:.2f} (wall-time ratio pool/per-process"
          f" = {times['pool'] / times['per-process']:.2f})")


if __name__ == "__main__":  # the pool's spawned workers import this file as __mp_main__
    main()
