"""Benchmark: the batched full-grid Approach-3 fit against a plain scipy L-BFGS-B loop over the same starts.

The plain loop is what Epoch AI's replication runs (scipy.optimize.minimize per start, numerical
gradient); it is timed on a random subset of starts and extrapolated to the whole grid, as printed.
Run: .venv/bin/python benchmarks/fit_scaling.py [--subset 150]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.special import huber

from analysis.scaling import epoch_grid, fit_scaling_law, load_scaling_csv

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "chinchilla_fig4_points.csv"


def plain_objective(theta, log_n, log_d, log_l, delta=1e-3):
    e, a, b, alpha, beta = theta
    pred = np.logaddexp.reduce([np.full_like(log_n, e), a - alpha * log_n, b - beta * log_d], axis=0)
    return float(np.sum(huber(delta, pred - log_l)))


def plain_loop(starts, log_n, log_d, log_l):
    best = None
    for x0 in starts:
        res = minimize(plain_objective, x0, args=(log_n, log_d, log_l), method="L-BFGS-B")
        if best is None or res.fun < best.fun:
            best = res
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subset", type=int, default=150, help="starts the plain loop is timed on")
    args = parser.parse_args()
    n, d, loss = load_scaling_csv(DATA, params_col="Model Size", flops_col="Training FLOP",
                                  loss_col="loss", drop_highest_loss=5)
    grid = epoch_grid()
    t0 = time.perf_counter()
    fit = fit_scaling_law(n, d, loss)
    batched = time.perf_counter() - t0
    print(f"batched fit, {len(grid)} starts: {batched:.2f} s -> E={fit.E:.3f} A={fit.A:.1f} "
          f"B={fit.B:.1f} alpha={fit.alpha:.4f} beta={fit.beta:.4f}")
    subset = grid[np.random.default_rng(0).choice(len(grid), args.subset, replace=False)]
    t0 = time.perf_counter()
    plain_loop(subset, np.log(n), np.log(d), np.log(loss))
    per_start = (time.perf_counter() - t0) / args.subset
    plain = per_start * len(grid)
    print(f"plain scipy L-BFGS-B loop (numerical gradient): {per_start * 1e3:.1f} ms/start on "
          f"{args.subset} random starts, extrapolated to {len(grid)} starts: {plain:.1f} s")
    print(f"result: batched full-grid fit {batched:.2f} s vs plain scipy loop {plain:.1f} s "
          f"(extrapolated from {args.subset}/{len(grid)} starts): {plain / batched:.0f}x faster (target >= 20x)")


if __name__ == "__main__":
    main()
