"""Chinchilla Approach 3: L(N, D) = E + A/N^alpha + B/D^beta, fitted as Hoffmann et al. and Epoch AI do.

Huber loss (delta = 1e-3) on log-loss residuals, L-BFGS from a grid of starts, best start wins,
bootstrap intervals by refitting on resampled points. The objective is vectorised over starts with
an analytic gradient and minimised by `analysis.lbfgs`; the best few starts are polished by scipy.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from scipy.optimize import minimize

from analysis.errors import AnalysisInputError
from analysis.lbfgs import minimize_batch

PARAM_NAMES = ("E", "A", "B", "alpha", "beta")


@dataclass(frozen=True, kw_only=True, slots=True)
class ScalingFit:
    E: float  # irreducible loss
    A: float  # parameter term coefficient
    B: float  # data term coefficient
    alpha: float  # parameter exponent
    beta: float  # data exponent
    objective: float  # Huber objective at the optimum (sum over points)
    n_points: int
    n_starts: int
    bootstrap: int = 0  # resamples behind `intervals` (0 = none)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (lo, hi)

    def predict(self, params, tokens) -> np.ndarray:
        return predict_loss(self, params, tokens)

    def to_json(self) -> dict:
        out = {name: getattr(self, name) for name in PARAM_NAMES}
        out.update(objective=self.objective, n_points=self.n_points, n_starts=self.n_starts)
        if self.bootstrap:
            out.update(bootstrap=self.bootstrap,
                       intervals={k: list(v) for k, v in self.intervals.items()})
        return out


def predict_loss(fit: ScalingFit, params, tokens) -> np.ndarray:
    n, d = np.asarray(params, dtype=float), np.asarray(tokens, dtype=float)
    return fit.E + fit.A / n ** fit.alpha + fit.B / d ** fit.beta


def epoch_grid() -> np.ndarray:
    """Hoffmann et al.'s starts as Epoch AI ran them: rows of (log E, log A, log B, alpha, beta)."""
    exps = np.arange(0.0, 2.01, 0.5)
    log_e = np.arange(-1.0, 1.01, 0.5)
    log_ab = np.arange(0.0, 25.1, 5.0)
    return np.array(list(itertools.product(log_e, log_ab, log_ab, exps, exps)))


def coarse_grid() -> np.ndarray:
    """Every 45th start of `epoch_grid()` (100 starts: every value of log E, log A, log B and alpha,
    beta at 0) for interactive fits. With L-BFGS polish it reached the full grid's optimum on
    Chinchilla's points and on five synthetic laws, in ~1/10-1/20 of the time (strides 43 and 47,
    which vary beta too, missed it on one law each). Publishable fits should use the full grid."""
    return epoch_grid()[::45]


