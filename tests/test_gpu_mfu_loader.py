"""`benchmarks/gpu_mfu.py --loader files`, the check a GPU session runs to see whether the data
workers keep the card fed, dry-run on the CPU: it must train both stages from memory and from
files through the data workers and print both ratios, so that no lent GPU time is spent finding
that it cannot."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(300)
def test_gpu_mfu_loader_files_dry_run_trains_both_stages_from_memory_and_from_files():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_mfu.py"), "--dry-run",
                          "--loader", "files", "--workers", "1"],
                         capture_output=True, text=True, timeout=280, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    for stage in ("trunk", "image20"):
        for feed in ("from memory", "from files, 1 workers"):
            assert any(re.match(rf"debug {stage} micro-batch 4 eager, {feed}: [\d,]+ tokens/s, MFU", line)
                       for line in lines), (stage, feed, out.stdout)
    result = lines[-1]
    assert result.startswith("result: loader from files / from memory: "), result
    ratios = dict(re.findall(r"debug (trunk|image20) (\d+\.\d+)x", result))
    assert set(ratios) == {"trunk", "image20"}, result
    assert all(float(r) > 0 for r in ratios.values())
