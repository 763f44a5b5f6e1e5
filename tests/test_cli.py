"""The command line: every subcommand has real help, and the installed entry point works."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from sweep.cli import build_parser, main

COMMANDS = ["plan", "run", "status", "ingest", "report", "app", "search", "demo", "world", "fit-scaling"]


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
