"""`write_report` on the thin shapes real studies have — one scale, one seed, one ratio, one intro
fraction, no trunk evaluations, failed steps, only trunk evaluations, the demo study's sparse grid —
and on the files of a real (tiny) `vlmsweep run`: never a crash, and every figure it cannot draw is
named with its reason in the summary and in findings.md."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import polars as pl
import pytest

from analysis.report import ReportSummary, write_report
from analysis.store import ingest
from analysis.synthetic import SyntheticSpec, write_synthetic_study
from tests.test_report_no_browser import VLMSWEEP, no_browser_env

BASE = {"metric_rows": 12, "finetune_epochs": (1,)}
DEMO_SWEEP = tuple((f, 0.2, 0) for f in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0))  # studies/demo.toml at 170k
DEMO_CELLS = DEMO_SWEEP + ((0.8, 0.2, 1), (1.0, 0.2, 1), (0.8, 0.05, 0), (0.8, 0.5, 0))  # and at 1m

SHAPES = {
    "one_scale": SyntheticSpec(scales=("79m",), intro_fractions=(0.0, 0.4, 0.8, 1.0), image_ratios=(0.1, 0.3), **BASE),
    "one_seed": SyntheticSpec(seeds=(0,), intro_fractions=(0.0, 0.4, 0.8, 1.0), image_ratios=(0.1, 0.3), **BASE),
    "one_ratio": SyntheticSpec(image_ratios=(0.2,), intro_fractions=(0.0, 0.4, 0.8, 1.0), **BASE),
    "one_fraction": SyntheticSpec(intro_fractions=(0.8,), image_ratios=(0.1, 0.3), **BASE),
    "no_trunk_evals": SyntheticSpec(trunk_evals="none", intro_fractions=(0.0, 0.8, 1.0), **BASE),
    "failed_steps": SyntheticSpec(intro_fractions=(0.0, 0.8, 1.0), failed_branches=2, failed=1, unfinished=1, **BASE),
    "trunk_evals_only": SyntheticSpec(intro_fractions=(0.5, 1.0), image_ratios=(0.2,), seeds=(0,), failed_branches=4,
                                      trunk_evals="checkpoints", **BASE),
    "demo": SyntheticSpec(scales=("170k", "1m"), cells=DEMO_CELLS, scale_cells=(("170k", DEMO_SWEEP),),
                          finetune_epochs=(1, 2), trunk_evals="checkpoints",
                          pretrained_evals=True, metric_rows=12),
}


def report(root: Path, out: Path, study: str, formats=()) -> ReportSummary:
    summary = write_report(root, out, study=study, bootstrap=10, formats=formats)
    for path in summary.written:
        assert path.is_file() and path.stat().st_size > 0, path
    findings = (out / "findings.md").read_text()
    for name, why in summary.skipped:
        assert "could not be drawn" not in why, f"{name} failed: {why}"  # a bug, not a thin study
        assert f"`{name}`: {why}" in findings
    for note in summary.notes:
        assert note in findings
    return summary


def drawn(summary: ReportSummary) -> set[str]:
    return {p.stem for p in summary.written if p.parent.name == "figures"}


@pytest.fixture(scope="module", params=list(SHAPES))
def shaped(request, tmp_path_factory) -> tuple[str, ReportSummary, Path]:
    root = tmp_path_factory.mktemp(request.param)
    write_synthetic_study(root, SHAPES[request.param])
    ingest(root)
    out = root / "report"
    return request.param, report(root, out, "synthetic"), out


def test_every_shape_reports_what_it_can(shaped) -> None:
    shape, summary, out = shaped
    skipped, figs = dict(summary.skipped), drawn(summary)
    assert "training_loss_by_scale" in figs  # every shape has a trained trunk
    expect_drawn = {
        "one_scale": {"scores_vs_intro_fraction", "scores_vs_image_ratio", "vl_vs_text_tradeoff", "lr_schedules",
                      "response_surface_79m"},
        "one_seed": {"scores_vs_intro_fraction", "vl_vs_text_tradeoff", "response_surface_411m"},
        "one_ratio": {"scores_vs_intro_fraction", "training_loss_by_intro_fraction", "vl_vs_text_tradeoff"},
        "one_fraction": {"scores_vs_image_ratio", "training_loss_by_image_ratio", "vl_vs_text_tradeoff"},
        "no_trunk_evals": {"scores_vs_intro_fraction", "vl_vs_text_tradeoff"},
        "failed_steps": {"scores_vs_intro_fraction", "vl_vs_text_tradeoff", "lr_schedules"},
        "trunk_evals_only": set(),
        "demo": {"scores_vs_intro_fraction", "scores_vs_intro_fraction_per_task", "scores_vs_finetune_epochs",
                 "scores_vs_image_ratio", "lr_schedules", "training_loss_by_intro_fraction",
                 "training_loss_by_image_ratio", "vl_vs_text_tradeoff", "response_surface_170k",
                 "response_surface_1m"},
    }[shape]
    assert expect_drawn <= figs, expect_drawn - figs
    expect_skipped = {
        "one_scale": {"scaling_law_text_loss": "has 1"},
        "one_seed": {},
        "one_ratio": {"scores_vs_image_ratio": "did not vary image_ratio",
                      "response_surface": "needs both intro_fraction and image_ratio"},
        "one_fraction": {"scores_vs_intro_fraction": "did not vary intro_fraction",
                         "training_loss_by_intro_fraction": "two or more values of intro_fraction"},
        "no_trunk_evals": {},
        "failed_steps": {},
        "trunk_evals_only": {"scores_vs_intro_fraction": "no branch or fine-tuned model",
                             "vl_vs_text_tradeoff": "no branch or fine-tuned model",
                             "lr_schedules": "no lr metrics of a trunk together with its branches"},
        "demo": {"scaling_law_text_loss": "has 2", "scores_vs_instruction_share": "did not vary"},
    }[shape]
    for name, why in expect_skipped.items():
        assert why in skipped.get(name, ""), (name, skipped.get(name))


def test_thin_data_is_said_not_hidden(shaped) -> None:
    shape, summary, out = shaped
    findings = (out / "findings.md").read_text()
    if shape in ("one_seed", "trunk_evals_only"):
        if shape == "one_seed":
            assert any("single run (one seed)" in n for n in summary.notes)
            assert any("no bootstrap band" in n for n in summary.notes)
            plotted = pl.read_csv(out / "figures" / "scores_vs_intro_fraction.csv")
            assert plotted["y_error"].is_null().all()  # no error bars from one run
    if shape == "no_trunk_evals":
        assert "text cost of images is not measured" in findings
        assert not (out / "tables" / "trunk_text_scores.csv").exists()
    if shape == "failed_steps":
        missing = pl.read_csv(out / "missing_cells.csv")
        assert set(missing["status"]) == {"failed", "no result"}  # failed eval; never-run evals of failed branches
        assert f"{len(missing)} planned evaluations have no result" in findings
    if shape == "trunk_evals_only":
        assert "## Text-only trunk" in findings and "0 evaluated runs" in findings
        trunk = pl.read_csv(out / "tables" / "trunk_text_scores.csv")
        assert sorted(set(trunk["checkpoint"])) == [0.5, 1.0] and set(trunk["scale"]) == {"79m", "411m"}
    if shape == "demo":
        assert "### Images at 80% vs at 100%" in findings and (out / "tables" / "late_vs_full.tex").is_file()
        assert (out / "tables" / "text_cost.tex").is_file()  # trunk evaluated at checkpoint 1.0
        plotted = pl.read_csv(out / "figures" / "scores_vs_intro_fraction.csv")
        with_bars = plotted.filter(pl.col("y_error").is_not_null())["x"].unique().sort().to_list()
        assert with_bars == [0.8, 1.0]  # two seeds only there
        late = findings.split("### Images at 80% vs at 100%")[1].split("\n## ")[0]
        rows = {line.split("|")[1].strip(): line for line in late.splitlines() if line.startswith("| 1")}
        assert "—" in rows["170k"] and "—" not in rows["1m"]  # one seed at 170k: no error bars
        hollow = plotted.filter(pl.col("symbol") == "circle-open")["x"].unique().sort().to_list()
        assert hollow == [0.0, 1.0]
        # ratio varies only at f = 0.8: the surface must not invent an f·ratio interaction
        assert "f*u" not in findings and "terms 1 f f^2 u u^2" in findings


def test_demo_shape_renders_real_images(tmp_path: Path) -> None:
    write_synthetic_study(tmp_path, SHAPES["demo"])
    ingest(tmp_path)
    summary = report(tmp_path, tmp_path / "report", "synthetic", formats=("png",))
    pngs = [p for p in summary.written if p.suffix == ".png"]
    assert len(pngs) >= 10 and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)


# -- a real run ------------------------------------------------------------------------------------
REAL = Path(__file__).parent / "data" / "real_tiny_run"  # files of a real tiny run; README there


def check_real_report(out: Path) -> None:
    """What a report of the real tiny study (debug, f = 0.5 and 1.0, one ratio, one seed) must say."""
    findings = (out / "findings.md").read_text()
    assert "### Images at 50% vs at 100%" in findings  # the nearest to 0.8 the study has
    assert "single run (one seed)" in findings and "| debug |" in findings
    assert "## Text-only trunk" in findings and "## Text cost" in findings
    assert "## Against the paper" in findings and "None of the paper's" in findings  # debug scale: no match
    figs = {p.stem for p in (out / "figures").glob("*.csv")}
    assert {"lr_schedules", "scores_vs_intro_fraction", "vl_vs_text_tradeoff", "training_loss_by_scale",
            "training_loss_by_intro_fraction"} <= figs
    lr = pl.read_csv(out / "figures" / "lr_schedules.csv")
    trunk = lr.filter(pl.col("trace").str.starts_with("trunk"))
    late = lr.filter(pl.col("trace").str.starts_with("branch f = 0.5"))
    full = lr.filter(pl.col("trace").str.starts_with("branch f = 1"))
    per_step, end = trunk["x"].min(), trunk["x"].max()  # the trunk's first row is after one step
    first = late["x"].min() - per_step  # branch tokens count from its own start: one step in
    assert end / 2 - per_step <= first <= end / 2  # resumed at the trunk's midpoint checkpoint
    assert full["x"].min() == end + per_step  # f = 1 starts where the whole trunk ended
    # `continue`: the branch's first LR is the trunk's LR where it left off; f = 1 re-warms
    assert late.sort("x")["y"][0] == pytest.approx(trunk.filter(pl.col("x") == first + per_step)["y"][0])
    assert full.sort("x")["y"][0] < full["y"].max()
    tradeoff = pl.read_csv(out / "figures" / "vl_vs_text_tradeoff.csv")
    hollow = [sym.endswith("-open") for sym in tradeoff["symbol"].drop_nulls()]
    assert sorted(hollow) == [False, True]  # f = 1 was re-warmed: hollow; f = 0.5 continued: filled


def test_report_on_real_run_files(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    shutil.copytree(REAL, root)
    ingest(root)
    summary = report(root, tmp_path / "rep", "tiny")
    assert summary.study == "tiny"
    check_real_report(tmp_path / "rep")


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """The real pipeline now, on the same tiny study, so the files above cannot silently go stale."""
    from sweep.cli import main

    home = tmp_path_factory.mktemp("real")
    shutil.copy(REAL / "tiny.toml", home / "tiny.toml")
    assert main(["run", str(home / "tiny.toml"), "--backend", "inline", "--root", str(home / "runs")]) == 0
    return home


@pytest.mark.slow
def test_vlmsweep_report_on_a_fresh_real_run(real_run: Path, tmp_path: Path) -> None:
    from sweep.cli import main

    root = tmp_path / "runs"  # a copy without the weights: the report reads the step files only
    shutil.copytree(real_run / "runs", root, ignore=shutil.ignore_patterns("*.pt", "ckpt"))
    assert main(["report", str(real_run / "tiny.toml"), "--root", str(root), "--out", str(tmp_path / "rep")]) == 0
    check_real_report(tmp_path / "rep")
    assert (tmp_path / "rep" / "figures" / "lr_schedules.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_vlmsweep_report_without_a_browser_writes_csv_and_html_and_says_how_to_add_images(
        real_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    run = subprocess.run([str(VLMSWEEP), "report", str(real_run / "tiny.toml"), "--root", str(real_run / "runs"),
                          "--out", str(out)],
                         env=no_browser_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    figures = out / "figures"
    stems = {p.stem for p in figures.glob("*.csv")}
    assert {"lr_schedules", "scores_vs_intro_fraction", "vl_vs_text_tradeoff"} <= stems
    assert stems == {p.stem for p in figures.glob("*.html")}
    page = (figures / "lr_schedules.html").read_text()
    assert 'src="plotly.min.js"' in page and "Plotly.newPlot" in page  # interactive, offline
    assert (figures / "plotly.min.js").stat().st_size > 1_000_000
    assert not [p for ext in ("png", "svg", "pdf") for p in figures.glob(f"*.{ext}")]
    told = [line for line in run.stdout.splitlines() if "Chrome/Chromium" in line]
    assert len(told) == 1, run.stdout
    for hint in ("apt-get install chromium", "plotly_get_chrome", "re-run `vlmsweep report`", "PNG/SVG/PDF"):
        assert hint in told[0], hint
    assert (out / "findings.md").is_file()
