"""The demo's smoke variant end to end through the local backend: run, ingest, report; a re-run is cached."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from sweep.cli import main

SMOKE = Path(__file__).resolve().parents[1] / "studies" / "demo_smoke.toml"


@pytest.mark.slow
def test_demo_smoke_runs_end_to_end_and_reruns_from_cache(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--study", str(SMOKE), "--out", str(out), "--workers", "2"]) == 0
    text = capsys.readouterr().out
    assert "open the results browser with:  vlmsweep app" in text
    first = text.split("demo: running")[0]  # before training: where to watch, and how long it will take
    assert f"watch them now with  vlmsweep app {out}" in first
    assert "on this machine for 14 steps on 2 worker(s)" in first
    assert (out / "calibration" / "steps").is_dir() and not list((out / "calibration").glob("results.duckdb"))
    assert (out / "results.duckdb").is_file()
    report = out / "report"
    assert (report / "findings.md").is_file()
    for ext in ("png", "svg", "pdf", "csv", "html"):
        assert list(report.rglob(f"*.{ext}")), f"no .{ext} written"
    assert len(list((out / "steps").glob("*/*/result.json"))) >= 10
    # fine-tuning replays text (text_replay = 0.25): both losses are logged, and both are finite
    metrics = pl.concat([pl.read_parquet(p) for p in (out / "steps" / "finetune").glob("*/metrics.parquet")])
    for name in ("instruction_loss", "text_loss"):
        values = metrics.filter(pl.col("name") == name)["value"]
        assert len(values) > 0 and values.is_finite().all(), name

    assert main(["demo", "--study", str(SMOKE), "--out", str(out)]) == 0
    assert "every step is already done (cached)" in capsys.readouterr().out
