"""The linter is part of the test command: `ruff check` over the whole tree, with the rule set
stated in pyproject.toml ([tool.ruff.lint]), must find nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise",
                          str(ROOT)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, f"ruff check found problems:\n{out.stdout}{out.stderr}"
