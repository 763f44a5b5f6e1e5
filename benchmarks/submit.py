"""Benchmark: plan and submit studies/paper.toml to the local SLURM cluster with no-op steps.

Measures the wall time of planning and of submission, and the number of sbatch calls, against
the target of one sbatch call per (DAG level, trunk family, resources) group and submission under
10 s. The submitted no-op jobs are cancelled at the end. Needs `scripts/slurm-dev-cluster up`
(SLURM_CONF from the environment or the script's default). The last line starts with `result:`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sweep.launch import get_backend, select_steps  # noqa: E402
from sweep.launch.noop import NoopStepJob  # noqa: E402
from sweep.launch.slurm import group_steps  # noqa: E402
from sweep.plan import plan_study  # noqa: E402
from sweep.spec import load_study  # noqa: E402


def main() -> int:
    os.environ.setdefault("SLURM_CONF", "/tmp/vlmsweep-slurm/etc/slurm.conf")
    if subprocess.run(["scontrol", "ping"], capture_output=True).returncode != 0:
        print("result: skipped (no SLURM cluster; run scripts/slurm-dev-cluster up)")
        return 1
    root = Path(tempfile.mkdtemp(prefix="vlmsweep-submit-bench-"))
    try:
        t0 = time.perf_counter()
        study = load_study(REPO / "studies" / "paper.toml")
        # The dev cluster has one CPU partition and no GPUs: submit with resources it accepts
        # (backend settings never change a step id, so the plan is the paper's).
        study = replace(study, backend=replace(study.backend, slurm_layers=(
            ("", "", (("cpus", 1), ("mem_gb", 1))),)))
        plan = plan_study(study, root=root)
        steps = select_steps(plan, retry_failed=False, max_failures=3)
        t_plan = time.perf_counter() - t0
        t1 = time.perf_counter()
        result = get_backend("slurm").run(plan, steps, job_factory=NoopStepJob)
        t_submit = time.perf_counter() - t1
        arrays = sorted({j.split("_")[0] for j in result.job_ids})
        subprocess.run(["scancel", *arrays], check=False)
        levels = len(plan.levels())
        groups = len(group_steps(plan, steps))  # (level, trunk family, resources)
        print(f"steps {len(steps)}, DAG levels {levels}, level × trunk × resource groups {groups}, "
              f"sbatch calls {result.sbatch_calls} (arrays {len(arrays)})")
        print(f"plan + select {t_plan:.2f} s, submit {t_submit:.2f} s "
              f"({1000 * t_submit / max(len(steps), 1):.1f} ms per step)")
        ok = result.sbatch_calls == groups and t_submit < 10.0
        print(f"result: submit {len(steps)} steps in {t_submit:.2f} s with {result.sbatch_calls} "
              f"sbatch calls for {groups} level × trunk groups over {levels} levels (target: one "
              f"call per group, < 10 s): {'PASS' if ok else 'FAIL'}")
        return 0 if ok else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
