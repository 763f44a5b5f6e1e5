"""A closed-form law of how a final model's scores and held-out losses depend on its parameters N,
intro_fraction f and image_ratio r: the known truth a synthetic study is drawn from when a test
must check that a prediction recovers it (`SyntheticSpec.law`), and the held-out losses of every
synthetic study.

The VL score peaks at a best f and ratio that move log-linearly in N — by default from f = 0.6 at
1M parameters to f = 0.85 at 1.4B, and from 30% to 12% image tokens (small models prefer more) —
under a Chinchilla-style rise with N; `f_curvature = 0` removes its f-dependence altogether.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True, slots=True)
class KnownLaw:
    n_small: float = 1e6  # where the best values are best_*_small ...
    n_large: float = 1.4e9  # ... and where they are best_*_large (log-linear in N between and beyond)
    best_f_small: float = 0.6
    best_f_large: float = 0.85
    f_curvature: float = 0.12  # VL lost 1.0 away from the best f; 0: the VL score ignores f
    best_ratio_small: float = 0.3
    best_ratio_large: float = 0.12
    ratio_curvature: float = 0.03  # VL lost per squared unit of log(ratio / best ratio)
    alpha: float = 0.3  # exponent of every N term
    vl_max: float = 0.55  # the VL score at the best point tends to vl_max - vl_gain·(N/n_small)^-alpha
    vl_gain: float = 0.35
    text_max: float = 0.5
    text_gain: float = 0.3

    def position(self, n: float) -> float:
        """0 at n_small, 1 at n_large, linear in log N."""
        return math.log(n / self.n_small) / math.log(self.n_large / self.n_small)

    def best_f(self, n: float) -> float:
        return self.best_f_small + (self.best_f_large - self.best_f_small) * self.position(n)

    def best_ratio(self, n: float) -> float:
        t = self.position(n)
        return math.exp((1 - t) * math.log(self.best_ratio_small) + t * math.log(self.best_ratio_large))

    def _power(self, n: float) -> float:
        return (n / self.n_small) ** -self.alpha

    def vl(self, n: float, f: float, ratio: float) -> float:
        """Stable VL score of the fine-tuned model."""
        return (self.vl_max - self.vl_gain * self._power(n) - self.f_curvature * (f - self.best_f(n)) ** 2
                - self.ratio_curvature * math.log(ratio / self.best_ratio(n)) ** 2)

    def text(self, n: float, f: float, ratio: float) -> float:
        """Stable text score: more text pre-training before images helps, more image tokens cost a little."""
        return self.text_max - self.text_gain * self._power(n) + 0.06 * f - 0.05 * ratio

    def text_loss(self, n: float, f: float | None, ratio: float) -> float:
        """Held-out text loss (nats/token); f None: the text-only trunk (no image stage)."""
        images = 0.0 if f is None else 0.15 * (1 - f) + 0.1 * ratio
        return 1.8 + 1.2 * self._power(n) + images

    def caption_loss(self, n: float, f: float, ratio: float) -> float:
        """Held-out caption loss: more image tokens and a better-trained LM lower it."""
        return 1.5 + 1.5 * self._power(n) - 0.08 * math.log(ratio / 0.1) - 0.05 * f
