"""`scripts/install` (the README's first command) on a machine with no browser and no root: it says
what it skipped and how to get PNG/SVG/PDF figures, and still finishes (exit 0)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

INSTALL = Path(__file__).resolve().parents[1] / "scripts" / "install"


def test_install_without_root_or_browser_says_what_it_skipped(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"  # only the tools the script needs: no chromium, `id` says 1000
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "touch", "rm"):
        (bin_dir / tool).symlink_to(subprocess.check_output(["bash", "-c", f"command -v {tool}"], text=True).strip())
    (bin_dir / "id").write_text("#!/bin/bash\necho 1000\n")
    (bin_dir / "apt-get").write_text(f"#!/bin/bash\ntouch {tmp_path / 'apt-get-ran'}\nexit 1\n")
    for fake in ("id", "apt-get"):
        (bin_dir / fake).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{Path(sys.executable).parent}", "PYTHON": sys.executable}
    run = subprocess.run(["bash", str(INSTALL)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "install: ready" in run.stdout and not (tmp_path / "apt-get-ran").exists()
    assert "skipped Chromium (not root)" in run.stderr and "plotly_get_chrome" in run.stderr, run.stderr
