"""A batched L-BFGS: many independent small problems minimised at once with numpy.

Each row of `x0` is its own problem with its own curvature history and its own backtracking line
search; only the objective is shared code, evaluated for all active rows in one vectorised call.
This is what makes thousands of scaling-law starts take seconds instead of minutes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

# fun(x_rows, row_indices) -> (f of shape (k,), grad of shape (k, p)) for the given rows
BatchObjective = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchResult:
    x: np.ndarray  # (S, p) final points
    fun: np.ndarray  # (S,) objective values there
    iterations: int  # iterations of the longest-running row
    converged: np.ndarray  # (S,) bool: stopped by tolerance, not by max_iter


def _two_loop(g: np.ndarray, s_hist: np.ndarray, y_hist: np.ndarray, rho: np.ndarray,
              order: list[int]) -> np.ndarray:
    """H·g by the L-BFGS two-loop recursion, for every row at once (rho = 0 marks empty pairs)."""
    q = g.copy()
    alpha = np.zeros((g.shape[0], len(order)))
    for j, slot in enumerate(reversed(order)):
        alpha[:, j] = rho[:, slot] * np.einsum("ij,ij->i", s_hist[:, slot], q)
        q -= alpha[:, j, None] * y_hist[:, slot]
    newest = order[-1] if order else None
    if newest is not None:
        yy = np.einsum("ij,ij->i", y_hist[:, newest], y_hist[:, newest])
        sy = np.where(rho[:, newest] > 0, 1.0 / np.where(rho[:, newest] > 0, rho[:, newest], 1.0), 0.0)
        gamma = np.where((yy > 0) & (sy > 0), sy / np.where(yy > 0, yy, 1.0), 1.0)
        q *= gamma[:, None]
    for j, slot in enumerate(order):
        beta = rho[:, slot] * np.einsum("ij,ij->i", y_hist[:, slot], q)
        q += s_hist[:, slot] * (alpha[:, len(order) - 1 - j] - beta)[:, None]
    return q


def minimize_batch(fun: BatchObjective, x0: np.ndarray, *, memory: int = 10, max_iter: int = 500,
                   ftol: float = 2.2e-9, gtol: float = 1e-8, max_backtracks: int = 30) -> BatchResult:
    """Minimise each row of x0 independently; stops a row when its relative decrease < ftol."""
    x = np.array(x0, dtype=np.float64)
    n, p = x.shape
    f, g = fun(x, np.arange(n))
    s_hist, y_hist = np.zeros((n, memory, p)), np.zeros((n, memory, p))
    rho = np.zeros((n, memory))
    active, converged = np.ones(n, bool), np.zeros(n, bool)
    order: list[int] = []
    it = 0
    for it in range(1, max_iter + 1):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        d = -_two_loop(g[idx], s_hist[idx], y_hist[idx], rho[idx], order)
        first = ~rho[idx].any(axis=1)  # no curvature yet: a unit-length steepest-descent step
        gnorm = np.linalg.norm(g[idx], axis=1)
        d[first] = -g[idx][first] / np.maximum(gnorm[first], 1e-300)[:, None]
        slope = np.einsum("ij,ij->i", g[idx], d)
        bad = slope >= 0  # lost descent (numerical noise): restart from steepest descent
        d[bad], slope[bad] = -g[idx][bad], -gnorm[bad] ** 2
        x_new, f_new, g_new, ok = _line_search(fun, idx, x[idx], f[idx], d, slope, max_backtracks)
        slot = it % memory
        s, y = x_new - x[idx], g_new - g[idx]
        sy = np.einsum("ij,ij->i", s, y)
        keep = sy > 1e-12 * np.maximum(np.einsum("ij,ij->i", y, y), 1e-300)
        s_hist[idx, slot], y_hist[idx, slot] = s, y
        rho[idx, slot] = np.where(keep, 1.0 / np.where(keep, sy, 1.0), 0.0)
        order = [o for o in order if o != slot] + [slot]
        small = np.abs(f[idx] - f_new) <= ftol * np.maximum(np.maximum(np.abs(f[idx]), np.abs(f_new)), 1.0)
        flat = np.abs(g_new).max(axis=1) <= gtol
        x[idx], f[idx], g[idx] = np.where(ok[:, None], x_new, x[idx]), np.where(ok, f_new, f[idx]), \
            np.where(ok[:, None], g_new, g[idx])
        done = (ok & (small | flat)) | ~ok  # a failed line search means no further progress is possible
        converged[idx[done]] = True
        active[idx[done]] = False
    return BatchResult(x=x, fun=f, iterations=it, converged=converged)


def _line_search(fun: BatchObjective, idx: np.ndarray, x: np.ndarray, f: np.ndarray, d: np.ndarray,
                 slope: np.ndarray, max_backtracks: int, c1: float = 1e-4):
    """Backtracking (Armijo) from step 1, halving per row until each row's decrease is sufficient."""
    t = np.ones(len(idx))
    x_new, f_new, g_new = x.copy(), f.copy(), np.zeros_like(x)
    ok = np.zeros(len(idx), bool)
    todo = np.arange(len(idx))
    for _ in range(max_backtracks):
        trial = x[todo] + t[todo, None] * d[todo]
        ft, gt = fun(trial, idx[todo])
        accept = np.isfinite(ft) & (ft <= f[todo] + c1 * t[todo] * slope[todo])
        acc = todo[accept]
        x_new[acc], f_new[acc], g_new[acc], ok[acc] = trial[accept], ft[accept], gt[accept], True
        todo = todo[~accept]
        if todo.size == 0:
            break
        t[todo] *= 0.5
    return x_new, f_new, g_new, ok
