"""A machine with no Chrome/Chromium, as `vlmsweep report` meets it: kaleido finds none, and neither does
`find_browser` (the report on a fresh real run in that environment: tests/test_analysis_report_shapes.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.export import find_browser

VLMSWEEP = Path(sys.executable).parent / "vlmsweep"


def no_browser_env(tmp_path: Path) -> dict[str, str]:
    """PATH holds only the venv's scripts; kaleido's lookup ($BROWSER_PATH, checked before the PATH
    and the usual install paths) points at a file that does not exist; HOME has no downloaded one."""
    env = {k: v for k, v in os.environ.items() if k not in ("BROWSER_PATH",)}
    env |= {"PATH": str(VLMSWEEP.parent), "BROWSER_PATH": str(tmp_path / "no-chrome"),
            "HOME": str(tmp_path / "home")}
    return env


def test_no_browser_env_really_has_no_browser(tmp_path: Path, monkeypatch) -> None:
    env = no_browser_env(tmp_path)
    probe = ("import kaleido, plotly.graph_objects as go\n"
             "kaleido.write_fig_from_object_sync([{'fig': go.Figure(), 'path': 'x.png', 'opts': {}}])")
    run = subprocess.run([sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode != 0 and "ChromeNotFoundError" in run.stderr, run.stderr[-2000:]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert find_browser() is None


@pytest.mark.skipif(find_browser() is None, reason="no Chrome/Chromium here (apt-get install chromium)")
def test_find_browser_sees_the_installed_one() -> None:
    assert Path(find_browser()).is_file()
