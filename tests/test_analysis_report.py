"""`report` writes every file it promises (real kaleido renders), skips figures of axes the study
did not vary with a note, and the CLI glue: ingest, report and fit-scaling with exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from analysis.cli import main
from analysis.errors import AnalysisInputError
from analysis.report import write_report
from analysis.synthetic import SyntheticSpec, write_synthetic_study

DATA = Path(__file__).parent / "data" / "chinchilla_fig4_points.csv"
SPEC = SyntheticSpec(scales=("79m", "154m", "411m"), intro_fractions=(0.0, 0.4, 0.8, 1.0), image_ratios=(0.1, 0.3),
                     finetune_epochs=(1,), metric_rows=12, failed=1)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    write_synthetic_study(root, SPEC)
    assert main(["ingest", "--root", str(root), "--quiet"]) == 0
    return root


def test_report_writes_every_promised_file(root: Path, tmp_path: Path) -> None:
    summary = write_report(root, tmp_path, study="synthetic", bootstrap=20)
    assert summary.study == "synthetic"
    for path in summary.written:
        assert path.is_file() and path.stat().st_size > 0, path
    names = {p.name for p in summary.written}
    figures = ["scores_vs_intro_fraction", "scores_vs_intro_fraction_per_task", "scores_vs_image_ratio",
               "lr_schedules", "training_loss_by_intro_fraction", "training_loss_by_scale",
               "vl_vs_text_tradeoff", "response_surface_79m", "response_surface_411m", "scaling_law_text_loss",
               "prediction_best_mix", "prediction_frontier"]
    for fig in figures:
        assert {f"{fig}.{ext}" for ext in ("png", "svg", "pdf", "csv")} <= names, fig
    assert {"main_results.tex", "late_vs_full.tex", "text_cost.tex", "findings.md", "missing_cells.csv"} <= names
    skipped = dict(summary.skipped)
    assert "instruction_share" in skipped["scores_vs_instruction_share"]
    assert "finetune_epochs" in skipped["scores_vs_finetune_epochs"]
    findings = (tmp_path / "findings.md").read_text()
    assert "| 79m | vl_score |" in findings and "| 411m | avg_score |" in findings
    assert "80% vs at 100%" in findings and "1 planned evaluations have no result" in findings
    assert "scores_vs_instruction_share" in findings
    # three scales: the next rung (411m x its mean step) predicted, with the backtest of 411m
    assert "## Predictions" in findings and "backtest: 411m" in findings and "decision accuracy" in findings
    prediction = json.loads((tmp_path / "tables" / "prediction.json").read_text())
    assert prediction["prediction"]["params"] > 411_000_000 and prediction["backtest"]["scale"] == "411m"
    tex = (tmp_path / "tables" / "main_results.tex").read_text()
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex and r"$\pm$" in tex
    assert (tmp_path / "figures" / "lr_schedules.png").read_bytes()[:4] == b"\x89PNG"


def test_report_on_an_unknown_study_names_the_known_ones(root: Path, tmp_path: Path) -> None:
    with pytest.raises(AnalysisInputError, match="known studies: synthetic"):
        write_report(root, tmp_path, study="nope")
    assert main(["report", "nope", "--root", str(root), "--out", str(tmp_path)]) == 2


def test_fit_scaling_cli_json(capsys) -> None:
    code = main(["fit-scaling", str(DATA), "--params-col", "Model Size", "--flops-col", "Training FLOP",
                 "--loss-col", "loss", "--drop-highest-loss", "5", "--json"])
    assert code == 0
    fit = json.loads(capsys.readouterr().out)
    assert {"E", "A", "B", "alpha", "beta"} <= set(fit)
    assert fit["E"] == pytest.approx(1.82, abs=0.01) and fit["alpha"] == pytest.approx(0.348, abs=0.003)
    assert main(["fit-scaling", str(DATA), "--params-col", "N", "--tokens-col", "D", "--loss-col", "loss"]) == 2
    assert "no column 'N'" in capsys.readouterr().err


def test_ingest_cli_prints_the_summary(root: Path, capsys) -> None:
    assert main(["ingest", "--root", str(root), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "unchanged reused" in out and "1 failed" in out
    assert main(["ingest", "--root", str(root / "nowhere"), "--quiet"]) == 2


def test_findings_report_the_search_comparison_when_search_wrote_one(root: Path, tmp_path: Path) -> None:
    assert "Adaptive search" not in (write_report(root, tmp_path / "a", study="synthetic", bootstrap=0,
                                                  formats=()).out_dir / "findings.md").read_text()
    comparison = root / "search" / "synthetic-comparison.json"
    comparison.parent.mkdir(exist_ok=True)
    comparison.write_text(json.dumps({"objectives": ["vl", "text"], "per_scale": {
        "79m": {"grid_hypervolume": 0.05, "grid_runs": 8, "grid_runs_done": 7, "search_hypervolume": 0.06,
                "search_runs": 4}}}))
    try:
        findings = (write_report(root, tmp_path / "b", study="synthetic", bootstrap=0, formats=()).out_dir
                    / "findings.md").read_text()
        assert "## Adaptive search vs the grid" in findings and "(vl, text)" in findings
        assert "| 79m | 0.0600 | 4 | 0.0500 | 7 / 8 | 1.20 |" in findings
        comparison.write_text(json.dumps({"objectives": ["vl", "text"], "per_scale": {"79m": {"search_runs": 4}}}))
        with pytest.raises(AnalysisInputError, match=r"synthetic-comparison.json: per_scale.79m.search_hypervolume"):
            write_report(root, tmp_path / "c", study="synthetic", bootstrap=0, formats=())
    finally:
        comparison.unlink()


HOSTILE = "<img src=x onerror=alert(1)>"


def test_findings_escape_user_derived_names(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "root"
    write_synthetic_study(root, SyntheticSpec(scales=("79m",), intro_fractions=(0.0, 1.0), image_ratios=(0.1,),
                                              finetune_epochs=(1,), metric_rows=4))
    first = None
    for path in sorted(root.glob("steps/eval/*/evals.parquet")):  # a task named by its eval file
        table = pq.read_table(path)
        first = first or next(t for t in table.column("task").to_pylist() if not t.startswith("heldout"))
        tasks = [HOSTILE if t == first else t for t in table.column("task").to_pylist()]
        pq.write_table(table.set_column(table.schema.get_field_index("task"), "task",
                                        pa.array(tasks, pa.string())), path)
    assert main(["ingest", "--root", str(root), "--quiet"]) == 0
    findings = (write_report(root, tmp_path / "out", study="synthetic", bootstrap=0, formats=()).out_dir
                / "findings.md").read_text()
    assert "<img" not in findings
    assert "&lt;img src=x onerror=alert(1)&gt;" in findings  # shown as text, not dropped


def test_md_text_renders_as_its_characters() -> None:
    from analysis.mdtext import md_text

    assert md_text("![t](http://127.0.0.1:9/x.png)") == "\\!\\[t\\](http://127.0.0.1:9/x.png)"
    assert md_text("a|b\n# c") == "a\\|b # c"
    assert md_text("heldout_text 0.5") == "heldout_text 0.5"