def huber_objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray,
                    weights: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Σ_i w_i·Huber_δ(LSE(e, a − α·log N_i, b − β·log D_i) − log L_i) and its gradient, per row of theta."""
    e, a, b, alpha, beta = (theta[:, k:k + 1] for k in range(5))
    terms = np.stack([np.broadcast_to(e, (len(theta), len(log_n))), a - alpha * log_n, b - beta * log_d])
    top = terms.max(axis=0)
    ex = np.exp(terms - top)
    total = ex.sum(axis=0)
    r = top + np.log(total) - log_l
    absr = np.abs(r)
    with np.errstate(over="ignore", invalid="ignore"):  # far-off starts overflow to inf: never accepted
        f = (weights * np.where(absr <= delta, 0.5 * r * r, delta * (absr - 0.5 * delta))).sum(axis=1)
    gr = weights * np.clip(r, -delta, delta) / total  # dHuber/dr times the softmax's denominator
    g1, g2 = gr * ex[1], gr * ex[2]
    grad = np.stack([(gr * ex[0]).sum(1), g1.sum(1), g2.sum(1), -(g1 * log_n).sum(1),
                     -(g2 * log_d).sum(1)], axis=1)
    return f, grad


def fit_scaling_law(params, tokens, loss, *, starts: np.ndarray | None = None, delta: float = 1e-3,
                    bootstrap: int = 0, seed: int = 0, confidence: float = 0.95,
                    polish: int = 5) -> ScalingFit:
    """Fit Approach 3 from every start (default: `epoch_grid()`); bootstrap > 0 adds intervals."""
    log_n, log_d, log_l = _logs(params, tokens, loss)
    grid = epoch_grid() if starts is None else np.asarray(starts, dtype=float)
    best = _best_of_starts(log_n, log_d, log_l, np.ones(len(log_n)), grid, delta, polish)
    fit = _as_fit(best, log_n, log_d, log_l, delta, len(grid))
    if bootstrap <= 0:
        return fit
    draws = _bootstrap_params(log_n, log_d, log_l, best, grid, delta, bootstrap, seed)
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(draws, [tail, 100 - tail], axis=0)
    intervals = {name: (float(lo[k]), float(hi[k])) for k, name in enumerate(PARAM_NAMES)}
    return ScalingFit(**{**{n: getattr(fit, n) for n in PARAM_NAMES}, "objective": fit.objective,
                         "n_points": fit.n_points, "n_starts": fit.n_starts},
                      bootstrap=bootstrap, intervals=intervals)


def _logs(params, tokens, loss) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    arrays = [np.asarray(v, dtype=float).ravel() for v in (params, tokens, loss)]
    if len({len(a) for a in arrays}) != 1 or len(arrays[0]) < 5:
        raise AnalysisInputError("scaling fit needs params, tokens and loss of equal length, at least 5 points")
    for name, a in zip(("params", "tokens", "loss"), arrays):
        if not np.all(np.isfinite(a)) or np.any(a <= 0):
            raise AnalysisInputError(f"scaling fit: every {name} value must be finite and positive")
    return tuple(np.log(a) for a in arrays)  # type: ignore[return-value]


def _best_of_starts(log_n, log_d, log_l, weights, grid, delta, polish) -> np.ndarray:
    """Batched L-BFGS from every start, then scipy L-BFGS-B on the best few; the lowest wins."""
    def fun(x, rows):
        return huber_objective(x, log_n, log_d, log_l, weights[None, :], delta)
    batch = minimize_batch(fun, grid)
    order = np.argsort(np.where(np.isfinite(batch.fun), batch.fun, np.inf))[:polish]
    best_x, best_f = batch.x[order[0]], batch.fun[order[0]]
    for x0 in batch.x[order]:
        res = minimize(lambda t: _scalar(fun, t), x0, jac=True, method="L-BFGS-B")
        if np.isfinite(res.fun) and res.fun < best_f:
            best_x, best_f = res.x, res.fun
    return np.asarray(best_x)


def _scalar(fun, theta: np.ndarray) -> tuple[float, np.ndarray]:
    f, g = fun(theta[None, :], None)
    return float(f[0]), g[0]


def _as_fit(x: np.ndarray, log_n, log_d, log_l, delta: float, n_starts: int) -> ScalingFit:
    f, _ = huber_objective(x[None, :], log_n, log_d, log_l, np.ones((1, len(log_n))), delta)
    return ScalingFit(E=float(np.exp(x[0])), A=float(np.exp(x[1])), B=float(np.exp(x[2])),
                      alpha=float(x[3]), beta=float(x[4]), objective=float(f[0]),
                      n_points=len(log_n), n_starts=n_starts)


def _bootstrap_params(log_n, log_d, log_l, best, grid, delta, n_boot, seed, chunk_rows=6000) -> np.ndarray:
    """Refit on resampled points (as multiplicity weights); rows of (E, A, B, alpha, beta).

    Each resample starts from the full-data optimum and from every 9th grid start: started from
    the optimum alone, L-BFGS stalls at the Huber loss's kinks and the intervals come out far too
    narrow. Resamples are batched together, `chunk_rows` optimizer rows at a time.
    """
    rng = np.random.default_rng(seed)
    n = len(log_n)
    weights = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(n_boot)]).astype(float)
    starts = np.vstack([best[None, :], grid[::9]])
    per_chunk = max(1, chunk_rows // len(starts))
    out = np.empty((n_boot, 5))
    for lo in range(0, n_boot, per_chunk):
        w = np.repeat(weights[lo:lo + per_chunk], len(starts), axis=0)

        def fun(x, rows, w=w):
            return huber_objective(x, log_n, log_d, log_l, w[rows], delta)
        batch = minimize_batch(fun, np.tile(starts, (len(w) // len(starts), 1)))
        f = np.where(np.isfinite(batch.fun), batch.fun, np.inf).reshape(-1, len(starts))
        out[lo:lo + len(f)] = batch.x.reshape(-1, len(starts), 5)[np.arange(len(f)), f.argmin(axis=1)]
    return np.column_stack([np.exp(out[:, :3]), out[:, 3:]])


def load_scaling_csv(path: str | Path, *, params_col: str, loss_col: str, tokens_col: str | None = None,
                     flops_col: str | None = None, drop_highest_loss: int = 0
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, D, L) from a CSV; D = tokens, or FLOPs / 6N. Drops the K highest-loss rows if asked."""
    path = Path(path)
    if (tokens_col is None) == (flops_col is None):
        raise AnalysisInputError(f"{path}: give exactly one of a tokens column or a FLOPs column")
    try:
        frame = pl.read_csv(path, infer_schema_length=None)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise AnalysisInputError(f"{path}: cannot read CSV ({exc})") from exc
    cols = [c for c in (params_col, loss_col, tokens_col, flops_col) if c is not None]
    for col in cols:
        if col not in frame.columns:
            raise AnalysisInputError(f"{path}: no column {col!r}; columns are {', '.join(frame.columns)}")
        bad = frame.with_row_index().filter(~pl.col(col).cast(pl.Float64, strict=False).is_finite().fill_null(False)
                                            | (pl.col(col).cast(pl.Float64, strict=False) <= 0))
        if len(bad):
            raise AnalysisInputError(f"{path}: column {col!r} row {bad['index'][0] + 2} is "
                                     f"{bad[col][0]!r}; every value must be a positive number")
    frame = frame.select(pl.col(c).cast(pl.Float64) for c in dict.fromkeys(cols))
    if drop_highest_loss:
        frame = frame.sort(loss_col, descending=True).slice(drop_highest_loss)
    n = frame[params_col].to_numpy()
    d = frame[tokens_col].to_numpy() if tokens_col else frame[flops_col].to_numpy() / (6 * n)
    return n, d, frame[loss_col].to_numpy()
