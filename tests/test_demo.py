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


def test_an_interrupted_calibration_does_not_wait_for_the_eval_floors(tmp_path, monkeypatch):
    """Ctrl-C or SIGTERM while the timing slice runs ends the demo at once: the eval floors
    computed beside it (~40 s of CPU) are not waited for (a ThreadPoolExecutor joined them)."""
    import dataclasses
    import threading

    import sweep.demo as demo
    import sweep.estimate
    import sweep.launch

    release = threading.Event()

    class Interrupted:
        def run(self, *args, **kwargs):
            raise KeyboardInterrupt

    @dataclasses.dataclass(frozen=True)
    class Plan:
        root: Path
        steps: tuple = ()

    monkeypatch.setattr(demo, "_prepare_evals", lambda todo: release.wait())
    monkeypatch.setattr(sweep.estimate, "calibration_slice", lambda steps: [])
    monkeypatch.setattr(sweep.launch, "get_backend", lambda name: Interrupted())
    raised: list[BaseException] = []

    def calibrate() -> None:
        try:
            demo.calibrate(Plan(root=tmp_path), [], None, 1)
        except BaseException as exc:  # noqa: BLE001 - looked at below
            raised.append(exc)

    caller = threading.Thread(target=calibrate, daemon=True)
    caller.start()
    caller.join(60)  # a guard against hanging, not a speed limit: the floors never finish here
    finished = not caller.is_alive()
    release.set()
    assert finished, "calibrate waited for the eval floors after an interrupt"
    assert len(raised) == 1 and isinstance(raised[0], KeyboardInterrupt)


def test_a_negative_seed_offset_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--study", str(SMOKE), "--seed-offset", "-1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "seed offset must be ≥ 0 (got -1)" in err and str(SMOKE) in err
    assert not out.exists()
