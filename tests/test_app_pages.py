"""Every page of the result browser under Streamlit's AppTest on a synthetic results set: no
exception, the expected elements, sidebar filters that change the data and live in the URL, a
new catalog picked up without a restart, and nothing written."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from analysis.store import ingest
from analysis.synthetic import SyntheticSpec, write_synthetic_study
from app import catalog

PAGES_DIR = Path(__file__).resolve().parents[1] / "app" / "page_scripts"
PAGES = ("overview", "curves", "scores", "tradeoff", "scaling", "runs", "export")
SPEC = SyntheticSpec(scales=("79m", "411m"), intro_fractions=(0.0, 0.4, 0.8, 1.0), image_ratios=(0.1, 0.5),
                     finetune_epochs=(1, 2), seeds=(0, 1), metric_rows=60, unfinished=2, failed=2)


def app_script(root):
    from app.main import main

    main(root)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("results")
    write_synthetic_study(root, SPEC)
    ingest(root)
    yield root
    catalog.close()


def open_page(root: Path, page: str, query: dict | None = None) -> AppTest:
    at = AppTest.from_function(app_script, args=(str(root),), default_timeout=60)
    at.query_params.update(query or {})
    at.run()
    if page != "overview":
        at.switch_page(str(PAGES_DIR / f"{page}.py")).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def figure(at: AppTest, k: int = 0) -> dict:
    return json.loads(at.get("plotly_chart")[k].proto.spec)


def values(array) -> np.ndarray:
    """A trace's data array from the figure's JSON: a list, or plotly's base64 typed array."""
    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"])
    return np.asarray(array, dtype=float)


def legend_names(fig: dict) -> set[str]:
    return {t.get("name") for t in fig["data"] if t.get("showlegend", True) is not False}


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders(results, page):
    at = open_page(results, page)
    assert at.title, "each page has a title"
    if page == "runs":
        assert len(at.dataframe) == 1 and at.get("download_button")
    else:
        assert at.get("plotly_chart"), f"{page}: no figure"
        assert figure(at)["data"], f"{page}: empty figure"
    assert not at.error


def test_overview_counts_and_coverage(results):
    at = open_page(results, "overview")
    assert metric(at, "steps failed") == "2"
    heat = figure(at)["data"][0]
    assert heat["type"] == "heatmap"
    labels = [t for row in heat["text"] for t in row if t]
    done = sum(int(t.split("/")[0]) for t in labels)
    total = sum(int(t.split("/")[1]) for t in labels)
    assert total - done == 4  # 2 failed + 2 running evals
    assert any("running" in h for row in heat["customdata"] for h in row)


def test_filters_in_the_url_change_every_page(results):
    every = open_page(results, "overview")
    small = open_page(results, "overview", {"scale": "79m"})
    assert int(metric(small, "steps done")) < int(metric(every, "steps done"))
    assert figure(small)["data"][0]["y"] == ["79m"]
    curves = open_page(results, "curves", {"scale": "79m", "intro_fraction": "0.8"})
    assert legend_names(figure(curves)) == {"scale = 79m"}
    runs_all, runs_some = open_page(results, "runs"), open_page(results, "runs", {"scale": "411m"})
    assert 0 < len(runs_some.dataframe[0].value) < len(runs_all.dataframe[0].value)
    assert set(runs_some.dataframe[0].value["scale"].dropna()) == {"411m"}


def test_widget_filters_are_written_to_the_url(results):
    at = open_page(results, "scores")
    assert at.query_params.get("scale") is None
    at.sidebar.multiselect(key="filter_scale").set_value(["411m"])
    at.sidebar.multiselect(key="filter_seed").set_value([1])
    at.run()
    assert not at.exception
    assert at.query_params["scale"] == "411m" and at.query_params["seed"] == "1"
    assert legend_names(figure(at)) == {"scale = 411m"}


def test_unknown_url_values_are_reported_not_fatal(results):
    at = open_page(results, "overview", {"scale": "7b", "study": "nope"})
    assert at.sidebar.warning and any("scale=7b" in c.value and "study=nope" in c.value for c in at.sidebar.code)


def test_url_parameters_are_never_rendered_as_markdown(results):
    image = "![t](http://127.0.0.1:9/x.png)"
    at = open_page(results, "overview", {"scale": image})
    assert any(f"scale={image}" in c.value for c in at.sidebar.code)  # shown verbatim, as code
    markdown = [e.value for kind in ("markdown", "caption", "warning", "info", "error", "success")
                for e in at.get(kind)]
    assert markdown and not any("](http://127.0.0.1:9" in text for text in markdown), markdown


def test_curves_options(results):
    at = open_page(results, "curves")
    at.multiselect(key="curves_metrics").set_value(["train_loss", "lr"])
    at.selectbox(key="curves_color").set_value("intro_fraction")
    at.checkbox(key="curves_log_y").check()
    at.slider(key="curves_smoothing").set_value(0.9)
    at.run()
    assert not at.exception
    fig = figure(at)
    assert fig["layout"]["yaxis"]["type"] == "log" and fig["layout"]["yaxis2"]["type"] == "log"
    for trace in fig["data"]:  # each run's curve (NaN-separated within a colour's trace) <= 200 points
        x = values(trace["x"])
        assert max(len(run) for run in np.split(x, np.flatnonzero(np.isnan(x)))) <= 200 + 1
    assert {a["text"] for a in fig["layout"]["annotations"]} == {"lr", "train_loss"}
    assert "intro_fraction = 0.8" in legend_names(fig)


