"""Chinchilla Approach 3: parity with Epoch AI's replication, recovery of a known law, the analytic
gradient, the batched L-BFGS against scipy, bootstrap intervals, and CSV input errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize

from analysis.errors import AnalysisInputError
from analysis.lbfgs import minimize_batch
from analysis.scaling import epoch_grid, fit_scaling_law, huber_objective, load_scaling_csv, predict_loss

DATA = Path(__file__).parent / "data" / "chinchilla_fig4_points.csv"
EPOCH = {"E": 1.82, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}


def chinchilla():
    return load_scaling_csv(DATA, params_col="Model Size", flops_col="Training FLOP", loss_col="loss",
                            drop_highest_loss=5)


def test_full_grid_fit_recovers_epoch_ai_replication() -> None:
    n, d, loss = chinchilla()
    assert len(n) == 240 and len(epoch_grid()) == 4500
    fit = fit_scaling_law(n, d, loss)
    assert fit.E == pytest.approx(EPOCH["E"], abs=0.01)
    assert fit.alpha == pytest.approx(EPOCH["alpha"], abs=0.003)
    assert fit.beta == pytest.approx(EPOCH["beta"], abs=0.003)
    # A and B sit on a flat ridge of the Huber objective (Epoch's bootstrap SE of B is ~1300), so 5%
    assert fit.A == pytest.approx(EPOCH["A"], rel=0.05)
    assert fit.B == pytest.approx(EPOCH["B"], rel=0.05)
    # and our optimum is at least as good as Epoch's published parameters on the same objective
    logs = [np.log(v) for v in (n, d, loss)]
    epoch_theta = np.array([[np.log(EPOCH["E"]), np.log(EPOCH["A"]), np.log(EPOCH["B"]),
                             EPOCH["alpha"], EPOCH["beta"]]])
    epoch_obj = huber_objective(epoch_theta, *logs, np.ones((1, len(n))), 1e-3)[0][0]
    assert fit.objective <= epoch_obj


def test_recovers_a_known_law_and_predicts_it() -> None:
    rng = np.random.default_rng(3)
    n = np.exp(rng.uniform(np.log(1e7), np.log(1e10), 60))
    d = np.exp(rng.uniform(np.log(1e9), np.log(1e12), 60))
    truth = dict(E=1.7, A=400.0, B=1500.0, alpha=0.33, beta=0.29)
    loss = truth["E"] + truth["A"] / n ** truth["alpha"] + truth["B"] / d ** truth["beta"]
    fit = fit_scaling_law(n, d, loss, starts=epoch_grid()[::7])
    for name, value in truth.items():
        assert getattr(fit, name) == pytest.approx(value, rel=0.02), name
    assert np.allclose(predict_loss(fit, n, d), loss, rtol=1e-3)


def test_analytic_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(0)
    log_n, log_d = rng.uniform(16, 23, 30), rng.uniform(20, 27, 30)
    log_l = np.log(2 + rng.uniform(0, 1, 30))
    weights = rng.integers(0, 3, (4, 30)).astype(float)
    theta = np.column_stack([rng.uniform(-1, 1, 4), rng.uniform(0, 10, 4), rng.uniform(0, 10, 4),
                             rng.uniform(0.1, 1, 4), rng.uniform(0.1, 1, 4)])
    _, grad = huber_objective(theta, log_n, log_d, log_l, weights, 0.5)  # wide δ: smooth region
    eps = 1e-6
    for k in range(5):
        step = np.zeros(5)
        step[k] = eps
        up = huber_objective(theta + step, log_n, log_d, log_l, weights, 0.5)[0]
        down = huber_objective(theta - step, log_n, log_d, log_l, weights, 0.5)[0]
        np.testing.assert_allclose(grad[:, k], (up - down) / (2 * eps), rtol=1e-5, atol=1e-8)


def test_batched_lbfgs_matches_scipy_on_independent_rosenbrocks() -> None:
    shifts = np.array([[1.0, 1.0], [2.0, 4.0], [-1.0, 1.0]])

    def fun(x, rows):
        a = shifts[rows, 0]
        f = (a - x[:, 0]) ** 2 + 100 * (x[:, 1] - x[:, 0] ** 2) ** 2
        g = np.column_stack([-2 * (a - x[:, 0]) - 400 * x[:, 0] * (x[:, 1] - x[:, 0] ** 2),
                             200 * (x[:, 1] - x[:, 0] ** 2)])
        return f, g
    x0 = np.array([[-1.2, 1.0], [0.0, 0.0], [0.5, 0.5]])
    res = minimize_batch(fun, x0, max_iter=2000, ftol=1e-15)
    assert res.converged.all()
    for row in range(3):
        ref = minimize(lambda x, row=row: tuple(v[0] for v in fun(x[None], np.array([row]))), x0[row], jac=True,
                       method="L-BFGS-B", options={"ftol": 1e-15, "gtol": 1e-10})
        np.testing.assert_allclose(res.x[row], ref.x, atol=1e-3)
        np.testing.assert_allclose(res.x[row], [shifts[row, 0], shifts[row, 0] ** 2], atol=1e-3)


def test_bootstrap_intervals_are_seeded_and_bracket_the_fit() -> None:
    n, d, loss = chinchilla()
    starts = epoch_grid()[::15]
    first = fit_scaling_law(n, d, loss, starts=starts, bootstrap=40, seed=1)
    again = fit_scaling_law(n, d, loss, starts=starts, bootstrap=40, seed=1)
    assert first.intervals == again.intervals and first.bootstrap == 40
    for name in ("E", "A", "B", "alpha", "beta"):
        lo, hi = first.intervals[name]
        assert lo < hi, name
        assert lo <= getattr(first, name) * 1.05 and getattr(first, name) * 0.95 <= hi, name
    assert set(first.to_json()["intervals"]) == {"E", "A", "B", "alpha", "beta"}


def test_csv_errors_name_the_file_and_column(tmp_path: Path) -> None:
    with pytest.raises(AnalysisInputError, match=r"chinchilla_fig4_points.csv.*no column 'tokens'"):
        load_scaling_csv(DATA, params_col="Model Size", tokens_col="tokens", loss_col="loss")
    bad = tmp_path / "bad.csv"
    bad.write_text("N,D,L\n1e6,1e9,3.0\n2e6,oops,2.9\n")
    with pytest.raises(AnalysisInputError, match=r"bad.csv: column 'D' row 3"):
        load_scaling_csv(bad, params_col="N", tokens_col="D", loss_col="L")
    with pytest.raises(AnalysisInputError, match="exactly one"):
        load_scaling_csv(bad, params_col="N", loss_col="L")
