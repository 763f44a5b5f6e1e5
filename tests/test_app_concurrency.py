"""Several browser sessions query the catalog while `ingest` swaps it: every query succeeds (no
"Connection already closed!" or "connection is busy"), each reads one whole catalog, and a
session sees the new catalog once it looks again. Real DuckDB files, real threads (Streamlit runs
each session in a thread of its own), real ingests."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from analysis.store import ingest
from analysis.synthetic import SyntheticSpec, write_synthetic_study
from app import catalog, loaders
from app.catalog import catalog_version
from models import stepfiles as sf

SPEC = SyntheticSpec(scales=("79m",), intro_fractions=(0.0, 0.5, 1.0), image_ratios=(0.1,), seeds=(0,),
                     finetune_epochs=(1,), metric_rows=20)


def _touch_a_step(root: Path, i: int) -> None:
    """Change one step's files so that the next ingest builds and swaps in a new catalog."""
    result = next(root.glob("steps/trunk/*/result.json"))
    data = sf.read_json(result)
    data["wall_time_s"] = float(i)
    sf.write_json(result, data)


def test_sessions_query_while_ingest_swaps_the_catalog(tmp_path: Path) -> None:
    root = tmp_path / "results"
    write_synthetic_study(root, SPEC)
    ingest(root)
    with catalog.cursor(catalog_version(root)) as con:
        steps = con.execute("SELECT count(*) FROM steps").fetchone()[0]
    errors: list[BaseException] = []
    seen: list[set] = [set() for _ in range(4)]
    stop = threading.Event()

    def session(k: int) -> None:
        while not stop.is_set():
            try:
                version = catalog_version(root)
                with catalog.cursor(version) as con:  # what every loader does
                    n = con.execute("SELECT count(*) FROM steps").fetchone()[0]
                    wall = con.execute("SELECT max(wall_time_s) FROM steps WHERE kind = 'trunk'").fetchone()[0]
                frame = catalog.query(version, "SELECT step_id FROM step_scores")
                assert n == steps and len(frame) > 0
                seen[k].add(wall)
            except BaseException as exc:  # noqa: BLE001 - collected, reported below
                errors.append(exc)
                return

    threads = [threading.Thread(target=session, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for i in range(8):  # eight swaps under the sessions' feet
        _touch_a_step(root, 1000 + i)
        ingest(root)
        time.sleep(0.05)
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    catalog.close()
    assert not errors, [repr(e) for e in errors[:3]]
    assert all(1007.0 in s and len(s) > 1 for s in seen), seen  # each saw swaps, and the last one


@pytest.mark.parametrize("page", ["overview", "scores"])
def test_pages_render_in_two_sessions_across_a_swap(tmp_path: Path, page: str) -> None:
    root = tmp_path / "results"
    write_synthetic_study(root, SPEC)
    ingest(root)

    def app_script(root):
        from app.main import main

        main(root)

    pages = Path(__file__).resolve().parents[1] / "app" / "page_scripts"
    sessions = [AppTest.from_function(app_script, args=(str(root),), default_timeout=60) for _ in range(2)]
    for at in sessions:
        at.run()
    _touch_a_step(root, 7)
    ingest(root)
    for at in sessions:
        at.switch_page(str(pages / f"{page}.py")).run()
        assert not at.exception, [e.value for e in at.exception]
    assert loaders is not None
    catalog.close()
