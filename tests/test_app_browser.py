"""End to end: `vlmsweep app` serves a synthetic results set and a real headless Chromium visits
every page, waits for plotly to draw, saves a screenshot and fails on any Streamlit exception or
on a developer's "Deploy" button (the app is a local results browser: viewer toolbar)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from analysis.store import ingest
from analysis.synthetic import SyntheticSpec, write_synthetic_study

pytestmark = pytest.mark.browser
playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
# (URL path, a text on the page, whether it draws a plotly figure); the default page lives at "/".
PAGES = (("", "Grid coverage", True), ("curves", "Training curves", True), ("scores", "Scores", True),
         ("tradeoff", "VL vs text trade-off", True), ("scaling", "Scaling laws", True),
         ("runs", "Runs", False), ("export", "Export", True))
SPEC = SyntheticSpec(scales=("79m", "411m"), intro_fractions=(0.0, 0.4, 0.8, 1.0), image_ratios=(0.1, 0.5),
                     finetune_epochs=(1,), seeds=(0, 1), metric_rows=60, unfinished=1, failed=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"vlmsweep app exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not come up in {timeout:.0f}s")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    write_synthetic_study(root, SPEC)
    ingest(root)
    port = _free_port()
    # The same command a user types; run_app execs streamlit in this process, so killing its group ends it.
    proc = subprocess.Popen([sys.executable, "-m", "sweep.cli", "app", str(root), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True)
        yield b
        b.close()


def _settle(page) -> None:
    """Wait until Streamlit has finished the script run (its status widget disappears)."""
    page.wait_for_selector('[data-testid="stApp"]', timeout=30_000)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=60_000)


def _no_exception(page, where: str) -> None:
    boxes = page.locator('[data-testid="stException"]')
    assert boxes.count() == 0, f"{where}: {boxes.first.inner_text()}"


def test_every_page_in_a_real_browser(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    for path, heading, has_plot in PAGES:
        page.goto(f"{server}/{path}?scale=79m,411m")
        _settle(page)
        page.get_by_text(heading, exact=False).first.wait_for(timeout=30_000)
        if has_plot:
            page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)
        else:
            page.wait_for_selector('[data-testid="stDataFrame"]', timeout=30_000)
        _no_exception(page, path or "overview")
        assert page.get_by_text("Page not found").count() == 0, path
        assert page.locator('[data-testid="stToolbar"]').count() == 1, path  # the toolbar is drawn ...
        deploy = page.locator('[data-testid="stAppDeployButton"]').or_(page.get_by_role("button", name="Deploy"))
        assert deploy.count() == 0, f"{path or 'overview'}: a Deploy button"  # ... in viewer mode
        shot = tmp_path / f"{path or 'overview'}.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
    page.close()


def test_menu_navigation_keeps_filters_in_the_url(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{server}/?scale=411m")
    _settle(page)
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)
    page.locator('[data-testid="stSidebarNav"] a', has_text="Scores").click()
    page.wait_for_url("**/scores*", timeout=30_000)
    _settle(page)
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)
    _no_exception(page, "scores via the menu")
    assert "scale=411m" in page.url
    legend = [t for t in page.locator(".js-plotly-plot .legendtext").all_text_contents() if t]
    assert legend and all("411m" in t for t in legend), legend
    page.screenshot(path=str(tmp_path / "scores_411m.png"), full_page=True)
    page.close()
