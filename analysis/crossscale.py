"""Cross-scale models of one target (a stable score or a held-out loss) over parameters N, trunk
tokens D, intro_fraction f and image_ratio r, fitted to every run of every scale at once.

The forms are few and named; `analysis.predict` chooses between them by leave-one-scale-out error.

- ``fixed_optimum``: y = c0 + c1·h_α(N) [+ c2·h_α(D)] + q(f, u), u = log r, q the quadratic surface
  of `analysis.surface` (only the terms the grid identifies). A Chinchilla-style term in N (and D)
  lifts the surface with scale; its optimum stays where it is.
- ``moving_optimum``: fixed_optimum + x·(m_f·f + m_u·u), x = log(N/N_ref): the surface's slopes
  drift with log N, so its optimum f*(N) = −(b_f + m_f·x + b_fu·u) / (2·a_ff) moves with scale,
  linearly in log N: the smallest form in which the best mix depends on N (as in the data-mixing
  laws of Ye et al. 2024 and the joint N, D, mixture laws of Shukor et al. 2025).
- ``two_step`` (scores only): score = lo + span·σ(k·(L0 − L)) of the held-out loss L that goes with
  the score (caption loss for VL, text loss for text), L from the loss's own cross-scale model: the
  OLMo ladder's (N, D) → loss → accuracy.

h_α(N) = ((N/N_ref)^−α − 1)/α (−log(N/N_ref) at α = 0) is Chinchilla's A/N^α up to an affine map, so
at a fixed α every form is linear in its coefficients. α is profiled over a grid (one α for the N
and the D term: Chinchilla's fits give α ≈ β), and the sigmoid's (k, L0) likewise, which makes
every fit — each of a thousand bootstrap refits, each leave-one-scale-out fold — a weighted least
squares: the fits are the rows of a weight matrix, and numpy solves them all at once. With fewer
than three scales α is not identified and is fixed at ALPHA_PRIOR.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from analysis.surface import identifiable_terms

ALPHAS = np.round(np.linspace(0.0, 1.0, 21), 3)  # the profile grid of the N (and D) exponent
ALPHA_PRIOR = 0.3  # α when the fit has fewer than three scales (near Chinchilla's 0.34)
FORMS = ("fixed_optimum", "moving_optimum", "two_step")
VERTEX_ITERATIONS = 4  # fixed-point refits of moving_optimum's vertex terms
LOSS_FOR_SCORE = {"vl_score": "val_caption_loss", "text_score": "val_text_loss"}  # two_step's step 1


@dataclass(frozen=True, kw_only=True, slots=True)
class Runs:
    """One row per run: the model's inputs and every target (NaN where a run lacks it)."""

    n: np.ndarray  # parameters
    d: np.ndarray  # trunk tokens
    f: np.ndarray  # intro_fraction
    u: np.ndarray  # log(image_ratio)
    scale: np.ndarray  # index of the run's scale, 0 = smallest
    values: dict[str, np.ndarray]

    @property
    def n_scales(self) -> int:
        return len(np.unique(self.scale))


def _h(z: np.ndarray, alpha: float) -> np.ndarray:
    return -z if alpha == 0 else np.expm1(-alpha * z) / alpha


@dataclass(frozen=True, kw_only=True, slots=True)
class Design:
    """A linear form's columns and the reference points its features are centred on."""

    form: str
    columns: tuple[str, ...]
    n_ref: float
    d_ref: float
    f_ref: float  # f and u enter centred on the runs' means: an interaction with x is then no
    u_ref: float  # stand-in for a function of x alone (which would bias it when the N term misfits)

    def matrix(self, alpha: float, n, d, f, u) -> np.ndarray:
        x, fc, uc = np.log(n / self.n_ref), f - self.f_ref, u - self.u_ref
        cols = {"1": np.ones_like(x), "h(N)": _h(x, alpha), "h(D)": _h(np.log(d / self.d_ref), alpha),
                "f": fc, "f^2": fc * fc, "u": uc, "u^2": uc * uc, "f*u": fc * uc, "f*x": fc * x, "u*x": uc * x}
        return np.column_stack([np.broadcast_to(cols[c], x.shape) for c in self.columns])


