"""`vlmsweep app`: resolving a study file or results folder to a catalog, the exact streamlit
command it execs, and exit status 2 with a clear message when there is nothing to serve."""

from __future__ import annotations

import sys
from argparse import Namespace
from pathlib import Path

import pytest

from analysis.store import ingest
from analysis.synthetic import SyntheticSpec, write_synthetic_study
from app.cli import MAIN_SCRIPT, resolve_root, run_app, streamlit_command
from sweep.cli import main as vlmsweep
from sweep.errors import UserError

TINY = SyntheticSpec(scales=("79m",), intro_fractions=(0.8,), image_ratios=(0.1,), finetune_epochs=(1,),
                     seeds=(0,), metric_rows=5)
DEMO = Path(__file__).resolve().parents[1] / "studies" / "demo.toml"


@pytest.fixture()
def results(tmp_path) -> Path:
    root = tmp_path / "results"
    write_synthetic_study(root, TINY)
    ingest(root)
    return root


def test_results_folder_resolves_to_itself(results):
    assert resolve_root(results) == results.resolve()


def test_study_file_resolves_to_its_root(tmp_path, results):
    study = tmp_path / "study.toml"
    study.write_text(DEMO.read_text().replace('root = "runs/demo"', 'root = "results"'))
    assert resolve_root(study) == results.resolve()


def test_study_without_catalog_suggests_ingest(tmp_path):
    study = tmp_path / "study.toml"
    study.write_text(DEMO.read_text())
    with pytest.raises(UserError, match=f"no results catalog yet; run `vlmsweep ingest {study}`"):
        resolve_root(study)


def test_missing_target_and_old_catalog_are_user_errors(tmp_path, results):
    with pytest.raises(UserError, match="no such study file or results folder"):
        resolve_root(tmp_path / "nowhere")
    import duckdb

    old = tmp_path / "old"
    old.mkdir()
    duckdb.connect(str(old / "results.duckdb")).close()  # no catalog_info: not this schema
    with pytest.raises(UserError, match="schema version"):
        resolve_root(old)


def test_cli_exits_2_with_one_message(tmp_path, capsys):
    assert vlmsweep(["app", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vlmsweep app: error:") and "vlmsweep ingest" in err


def test_streamlit_command_is_headless_local_and_read_only_root(results):
    cmd = streamlit_command(results, port=8765, host="127.0.0.1")
    assert cmd[:5] == [sys.executable, "-m", "streamlit", "run", str(MAIN_SCRIPT)]
    flags = dict(zip(cmd[5:-2:2], cmd[6:-2:2]))
    assert flags["--server.port"] == "8765" and flags["--server.address"] == "127.0.0.1"
    assert flags["--server.headless"] == "true" and flags["--browser.gatherUsageStats"] == "false"
    assert flags["--client.toolbarMode"] == "viewer"  # no "Deploy" button
    assert cmd[-2:] == ["--", str(results)]
    with pytest.raises(UserError, match="--port 0"):
        streamlit_command(results, port=0, host="127.0.0.1")


def test_run_app_execs_streamlit(results, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr("os.execv", lambda exe, argv: calls.append((exe, argv)))
    run_app(Namespace(target=results, port=8765, host="::1"))
    assert calls and calls[0][1] == streamlit_command(results.resolve(), port=8765, host="::1")
    assert "http://[::1]:8765" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_catalog_is_one_line_and_exit_2(results, capsys, damage):
    catalog = results / "results.duckdb"
    data = catalog.read_bytes()
    catalog.write_bytes(b"not a database\n" * 100 if damage == "garbage" else data[:5000])
    assert vlmsweep(["app", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vlmsweep app: error: {catalog}: not a readable results catalog")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "vlmsweep ingest" in err
