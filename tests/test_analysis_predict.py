"""Predicting the next scale on synthetic studies drawn from a known law in which the best intro
fraction moves with scale (0.6 at 1M parameters, 0.85 at 1.4B): the backtest recovers the best f
and the scores within their intervals with a high decision accuracy, a law without an f-dependence
gets no preferred f, and bad targets are refused or warned about. The batched fits match plain
least squares, and the closed-form best mix matches a dense grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from analysis import queries
from analysis.backtest import backtest_largest, decision_accuracy
from analysis.crossscale import NormalEquations, box_argmax, fit_linear, make_design
from analysis.errors import AnalysisInputError
from analysis.predict import predict_scale, runs_arrays
from analysis.predict_io import prediction_runs
from analysis.scores import centered, step_scores
from analysis.store import connect, ingest
from analysis.synthetic import SyntheticSpec, write_synthetic_study
from analysis.synthetic_law import KnownLaw

SCALES = ("1m", "5m", "79m", "411m", "1.4b")
LAW = KnownLaw()
VL_SHARE = 0.9  # the synthetic VL tasks' stable score is the law's times this (POPE's chance is 0.5)
TEXT_SHARE = 2 / 3  # and the text tasks' (chances 0.25, 0.25, 0.5)


def law_study(root: Path, law: KnownLaw, noise_seed: int = 0) -> pl.DataFrame:
    spec = SyntheticSpec(scales=SCALES, intro_fractions=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
                         image_ratios=(0.05, 0.1, 0.2, 0.4), finetune_epochs=(1,), seeds=(0, 1), metric_rows=2,
                         law=law, seed=noise_seed)
    write_synthetic_study(root, spec)
    ingest(root)
    with connect(root) as con:
        return prediction_runs(con, "synthetic")[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> pl.DataFrame:
    # Noise seed 2, a typical draw: over noise seeds 0-5 the backtest's 95% interval of the best f
    # held the true 0.85 every time (seed 0 at its very edge: estimates 0.82-0.87, sd 0.015).
    return law_study(tmp_path_factory.mktemp("law"), LAW, noise_seed=2)


@pytest.fixture(scope="module")
def backtest(runs):
    return backtest_largest(runs, bootstrap=300, seed=0)


def test_the_runs_carry_scores_losses_and_tokens(runs) -> None:
    assert len(runs) == 5 * 6 * 4 * 2
    for col in ("vl_score", "text_score", "val_text_loss", "val_caption_loss", "tokens"):
        assert runs[col].is_not_null().all(), col
    assert (runs["tokens"] == 20 * runs["params"]).all()  # the synthetic trunks' D


def test_backtest_recovers_the_moving_best_fraction(backtest) -> None:
    p = backtest.prediction
    assert backtest.scale == "1.4b" and [s for s, _ in p.fitted_scales] == list(SCALES[:-1])
    assert p.forms["vl_score"] == "moving_optimum"
    assert p.best_intro_fraction.covers(LAW.best_f(1.4e9)), p.best_intro_fraction  # 0.85
    assert p.best_image_ratio.covers(LAW.best_ratio(1.4e9)), p.best_image_ratio  # 0.12
    assert p.fraction_resolved and p.ratio_resolved
    assert p.trend["best_intro_fraction"][0] == pytest.approx(LAW.best_f(1e6), abs=0.05)  # the trend moves


def test_backtest_scores_and_losses_fall_within_their_intervals(backtest) -> None:
    p = backtest.prediction
    f, r, n = p.best_intro_fraction.estimate, p.best_image_ratio.estimate, 1.4e9
    truth = {"vl_score": VL_SHARE * LAW.vl(n, f, r), "text_score": TEXT_SHARE * LAW.text(n, f, r),
             "val_text_loss": LAW.text_loss(n, f, r), "val_caption_loss": LAW.caption_loss(n, f, r)}
    for target, value in truth.items():
        assert p.values[target].covers(value), (target, p.values[target], value)
        assert backtest.within[target], (target, p.values[target], backtest.observed[target])


def test_backtest_decision_accuracy(backtest) -> None:
    assert backtest.n_pairs == 24 * 23 // 2
    for target in ("vl_score", "text_score", "val_text_loss", "val_caption_loss"):
        assert backtest.decision_accuracy[target] >= 0.8, (target, backtest.decision_accuracy)


def test_without_an_f_dependence_no_fraction_is_preferred(tmp_path) -> None:
    # A 95% interval of an argmax 3.6x beyond the data is not exact: over 30 noise draws of this
    # flat law, 4 showed a spurious preference (noise seed 0 is one: its per-scale f slopes drift
    # by 3 standard errors). Seed 1 is a typical draw.
    flat = law_study(tmp_path, KnownLaw(f_curvature=0.0), noise_seed=1)
    p = predict_scale(flat, params=5e9, bootstrap=200, seed=0)
    assert not p.fraction_resolved
    assert p.best_intro_fraction.lo <= 0.1 and p.best_intro_fraction.hi >= 0.9, p.best_intro_fraction
    assert p.ratio_resolved  # the ratio still matters


def test_results_depend_on_the_runs_not_their_order(runs) -> None:
    a = predict_scale(runs, params=3e9, bootstrap=50, seed=3)
    b = predict_scale(runs.sample(fraction=1.0, shuffle=True, seed=1), params=3e9, bootstrap=50, seed=3)
    assert a.best_intro_fraction == b.best_intro_fraction and a.values == b.values


def test_fewer_than_three_scales_cannot_predict(runs) -> None:
    two = runs.filter(pl.col("scale").is_in(["1m", "5m"]))
    with pytest.raises(AnalysisInputError, match=r"at least 3 scales .*\(has 2: 1m, 5m\)"):
        predict_scale(two, params=1e9)
    with pytest.raises(AnalysisInputError, match="at least 3 scales"):
        backtest_largest(two)


def test_a_target_inside_the_trained_range_is_refused(runs) -> None:
    with pytest.raises(AnalysisInputError, match="not beyond the fitted range"):
        predict_scale(runs, params=5e7)


def test_a_far_target_is_predicted_with_a_warning_stating_the_factor(runs) -> None:
    p = predict_scale(runs, params=1.4e11, bootstrap=20)
    assert p.extrapolation == pytest.approx(100)
    assert any("100x the largest trained scale" in w for w in p.warnings)


def test_constant_tokens_per_parameter_ignores_a_different_d(runs) -> None:
    p = predict_scale(runs, params=3e9, tokens=1e12, bootstrap=10)
    assert p.tokens == pytest.approx(20 * 3e9) and any("cannot separate D from N" in n for n in p.notes)


def test_the_batched_profile_matches_plain_least_squares(runs) -> None:
    arrays, _ = runs_arrays(runs)
    design = make_design("fixed_optimum", arrays)
    y = arrays.values["val_text_loss"]
    rng = np.random.default_rng(0)
    weights = np.vstack([np.ones(len(y)), rng.integers(0, 3, (3, len(y)))]).astype(float)
    alphas = np.array([0.2, 0.3, 0.4])
    fit, _ = fit_linear(design, arrays, y, weights, alphas)
    for row, w in enumerate(weights):
        best = None
        for a in alphas:  # the reference: np.linalg.lstsq on sqrt(w)-scaled rows, α by least SSE
            x = design.matrix(a, arrays.n, arrays.d, arrays.f, arrays.u) * np.sqrt(w)[:, None]
            coef, *_ = np.linalg.lstsq(x, y * np.sqrt(w), rcond=None)
            sse = float(((x @ coef - y * np.sqrt(w)) ** 2).sum())
            best = min(best or (np.inf, 0, None), (sse, a, coef), key=lambda t: t[0])
        assert fit.alpha[row] == best[1]
        np.testing.assert_allclose(fit.coef[row], best[2], rtol=1e-4, atol=1e-6)  # normal equations + ridge
    assert isinstance(NormalEquations.build(design, arrays, weights, alphas).inverses[0], np.ndarray)


def test_the_closed_form_best_mix_matches_a_dense_grid() -> None:
    rng = np.random.default_rng(1)
    q = rng.normal(size=(200, 6))
    f, u = box_argmax(q, (0.0, 1.0), (-1.5, 1.0))
    gf, gu = (g.ravel() for g in np.meshgrid(np.linspace(0, 1, 401), np.linspace(-1.5, 1.0, 401)))

    def value(f, u):
        return q[:, :1] + q[:, 1:2] * f + q[:, 2:3] * u + q[:, 3:4] * f * f + q[:, 4:5] * u * u + q[:, 5:6] * f * u
    best = value(f[:, None], u[:, None])[:, 0]
    assert (best >= value(gf[None, :], gu[None, :]).max(axis=1) - 1e-9).all()
    assert ((f >= 0) & (f <= 1) & (u >= -1.5) & (u <= 1.0)).all()


def test_decision_accuracy_by_hand() -> None:
    assert decision_accuracy(np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0])) == (1.0, 3)
    assert decision_accuracy(np.array([3.0, 2.0, 1.0]), np.array([10.0, 20.0, 30.0])) == (0.0, 3)
    assert decision_accuracy(np.array([1.0, 2.0, 3.0]), np.array([10.0, 10.0, 30.0])) == (1.0, 2)  # a tie: left out


def test_tokens_enter_the_law_only_when_tokens_per_parameter_vary(runs) -> None:
    arrays, _ = runs_arrays(runs)
    assert "h(D)" not in make_design("fixed_optimum", arrays).columns  # D = 20 N everywhere
    varied = runs.with_columns(pl.when(pl.col("scale") == "5m").then(pl.col("tokens") * 3)
                               .otherwise(pl.col("tokens")).alias("tokens"))
    arrays, _ = runs_arrays(varied)
    assert "h(D)" in make_design("fixed_optimum", arrays).columns
    p = predict_scale(varied, params=3e9, tokens=1e12, bootstrap=10)
    assert p.tokens == 1e12 and not p.notes


def test_the_runs_are_scored_by_the_studys_stable_score_definition(tmp_path) -> None:
    """`[eval] stable_score = "centered"` (carried in the manifest) rescales the scores the
    prediction is fitted to, as it does the report's and the app's."""
    spec = SyntheticSpec(scales=("79m",), intro_fractions=(0.8, 1.0), image_ratios=(0.1,), finetune_epochs=(1,),
                         seeds=(0,), metric_rows=2)
    study = write_synthetic_study(tmp_path, spec)
    ingest(tmp_path)
    with connect(tmp_path) as con:
        plain = prediction_runs(con, "synthetic")[0].sort("step_id")
    manifest = json.loads(study.manifest.read_text())
    study.manifest.write_text(json.dumps({**manifest, "stable_score": "centered"}))
    ingest(tmp_path)
    with connect(tmp_path) as con:
        runs = prediction_runs(con, "synthetic")[0].sort("step_id")
        want = step_scores(centered(queries.load_stable_scores(con, "synthetic"), "centered"))
    want = want.filter(pl.col("step_id").is_in(runs["step_id"].to_list())).sort("step_id")
    for score in ("vl_score", "text_score"):
        assert runs[score].to_list() == pytest.approx(want[score].to_list())
    assert (runs["text_score"] > plain["text_score"]).all()  # text chances > 0: divided by 1 − chance
