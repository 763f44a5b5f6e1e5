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

    # a replication with every seed moved, into the same root: its own study, manifest and report
    steps = set((out / "steps").glob("*/*/result.json"))
    assert main(["demo", "--study", str(SMOKE), "--out", str(out), "--seed-offset", "1", "--workers", "2"]) == 0
    capsys.readouterr()
    assert len(set((out / "steps").glob("*/*/result.json"))) == 2 * len(steps)  # no step shared
    for name in ("demo-smoke", "demo-smoke-seed-offset-1"):
        assert (out / "studies" / f"{name}.json").is_file()
    assert (report / "findings.md").read_text().startswith("# Findings: demo-smoke\n")
    assert (out / "report-seed-offset-1" / "findings.md").read_text().startswith(
        "# Findings: demo-smoke-seed-offset-1\n")
    assert main(["report", str(out), "--out", str(tmp_path / "r")]) == 2
    assert "holds studies demo-smoke, demo-smoke-seed-offset-1: name one with --name" in capsys.readouterr().err


def test_ctrl_c_during_the_eval_floors_ends_the_demo_and_its_workers(tmp_path):
    """The world's blind-answer floors (~40 s of CPU on a fresh machine) run on the pool's workers
    before the timing slice; Ctrl-C meanwhile ends the demo (exit 130) and its workers without
    waiting for the floors to finish, and the floors done so far stay cached for the next run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from models.data.world.bench import BLIND_TASKS

    cache, out = tmp_path / "cache", tmp_path / "demo"
    env = os.environ | {"VLMSWEEP_CACHE": str(cache)}
    # SIGINT as a terminal delivers it: a shell without job control (CI under `nohup ... &`) starts
    # its background commands with SIGINT ignored, and Python then installs no KeyboardInterrupt
    demo = subprocess.Popen([sys.executable, "-m", "sweep.cli", "demo", "--study", str(SMOKE), "--out", str(out),
                             "--workers", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300  # a guard against hanging, not a speed limit
        while not list(cache.glob("chance-*.lock")) and demo.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert demo.poll() is None, demo.communicate()
        demo.send_signal(signal.SIGINT)
        _, err = demo.communicate(timeout=120)
    finally:
        demo.kill()
    assert demo.returncode == 130 and "vlmsweep demo: interrupted" in err, err[-2000:]
    assert len(list(cache.glob("chance-*.json"))) < len(BLIND_TASKS)  # not waited for
    assert not (out / "calibration").exists()  # the floors come first: the timing slice had not begun
    logs = out / "logs"  # a pool job's log folder is named <worker pid>.<job number>
    workers = {int(p.name.split(".")[0]) for p in logs.iterdir()} if logs.is_dir() else set()
    assert workers, "the floors ran on no worker"
    time.sleep(1)
    for pid in workers:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"worker {pid} outlived the interrupted demo")
    assert not (out / "steps").exists() or not list((out / "steps").glob("*/*/result.json"))


def test_a_negative_seed_offset_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--study", str(SMOKE), "--seed-offset", "-1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "seed offset must be ≥ 0 (got -1)" in err and str(SMOKE) in err
    assert not out.exists()
