"""`vlmsweep predict` end to end on synthetic results folders: text and JSON with the backtest
always, and bad input (too few scales, a target inside the range, an unknown preset) as one clear
message with exit status 2; a target 100x out is answered with a warning stating the factor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from analysis.synthetic import SyntheticSpec, write_synthetic_study
from analysis.synthetic_law import KnownLaw
from sweep.cli import main

LARGEST = 411_000_000


def results(root: Path, scales: tuple[str, ...]) -> Path:
    write_synthetic_study(root, SyntheticSpec(scales=scales, image_ratios=(0.05, 0.1, 0.2, 0.4), finetune_epochs=(1,),
                                              metric_rows=2, law=KnownLaw()))
    return root


@pytest.fixture(scope="module")
def four(tmp_path_factory) -> Path:
    return results(tmp_path_factory.mktemp("four"), ("1m", "5m", "79m", "411m"))


def test_predict_prints_the_prediction_and_its_backtest(four, capsys) -> None:
    assert main(["predict", str(four), "--scale", "1.4b", "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out
    assert "best intro_fraction" in out and "VL stable score" in out and "held-out caption loss" in out
    assert "backtest: 411m" in out and "decision accuracy over 276 pairs" in out
    assert "predicted VL/text frontier" in out


def test_predict_json(four, capsys) -> None:
    assert main(["predict", str(four), "--params", "2e9", "--bootstrap", "50", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    p = report["prediction"]
    assert p["params"] == 2e9 and p["bootstrap"] == 50 and len(p["fitted_scales"]) == 4
    assert p["best_intro_fraction"]["lo"] <= p["best_intro_fraction"]["estimate"] <= p["best_intro_fraction"]["hi"]
    assert set(p["forms"]) == {"vl_score", "text_score", "val_text_loss", "val_caption_loss"}
    assert p["frontier"] and {"text_score", "vl_score", "vl_lo", "vl_hi"} <= set(p["frontier"][0])
    backtest = report["backtest"]
    assert backtest["scale"] == "411m" and backtest["decision_accuracy"]["vl_score"] >= 0.8


def test_a_target_100x_out_is_answered_with_a_warning(four, capsys) -> None:
    assert main(["predict", str(four), "--params", str(100 * LARGEST), "--bootstrap", "20"]) == 0
    assert "warning: the target is 100x the largest trained scale (411m" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--params", "5e7"], "not beyond the fitted range"),
    (["--scale", "79m"], "not beyond the fitted range"),
    (["--scale", "nope"], "'nope' is not a preset"),
    (["--params", "-3"], "must be a positive number"),
])
def test_bad_targets_exit_2_with_one_message(four, capsys, args, message) -> None:
    assert main(["predict", str(four), *args, "--bootstrap", "10"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_two_scales_need_a_third(tmp_path, capsys) -> None:
    two = results(tmp_path, ("1m", "79m"))
    assert main(["predict", str(two), "--scale", "1.4b"]) == 2
    assert "prediction needs at least 3 scales with evaluated runs (has 2: 1m, 79m)" in capsys.readouterr().err
