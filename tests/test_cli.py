"""The command line: every subcommand has real help, and the installed entry point works."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from sweep.cli import build_parser, main

COMMANDS = ["plan", "run", "status", "ingest", "report", "app", "search", "demo", "world", "tokenize", "fit-scaling"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert f"vlmsweep {command}" in text and len(text.splitlines()) >= 4


def test_top_level_help_lists_every_command():
    text = build_parser().format_help()
    for command in COMMANDS:
        assert command in text


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["plan"])  # missing the study
    assert exit_info.value.code == 2


def test_console_script_is_installed(tmp_path):
    exe = shutil.which("vlmsweep") or str((__import__("pathlib").Path(sys.executable).parent / "vlmsweep"))
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and "scaling studies" in out.stdout


def test_fit_scaling_through_vlmsweep_recovers_chinchilla(capsys):
    import json
    from pathlib import Path

    csv = Path(__file__).parent / "data" / "chinchilla_fig4_points.csv"
    assert main(["fit-scaling", str(csv), "--params-col", "Model Size", "--flops-col", "Training FLOP",
                 "--loss-col", "loss", "--drop-highest-loss", "5", "--json"]) == 0
    fit = json.loads(capsys.readouterr().out)
    assert abs(fit["E"] - 1.82) < 0.02 and abs(fit["alpha"] - 0.348) < 0.005
    assert abs(fit["beta"] - 0.366) < 0.005


def test_fit_scaling_names_a_missing_column(tmp_path, capsys):
    csv = tmp_path / "runs.csv"
    csv.write_text("N,D,loss\n1,2,3\n")
    assert main(["fit-scaling", str(csv), "--params-col", "params", "--tokens-col", "D",
                 "--loss-col", "loss"]) == 2
    err = capsys.readouterr().err
    assert "runs.csv" in err and "params" in err


def test_ingest_and_report_take_a_results_folder(tmp_path, capsys, monkeypatch):
    """`vlmsweep ingest DIR` / `report DIR` on what the demo writes (a results folder, no study file
    at hand): its own manifest says which steps belong to which study; --root is refused there."""
    from analysis.synthetic import SyntheticSpec, write_synthetic_study

    root = tmp_path / "results"
    write_synthetic_study(root, SyntheticSpec(scales=("1m", "5m"), finetune_epochs=(1,), metric_rows=2))
    assert main(["ingest", str(root)]) == 0
    assert "studies: synthetic" in capsys.readouterr().out and (root / "results.duckdb").is_file()
    assert main(["ingest", str(root), "--root", str(tmp_path)]) == 2
    assert "is itself a results folder" in capsys.readouterr().err
    assert main(["ingest", str(tmp_path / "nothing-here")]) == 2  # neither a file nor a folder
    assert main(["report", str(root), "--out", str(tmp_path / "r"), "--name", "other"]) == 2
    assert not (tmp_path / "r" / "findings.md").exists()
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-chrome"))  # HTML and CSV only: quick
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["report", str(root), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "findings.md").is_file() and list((tmp_path / "r").rglob("*.html"))
