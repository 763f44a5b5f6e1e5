"""Benchmark: render time of every app page under Streamlit's AppTest on a large synthetic catalog
(~300 steps, ~5M metric rows) against a 9-step one, in the same run.

Each page is rendered cold (first visit: queries and fits run) and then warm (a rerun served from
the caches), best of --repeats visits with the caches emptied before each; the target is each cold
page ≤ 2 s and ≤ 2x its time on the small catalog.
Run: .venv/bin/python benchmarks/app_render.py [--metric-rows 12000] [--repeats 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import streamlit as st
from streamlit.testing.v1 import AppTest

from analysis.store import ingest
from analysis.synthetic import SyntheticSpec, write_synthetic_study
from app import catalog

PAGES_DIR = Path(__file__).resolve().parents[1] / "app" / "page_scripts"
PAGES = ("overview", "curves", "scores", "tradeoff", "scaling", "runs", "export")
TARGET_S, TARGET_RATIO = 2.0, 2.0


def app_script(root):
    from app.main import main

    main(root)


def large_spec(metric_rows: int) -> SyntheticSpec:
    # 3 scales x 2 seeds: 6 trunks, 60 branches, 120 fine-tunes, 126 evals, 1 encoder = 313 steps;
    # metric rows = (6 + 60) x 5 names x k + 120 x 3 names x k/4 = 420 k (5.0M at k = 12000).
    return SyntheticSpec(study="large", scales=("79m", "154m", "411m"), intro_fractions=(0.0, 0.2, 0.4, 0.8, 1.0),
                         image_ratios=(0.1, 0.5), finetune_epochs=(1, 2), seeds=(0, 1), metric_rows=metric_rows,
                         unfinished=3, failed=3)


def small_spec() -> SyntheticSpec:
    return SyntheticSpec(study="small", scales=("79m",), intro_fractions=(0.8, 1.0), image_ratios=(0.1,),
                         finetune_epochs=(1,), seeds=(0,), metric_rows=200)


def build(root: Path, spec: SyntheticSpec) -> str:
    write_synthetic_study(root, spec)
    summary = ingest(root)
    import duckdb

    with duckdb.connect(str(summary.path), read_only=True) as con:
        steps = con.sql("SELECT count(*) FROM steps").fetchall()[0][0]
        rows = con.sql("SELECT count(*) FROM metrics").fetchall()[0][0]
    return f"{steps} steps, {rows:,} metric rows (written and ingested in {summary.seconds:.1f}s ingest)"


def time_pages(root: Path, repeats: int = 1) -> dict[str, tuple[float, float]]:
    """page -> (best cold seconds, best warm seconds) over `repeats` visits, every cache emptied
    before each and the catalog connection closed (so each is a first visit); fails loudly on any
    exception on a page."""
    best: dict[str, tuple[float, float]] = {}
    for _ in range(repeats):
        st.cache_data.clear()
        st.cache_resource.clear()
        catalog.close()  # the first page opens the catalog again, as on a first visit
        for page, (cold, warm) in _visit_pages(root).items():
            was = best.get(page, (cold, warm))
            best[page] = (min(was[0], cold), min(was[1], warm))
    return best


def _visit_pages(root: Path) -> dict[str, tuple[float, float]]:
    at = AppTest.from_function(app_script, args=(str(root),), default_timeout=120)
    times = {}
    for page in PAGES:
        if page != "overview":
            at.switch_page(str(PAGES_DIR / f"{page}.py"))
        start = time.perf_counter()
        at.run()
        cold = time.perf_counter() - start
        if at.exception:
            raise RuntimeError(f"{root} {page}: {at.exception[0].value}")
        start = time.perf_counter()
        at.run()
        times[page] = (cold, time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metric-rows", type=int, default=12000, help="logged rows per metric per step")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the catalogs (default: a temp dir)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="cold visits per page and catalog; the best counts (pages take tens of ms, and a "
                             "shared machine's noise alone can double one visit)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        print("warm-up catalog:", build(tmp / "warmup", small_spec()))
        time_pages(tmp / "warmup")  # imports and first-use costs, so neither measured run pays them
        print("small catalog:  ", build(tmp / "small", small_spec()))
        print("large catalog:  ", build(tmp / "large", large_spec(args.metric_rows)))
        small, large = time_pages(tmp / "small", args.repeats), time_pages(tmp / "large", args.repeats)
    print(f"best of {args.repeats} visits per page")
    print(f"{'page':10} {'small cold':>10} {'large cold':>10} {'ratio':>6} {'large warm':>10}")
    worst_t, worst_r = ("", 0.0), ("", 0.0)
    for page in PAGES:
        ratio = large[page][0] / max(small[page][0], 1e-3)
        print(f"{page:10} {small[page][0]:9.2f}s {large[page][0]:9.2f}s {ratio:5.2f}x {large[page][1]:9.2f}s")
        worst_t = max(worst_t, (page, large[page][0]), key=lambda x: x[1])
        worst_r = max(worst_r, (page, ratio), key=lambda x: x[1])
    ok = worst_t[1] <= TARGET_S and worst_r[1] <= TARGET_RATIO
    print(f"result: slowest cold page on the large catalog {worst_t[1]:.2f}s ({worst_t[0]}), largest "
          f"large/small ratio {worst_r[1]:.2f}x ({worst_r[0]}); target <= {TARGET_S:g}s and <= {TARGET_RATIO:g}x: "
          f"{'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
