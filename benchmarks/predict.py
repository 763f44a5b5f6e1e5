"""Benchmark: a prediction with 1,000 bootstrap resamples on a 300-run, 4-scale synthetic study,
against the plain way to write it: a scipy loop that refits each target's chosen form per
resample (scipy.optimize.least_squares over α, the coefficients and, for moving_optimum, the
optimum's drift s, and over two_step's sigmoid) and finds the best mix with L-BFGS-B.

The batched prediction (`analysis.predict.predict_scale`) also chooses the forms by
leave-one-scale-out error and draws the frontier band and the trend, which the plain loop does not
do: the comparison is conservative. The plain loop is timed on a subset of resamples and
extrapolated to 1,000, as printed, with its best f on the full data beside the batched one.
Run: .venv/bin/python benchmarks/predict.py [--subset 20]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import polars as pl
from scipy.optimize import least_squares, minimize

from analysis.crossscale import LOSS_FOR_SCORE, make_design
from analysis.predict import bootstrap_weights, predict_scale, runs_arrays
from analysis.predict_io import prediction_runs
from analysis.store import connect, ingest
from analysis.synthetic import SyntheticSpec, write_synthetic_study
from analysis.synthetic_law import KnownLaw

TARGET = 1.4e9
SPEC = SyntheticSpec(scales=("1m", "5m", "79m", "411m"), intro_fractions=(0.0, 0.25, 0.5, 0.75, 1.0),
                     image_ratios=(0.03, 0.06, 0.12, 0.25, 0.5), seeds=(0, 1, 2), finetune_epochs=(1,),
                     metric_rows=2, law=KnownLaw())


def study_runs() -> pl.DataFrame:
    root = tempfile.mkdtemp(prefix="bench-predict-")
    write_synthetic_study(root, SPEC)
    ingest(root)
    with connect(root) as con:
        return prediction_runs(con, "synthetic")[0]


def plain_model(form, design, theta, n, f, u):
    """The form in its natural nonlinear parametrisation: α, c0, c1, the surface, then s_f, s_u."""
    alpha, c0, c1, bf, aff, bu, auu, afu = theta[:8]
    x = np.log(n / design.n_ref)
    sf, su = (theta[8], theta[9]) if form == "moving_optimum" else (0.0, 0.0)
    fc, uc = f - design.f_ref - sf * x, u - design.u_ref - su * x
    h = -x if abs(alpha) < 1e-9 else np.expm1(-alpha * x) / alpha
    return c0 + c1 * h + bf * fc + aff * fc ** 2 + bu * uc + auu * uc ** 2 + afu * fc * uc


def plain_fit(form, design, runs, y, w):
    k = 10 if form == "moving_optimum" else 8
    x0 = np.r_[0.3, np.mean(y), np.zeros(k - 2)]
    lo, hi = np.r_[0.0, np.full(k - 1, -np.inf)], np.r_[1.0, np.full(k - 1, np.inf)]
    sw = np.sqrt(w)
    return least_squares(lambda t: sw * (plain_model(form, design, t, runs.n, runs.f, runs.u) - y), x0,
                         bounds=(lo, hi)).x


def sigmoid(loss, lo, span, k, l0):
    return lo + span / (1 + np.exp(-k * (l0 - loss)))


def plain_sigmoid(loss, score, sw):
    x0 = [score.min(), np.ptp(score), 1.0 / np.std(loss), loss.mean()]
    return least_squares(lambda t: sw * (sigmoid(loss, *t) - score), x0).x


def plain_resample(forms, runs, w, f_range, u_range):
    """Every target refitted under weights w, then the best mix at TARGET (VL's maximum)."""
    thetas, links = {}, {}
    for target, form in forms.items():
        own = LOSS_FOR_SCORE.get(target) if form == "two_step" else target
        linear = forms[own] if form == "two_step" else form
        design = make_design(linear, runs)
        thetas[target] = (linear, design, plain_fit(linear, design, runs, runs.values[own], w))
        if form == "two_step":
            links[target] = plain_sigmoid(runs.values[own], runs.values[target], np.sqrt(w))
    linear, design, theta = thetas["vl_score"]
    sign = 1.0 if "vl_score" not in links else np.sign(links["vl_score"][1])

    def neg_vl(p):
        value = plain_model(linear, design, theta, np.array([TARGET]), np.array([p[0]]), np.array([p[1]]))[0]
        return -sign * value if "vl_score" in links else -value
    starts = [(f, u) for f in f_range for u in u_range]
    best = min((minimize(neg_vl, s, bounds=[f_range, u_range], method="L-BFGS-B") for s in starts),
               key=lambda r: r.fun)
    return best.x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subset", type=int, default=20, help="resamples the plain loop is timed on")
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()
    frame = study_runs()
    print(f"study: {len(frame)} runs at {frame['scale'].n_unique()} scales, predicting {TARGET:.3g} parameters")
    t0 = time.perf_counter()
    prediction = predict_scale(frame, params=TARGET, bootstrap=args.bootstrap, seed=0)
    batched = time.perf_counter() - t0
    print(f"batched: forms {prediction.forms}, best f {prediction.best_intro_fraction}, "
          f"{args.bootstrap} resamples in {batched:.2f} s")
    runs, _ = runs_arrays(frame)
    f_range, u_range = (runs.f.min(), runs.f.max()), (runs.u.min(), runs.u.max())
    full = plain_resample(prediction.forms, runs, np.ones(len(runs.n)), f_range, u_range)
    weights = bootstrap_weights(runs.scale, args.subset, np.random.default_rng(0))
    t0 = time.perf_counter()
    draws = [plain_resample(prediction.forms, runs, w, f_range, u_range) for w in weights]
    per = (time.perf_counter() - t0) / args.subset
    plain = per * args.bootstrap
    print(f"plain scipy loop: best f on the full data {full[0]:.3f} "
          f"(batched {prediction.best_intro_fraction.estimate:.3f}); "
          f"{per:.2f} s per resample on {args.subset}, spread of best f {np.std([d[0] for d in draws]):.3f}")
    print(f"result: prediction with {args.bootstrap} bootstrap resamples on {len(frame)} runs, 4 scales: batched "
          f"{batched:.2f} s vs plain scipy loop {plain:.0f} s (extrapolated from {args.subset}): "
          f"{plain / batched:.0f}x faster (targets <= 10 s and >= 10x)")


if __name__ == "__main__":
    main()