def make_design(form: str, runs: Runs) -> Design:
    """The form's columns that the runs identify (each kept only if it raises the design's rank)."""
    n_ref, d_ref = (float(np.exp(np.log(np.unique(v)).mean())) for v in (runs.n, runs.d))
    per_param = runs.d / runs.n
    tokens_vary = per_param.max() > 1.01 * per_param.min()  # else D is N times a constant
    surface = [t for t in identifiable_terms(runs.f, runs.u) if t != "1"]
    candidates = ["1", "h(N)", *(["h(D)"] if tokens_vary else []), *surface]
    if form == "moving_optimum":
        candidates += [f"{a}*x" for a in ("f", "u") if a in surface]
    refs = {"n_ref": n_ref, "d_ref": d_ref, "f_ref": float(runs.f.mean()), "u_ref": float(runs.u.mean())}
    kept: list[str] = []
    for col in candidates:
        trial = Design(form=form, columns=(*kept, col), **refs)
        if np.linalg.matrix_rank(trial.matrix(ALPHA_PRIOR, runs.n, runs.d, runs.f, runs.u)) == len(kept) + 1:
            kept.append(col)
    return Design(form=form, columns=tuple(kept), **refs)


def _gram(x: np.ndarray, z: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(R, p, q): xᵀ·diag(w)·z for every row w of weights, as one matrix product."""
    p, q = x.shape[1], z.shape[1]
    return (weights @ (x[:, :, None] * z[:, None, :]).reshape(len(x), p * q)).reshape(-1, p, q)


@dataclass(frozen=True, kw_only=True, slots=True)
class NormalEquations:
    """The normal equations of one design under R weightings at every α of the profile, inverted
    once: a refit against new targets (the vertex iterations) is then two small products.

    Every α is done in the same few matrix products (the designs stacked side by side): only the N
    and D columns change with α, so the rest of the Gram matrix is computed once. A relative ridge
    of 1e-9 keeps a resample that lost a column's support solvable.
    """

    alphas: np.ndarray  # (A,)
    weights: np.ndarray  # (R, n)
    xs: np.ndarray  # (n, A·p): the design at every α, side by side
    inverses: np.ndarray  # (A, R, p, p)

    @classmethod
    def build(cls, design: Design, runs: Runs, weights: np.ndarray, alphas: np.ndarray) -> "NormalEquations":
        changing = np.array([c.startswith("h(") for c in design.columns])
        xs = np.stack([design.matrix(float(a), runs.n, runs.d, runs.f, runs.u) for a in alphas], axis=1)
        n, a, p = xs.shape
        r, c = len(weights), int(changing.sum())
        gram = np.empty((a, r, p, p))
        gram[:, :, ~changing[:, None] & ~changing[None, :]] = _gram(
            xs[:, 0, ~changing], xs[:, 0, ~changing], weights).reshape(1, r, -1)
        if c:  # every column against the changing ones, at every α in one product
            cross = (weights @ (xs[:, :, :, None] * xs[:, :, None, changing]).reshape(n, a * p * c))
            cross = cross.reshape(r, a, p, c).transpose(1, 0, 2, 3)
            gram[:, :, :, changing] = cross
            gram[:, :, changing, :] = np.swapaxes(cross, 2, 3)
        ridge = 1e-9 * np.trace(gram, axis1=2, axis2=3) / p + 1e-300
        inverses = np.linalg.inv(gram + ridge[..., None, None] * np.eye(p))
        return cls(alphas=np.asarray(alphas), weights=weights, xs=xs.reshape(n, a * p), inverses=inverses)

    def solve(self, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Coefficients (A, R, p) and SSE (A, R) at every α against per-row targets (R, n)."""
        wy = self.weights * target
        a, p = self.inverses.shape[0], self.inverses.shape[-1]
        rhs = (wy @ self.xs).reshape(len(wy), a, p).transpose(1, 0, 2)
        coef = np.einsum("arpq,arq->arp", self.inverses, rhs)
        return coef, (wy * target).sum(axis=1)[None, :] - np.einsum("arp,arp->ar", coef, rhs)


@dataclass(frozen=True, kw_only=True, slots=True)
class LinearFit:
    """A linear form fitted under R weightings: each row its own α and coefficients (and, for
    moving_optimum, the vertex terms λ·x + κ·x² that keep the peak's height on the N term)."""

    design: Design
    alpha: np.ndarray  # (R,)
    coef: np.ndarray  # (R, p)
    vertex: np.ndarray | None = None  # (R, 2): λ, κ

    def _vertex(self, n, rows) -> np.ndarray | float:
        if self.vertex is None:
            return 0.0
        x = np.log(np.asarray(n, dtype=float) / self.design.n_ref)
        return self.vertex[rows, :1] * x + self.vertex[rows, 1:] * x * x

    def predict(self, n, d, f, u) -> np.ndarray:
        """(R, m) predictions at m points."""
        out = np.empty((len(self.alpha), len(np.atleast_1d(f))))
        for a in np.unique(self.alpha):
            rows = self.alpha == a
            out[rows] = self.coef[rows] @ self.design.matrix(float(a), n, d, f, u).T + self._vertex(n, rows)
        return out

    def predict_each(self, n: float, d: float, f: np.ndarray, u: np.ndarray) -> np.ndarray:
        """(R,) predictions, row r at its own point (f[r], u[r])."""
        out = np.empty(len(self.alpha))
        for a in np.unique(self.alpha):
            rows = self.alpha == a
            x = self.design.matrix(float(a), np.full(rows.sum(), n), np.full(rows.sum(), d), f[rows], u[rows])
            out[rows] = np.einsum("rp,rp->r", self.coef[rows], x) + np.ravel(self._vertex([n], rows))
        return out


def fit_linear(design: Design, runs: Runs, y: np.ndarray, weights: np.ndarray,
               alphas: np.ndarray) -> tuple[LinearFit, NormalEquations]:
    """Profile α over `alphas`: per weighting, the α (and its coefficients) with the least SSE."""
    ok = np.isfinite(y)
    w = weights * ok
    equations = NormalEquations.build(design, runs, w, alphas)
    coef, sse = equations.solve(np.broadcast_to(np.where(ok, y, 0.0), w.shape))
    # the least SSE per row; near-ties (1e-12 relative) go to the smaller α
    best = (sse <= sse.min(axis=0) * (1 + 1e-12) + 1e-300).argmax(axis=0)
    rows = np.arange(len(w))
    return LinearFit(design=design, alpha=equations.alphas[best].astype(float), coef=coef[best, rows]), equations


def vertex_terms(fit: LinearFit, runs: Runs) -> np.ndarray:
    """(R, 2) λ, κ with which the moving optimum's surface is a vertex form Q(f − s_f·x, u − s_u·x)
    on top of the N term: s from the f·x and u·x slopes (m = −H·s, H the surface's Hessian), λ =
    −b·s and κ = ½·sᵀHs. s is 0 where the surface has no maximum, and is clipped so that the optimum
    moves at most the swept range of f (and of log ratio) across the fitted scales."""
    col = dict(zip(fit.design.columns, fit.coef.T))
    zero = np.zeros(len(fit.coef))
    bf, bu, aff, auu, afu, mf, mu = (col.get(c, zero) for c in ("f", "u", "f^2", "u^2", "f*u", "f*x", "u*x"))
    det = 4 * aff * auu - afu * afu
    with np.errstate(divide="ignore", invalid="ignore"):
        if "f*x" in col and "u*x" in col:
            ok = (aff < 0) & (det > 0)
            sf = np.where(ok, (-2 * auu * mf + afu * mu) / det, 0)
            su = np.where(ok, (-2 * aff * mu + afu * mf) / det, 0)
        else:
            sf = np.where(aff < 0, -mf / (2 * aff), 0) if "f*x" in col else zero
            su = np.where(auu < 0, -mu / (2 * auu), 0) if "u*x" in col else zero
    x_span = max(float(np.ptp(np.log(runs.n))), 1e-12)
    sf, su = np.clip(sf, -np.ptp(runs.f) / x_span, np.ptp(runs.f) / x_span), np.clip(su, -np.ptp(runs.u) / x_span,
                                                                                        np.ptp(runs.u) / x_span)
    return np.column_stack([-(sf * bf + su * bu), aff * sf * sf + auu * su * su + afu * sf * su])


def fit_moving(design: Design, runs: Runs, y: np.ndarray, weights: np.ndarray, alphas: np.ndarray,
               iterations: int = VERTEX_ITERATIONS) -> LinearFit:
    """moving_optimum as a vertex form, by fixed point: refit the linear form (at each row's profiled
    α) to y less the vertex terms its last fit implies, until they agree: the peak's height then
    follows the N term alone, instead of the slopes' drift adding a curvature in log N that the N
    term cannot hold."""
    fit, equations = fit_linear(design, runs, y, weights, alphas)
    x = np.log(runs.n / design.n_ref)
    y = np.where(np.isfinite(y), y, 0.0)
    index, rows = np.searchsorted(equations.alphas, fit.alpha), np.arange(len(fit.alpha))
    for _ in range(iterations):
        vertex = vertex_terms(fit, runs)
        coef, _ = equations.solve(y[None, :] - vertex[:, :1] * x - vertex[:, 1:] * x * x)
        fit = LinearFit(design=design, alpha=fit.alpha, coef=coef[index, rows], vertex=vertex)
    return fit


@dataclass(frozen=True, kw_only=True, slots=True)
class SigmoidLink:
    """score = lo + span·σ(k·(L0 − L)) per weighting row."""

    k: np.ndarray
    l0: np.ndarray
    lo: np.ndarray
    span: np.ndarray

    def __call__(self, loss: np.ndarray) -> np.ndarray:
        """(R, m) scores of (R, m) losses."""
        return self.lo[:, None] + self.span[:, None] * expit(self.k[:, None] * (self.l0[:, None] - loss))

    def each(self, loss: np.ndarray) -> np.ndarray:
        """(R,) scores, row r of loss[r]."""
        return self.lo + self.span * expit(self.k * (self.l0 - loss))


def fit_sigmoid(loss: np.ndarray, score: np.ndarray, weights: np.ndarray) -> SigmoidLink:
    """The sigmoid from held-out loss to score, (k, L0) profiled on a grid, (lo, span) in closed form."""
    ok = np.isfinite(loss) & np.isfinite(score)
    w, loss, score = weights * ok, np.where(ok, loss, 0.0), np.where(ok, score, 0.0)
    spread = float(np.std(loss[ok])) or 1.0
    ks = np.geomspace(0.3, 30.0, 12) / spread
    l0s = np.linspace(loss[ok].min() - spread, loss[ok].max() + spread, 16)
    kk, ll = (a.ravel() for a in np.meshgrid(ks, l0s, indexing="ij"))
    z = expit(kk[None, :] * (ll[None, :] - loss[:, None]))  # (n, C)
    s0, sy, syy = w.sum(1), w @ score, w @ (score * score)
    s1, s2, szy = w @ z, w @ (z * z), w @ (z * score[:, None])
    det = s0[:, None] * s2 - s1 * s1
    safe = np.where(det > 1e-12 * s0[:, None] ** 2, det, np.inf)
    span = (s0[:, None] * szy - s1 * sy[:, None]) / safe
    lo = (sy[:, None] - span * s1) / np.maximum(s0[:, None], 1e-300)
    sse = np.where(np.isfinite(safe), syy[:, None] - lo * sy[:, None] - span * szy, np.inf)
    c = sse.argmin(axis=1)
    rows = np.arange(len(w))
    return SigmoidLink(k=kk[c], l0=ll[c], lo=lo[rows, c], span=span[rows, c])


@dataclass(frozen=True, kw_only=True, slots=True)
class TwoStepFit:
    """Score from the predicted held-out loss (OLMo ladder's step 2 on top of the loss's form)."""

    loss: LinearFit
    link: SigmoidLink

    @property
    def design(self) -> Design:
        return self.loss.design

    def predict(self, n, d, f, u) -> np.ndarray:
        return self.link(self.loss.predict(n, d, f, u))

    def predict_each(self, n: float, d: float, f: np.ndarray, u: np.ndarray) -> np.ndarray:
        return self.link.each(self.loss.predict_each(n, d, f, u))


TargetFit = LinearFit | TwoStepFit


def fit_target(form: str, target: str, runs: Runs, weights: np.ndarray, *,
               loss_form: str = "moving_optimum") -> TargetFit:
    """Fit `form` of `target` under every row of `weights` (R, n_runs) at once."""
    alphas = ALPHAS if runs.n_scales >= 3 and _scales_per_row(runs, weights) >= 3 else np.array([ALPHA_PRIOR])
    if form == "two_step":
        loss_name = LOSS_FOR_SCORE[target]
        loss = _fit_linear_form(loss_form, runs, runs.values[loss_name], weights, alphas)
        return TwoStepFit(loss=loss, link=fit_sigmoid(runs.values[loss_name], runs.values[target], weights))
    return _fit_linear_form(form, runs, runs.values[target], weights, alphas)


def _fit_linear_form(form: str, runs: Runs, y: np.ndarray, weights: np.ndarray, alphas: np.ndarray) -> LinearFit:
    design = make_design(form, runs)
    if form == "moving_optimum" and any(c.endswith("*x") for c in design.columns):
        return fit_moving(design, runs, y, weights, alphas)
    return fit_linear(design, runs, y, weights, alphas)[0]


def _scales_per_row(runs: Runs, weights: np.ndarray) -> int:
    """The fewest scales any weighting row gives weight to (a leave-one-scale-out fold has one fewer)."""
    present = np.stack([(weights[:, runs.scale == s] > 0).any(axis=1) for s in np.unique(runs.scale)], axis=1)
    return int(present.sum(axis=1).min())


# The fitted surface at one size is a quadratic in the centred (f, u), whatever the form: six
# probe points give its coefficients [1, f, uc, f², uc², f·uc] exactly, and the best mix follows in
# closed form instead of from a grid.
_PROBES = np.array([(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1), (1, 1)], dtype=float)
_MONOMIALS = np.linalg.inv(np.column_stack([np.ones(6), _PROBES[:, 0], _PROBES[:, 1], _PROBES[:, 0] ** 2,
                                            _PROBES[:, 1] ** 2, _PROBES[:, 0] * _PROBES[:, 1]]))


def objective_quadratic(fit: TargetFit, n: float, d: float) -> np.ndarray:
    """(R, 6) quadratic in centred (f, u) whose maximum is where the fit's prediction at (n, d) is largest:
    the prediction itself, or for two_step the loss, negated where the score rises as the loss falls."""
    linear = fit.loss if isinstance(fit, TwoStepFit) else fit
    ref = linear.design
    values = linear.predict(np.full(6, n), np.full(6, d), _PROBES[:, 0] + ref.f_ref, _PROBES[:, 1] + ref.u_ref)
    q = values @ _MONOMIALS.T
    if isinstance(fit, TwoStepFit):
        q = q * -np.sign(np.where(fit.link.span == 0, 1.0, fit.link.span))[:, None]
    return q


def _quadratic(q: np.ndarray, f: np.ndarray, u: np.ndarray) -> np.ndarray:
    return q[:, :1] + q[:, 1:2] * f + q[:, 2:3] * u + q[:, 3:4] * f * f + q[:, 4:5] * u * u + q[:, 5:6] * f * u


def box_argmax(q: np.ndarray, f_range: tuple[float, float],
               u_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the (f, uc) maximising the quadratic over the box: its corners, the best point of
    each edge and the interior stationary point are the only candidates."""
    c, bf, bu, aff, auu, afu = q.T
    (f0, f1), (u0, u1) = f_range, u_range
    with np.errstate(divide="ignore", invalid="ignore"):
        fs, us = [], []
        for fe in (f0, f1):  # edges at fixed f: the best u, or an end when the quadratic is not concave
            fs += [np.full(len(q), fe)] * 3
            us += [np.full(len(q), u0), np.full(len(q), u1),
                   np.where(auu < 0, np.clip(-(bu + afu * fe) / (2 * auu), u0, u1), u0)]
        for ue in (u0, u1):
            us.append(np.full(len(q), ue))
            fs.append(np.where(aff < 0, np.clip(-(bf + afu * ue) / (2 * aff), f0, f1), f0))
        det = 4 * aff * auu - afu * afu
        fi, ui = (-2 * auu * bf + afu * bu) / det, (-2 * aff * bu + afu * bf) / det
        inside = (aff < 0) & (det > 0) & (fi >= f0) & (fi <= f1) & (ui >= u0) & (ui <= u1)
        fs.append(np.where(inside, fi, f0))
        us.append(np.where(inside, ui, u0))
    f_c, u_c = np.column_stack(fs), np.column_stack(us)
    best = _quadratic(q, f_c, u_c).argmax(axis=1)
    rows = np.arange(len(q))
    return f_c[rows, best], u_c[rows, best]


def best_mix(fit: TargetFit, n: float, d: float, f_range: tuple[float, float],
             u_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(R,) best intro_fraction and log(image_ratio) at (n, d), within the given ranges."""
    f_ref, u_ref = fit.design.f_ref, fit.design.u_ref
    fc, uc = box_argmax(objective_quadratic(fit, n, d), (f_range[0] - f_ref, f_range[1] - f_ref),
                        (u_range[0] - u_ref, u_range[1] - u_ref))
    return fc + f_ref, uc + u_ref