def test_scores_per_task_and_axes(results):
    at = open_page(results, "scores")
    at.selectbox(key="scores_axis").set_value("finetune_epochs")
    at.radio(key="scores_view").set_value("per task")
    at.run()
    assert not at.exception
    titles = {a["text"] for a in figure(at)["layout"]["annotations"]}
    assert {"vqav2", "pope", "arc_easy"} <= titles
    assert any(t.get("error_y", {}).get("array") for t in figure(at)["data"])


def test_tradeoff_hover_shows_the_configuration(results):
    at = open_page(results, "tradeoff")
    markers = [t for t in figure(at)["data"] if "markers" in t.get("mode", "")]
    assert markers and all("intro_fraction = " in h and "image_ratio = " in h
                           for t in markers for h in t["hovertext"])


def test_scaling_shows_intervals(results):
    at = open_page(results, "scaling")
    table = at.dataframe[0].value
    assert list(table["parameter"]) == ["E", "A", "B", "alpha", "beta"]
    assert table["lo"].notna().all() and (table["lo"] <= table["hi"]).all()


def test_scaling_refines_from_the_full_grid_on_request(results):
    at = open_page(results, "scaling")
    assert any("best of 100 L-BFGS starts" in c.value for c in at.caption)
    at.button(key="scaling_refine").click().run()
    assert not at.exception
    assert any("best of 4500 L-BFGS starts" in c.value for c in at.caption)
    at.run()  # stays refined for these options, and the button is gone
    assert any("best of 4500" in c.value for c in at.caption) and not at.get("button")


def test_export_offers_every_format_and_csv(results):
    at = open_page(results, "export")
    labels = {b.proto.label for b in at.get("download_button")}
    assert {"PNG", "SVG", "PDF", "CSV (plotted data)"} <= labels
    at.selectbox(key="export_figure").set_value("scores").run()
    assert not at.exception and figure(at)["data"]


def test_new_catalog_is_picked_up_without_restart(tmp_path):
    root = tmp_path / "results"
    write_synthetic_study(root, SyntheticSpec(scales=("79m",), intro_fractions=(0.8,), image_ratios=(0.1,),
                                              finetune_epochs=(1,), seeds=(0,), metric_rows=10))
    ingest(root)
    at = open_page(root, "overview")
    before = int(metric(at, "steps done"))
    # The study grows (another intro fraction) and is ingested again, as after a later `run`.
    write_synthetic_study(root, SyntheticSpec(scales=("79m",), intro_fractions=(0.8, 1.0),
                                              image_ratios=(0.1,), finetune_epochs=(1,), seeds=(0,), metric_rows=10))
    ingest(root)
    at.run()
    assert not at.exception
    assert int(metric(at, "steps done")) > before


def test_missing_catalog_is_an_error_on_the_page(tmp_path):
    at = AppTest.from_function(app_script, args=(str(tmp_path),), default_timeout=30).run()
    assert "no results catalog" in at.error[0].value


def test_the_app_writes_nothing(results):
    def snapshot():
        return sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ino)
                      for p in results.rglob("*"))
    before = snapshot()
    for page in PAGES:
        open_page(results, page)
    assert snapshot() == before


@pytest.mark.parametrize("page", PAGES)
def test_every_page_opens_on_a_catalog_ingested_before_any_step_finished(tmp_path: Path, page: str) -> None:
    """`vlmsweep demo` ingests its study's manifest before training so the app can be opened at once."""
    from sweep.plan import write_study_manifest
    from tests.launch_helpers import small_plan

    plan = small_plan(tmp_path)
    write_study_manifest(plan)
    ingest(plan.root)
    try:
        open_page(plan.root, page)
    finally:
        catalog.close()


def test_predict_page_says_two_scales_are_too_few(results):
    at = open_page(results, "predict")
    assert any("needs at least 3 scales" in i.value for i in at.info), [i.value for i in at.info]


def test_predict_page_shows_the_trend_the_frontier_and_the_backtest(tmp_path):
    from analysis.synthetic_law import KnownLaw

    write_synthetic_study(tmp_path, SyntheticSpec(scales=("1m", "5m", "79m"), image_ratios=(0.05, 0.2),
                                                  finetune_epochs=(1,), metric_rows=2, law=KnownLaw()))
    ingest(tmp_path)
    try:
        at = open_page(tmp_path, "predict")
        trend, front = figure(at, 0), figure(at, 1)
        assert any(t.get("name", "").startswith("predicted at") for t in trend["data"])
        assert any(t.get("name", "").startswith("predicted frontier") for t in front["data"])
        assert len(at.dataframe) == 1 and any("backtest: 79m" in c.value for c in at.caption)
        at.text_input(key="predict_params").input("5e7").run()  # inside the trained range: said plainly
        assert any("not beyond the fitted range" in i.value for i in at.info)
    finally:
        catalog.close()
