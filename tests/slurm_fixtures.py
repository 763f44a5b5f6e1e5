"""Fixtures for tests marked `slurm`: the local dev cluster (scripts/slurm-dev-cluster up).

Tests skip with the reason when no cluster answers, except under VLMSWEEP_REQUIRE_SLURM=1 (set by
.ci/run after bringing the cluster up), where a missing cluster fails them instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

DEFAULT_CONF = Path(os.environ.get("SLURM_BASE", "/tmp/vlmsweep-slurm")) / "etc" / "slurm.conf"


def slurm_problem(conf: Path) -> str | None:
    """Why the cluster cannot be used, or None when `scontrol ping` says the controller is up."""
    if shutil.which("scontrol") is None:
        return "no SLURM clients (scontrol) on PATH"
    if not conf.exists():
        return f"no {conf}"
    env = dict(os.environ, SLURM_CONF=str(conf))
    try:
        proc = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, env=env,
                              timeout=20)
    except subprocess.TimeoutExpired:
        return "`scontrol ping` timed out"
    if proc.returncode != 0 or "UP" not in proc.stdout:
        return f"`scontrol ping`: {(proc.stdout + proc.stderr).strip()}"
    return None


@pytest.fixture(scope="module")
def slurm_cluster():
    """SLURM_CONF of a running cluster, exported for the module's tests (and their jobs)."""
    conf = Path(os.environ.get("SLURM_CONF") or DEFAULT_CONF)
    problem = slurm_problem(conf)
    if problem:
        message = f"SLURM dev cluster not available ({problem}); run `scripts/slurm-dev-cluster up`"
        if os.environ.get("VLMSWEEP_REQUIRE_SLURM") == "1":
            pytest.fail(message + " (VLMSWEEP_REQUIRE_SLURM=1)")
        pytest.skip(message)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(conf))
        yield conf
