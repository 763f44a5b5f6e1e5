"""The documentation: the site under docs/ builds with `mkdocs build --strict` (a broken link, a
missing page or a page left out of the navigation fails), the README stays a front page (at most
150 lines) whose links point at files that exist, and no page speaks of the project's history."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="mkdocs-material is a test extra (scripts/install --test)")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert (tmp_path / "site" / "index.html").exists()


def test_the_readme_is_a_front_page_whose_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    assert readme.startswith("# vlmsweep\n\n```bash\n./scripts/install && .venv/bin/vlmsweep demo")
    for target in re.findall(r"\]\(([^)#\s]+)", readme):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


def test_no_page_speaks_of_how_the_project_was_developed() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        text = page.read_text()
        hits = re.findall(r"\b(?:issue|round|session) \d+\b", text, flags=re.I)
        assert not hits, f"{page.name} mentions {hits}"
