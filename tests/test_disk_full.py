"""A results root on a full or read-only disk (a real tmpfs, mounted small): the step that cannot
write fails with reason `disk` and one line naming the file, the run exits 2, no temp file is left
behind, and `status` says failed, not interrupted. A root that cannot be written at all is one line
naming the path, exit 2. Mounting needs root; without it these tests skip and say so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from models import stepfiles as sf
from sweep.plan import plan_study
from sweep.spec import load_study
from sweep.status import reconcile
from tests.launch_helpers import QUICK_TRUNK_FIRST

REPO = Path(__file__).resolve().parent.parent

STUDY = """
[study]
name = "disk"
[axes]
scale = ["debug"]
intro_fraction = [0.5, 1.0]
image_ratio = [0.2]
[eval]
n_per_task = 4
""" + QUICK_TRUNK_FIRST


@pytest.fixture
def small_disk(tmp_path):
    """A 700 kB tmpfs: the debug trunk's first fraction checkpoint (~590 kB) fits, its second not."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=700k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): run as root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _run(study: Path, root: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweep.cli", "run", str(study), "--root", str(root),
                           *extra], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(REPO), "VLMSWEEP_THREADS": "1"})


def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if p.name.endswith(".tmp")]


def test_a_full_disk_fails_the_step_with_its_reason_and_leaves_no_temp_files(tmp_path, small_disk):
    study = tmp_path / "disk.toml"
    study.write_text(STUDY)
    root = small_disk / "root"
    out = _run(study, root, "--backend", "local", "--workers", "1")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    plan = plan_study(load_study(study), root=root)
    trunk = next(s for s in plan.steps if s.kind == "trunk")
    failed = [line for line in out.stderr.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 1 and f"failed: trunk {trunk.step_id}: StorageError: {root}" in failed[0]
    assert "cannot write (No space left on device)" in failed[0]
    assert "not complete" in out.stdout
    assert _temp_files(root) == []
    status = reconcile(plan)[trunk.step_id]
    assert (status.state, status.cause) == ("failed", "disk"), status
    assert "Traceback" not in Path(status.log).read_text()  # the worker's log: one line too
    assert sf.read_failure(plan.dir(trunk)).reason == "disk"


def test_a_read_only_root_is_one_line_naming_it(tmp_path, small_disk):
    study = tmp_path / "disk.toml"
    study.write_text(STUDY)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    out = _run(study, small_disk / "root", "--backend", "inline")
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines == [f"vlmsweep run: error: {small_disk / 'root'}: cannot write (Read-only file system)"]
