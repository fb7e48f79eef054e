"""PIA and PIAN: Proximal Initialization Attack (Kong et al., ICLR 2024; arXiv 2305.18355). SPEC 3.6.

Paper: F. Kong, J. Duan, R. Ma, H. Shen, X. Zhu, X. Shi, K. Xu, "An Efficient Membership Inference
Attack for the Diffusion Model by Proximal Initialization". Threat model: white-box query access to
eps_theta (only noise predictions are read).

* eps_0 = eps_theta(x0, 0): the model's noise estimate at the clean image, used as the "proximal
  initialisation" of the noise instead of random noise.
* For each t: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps_0 (the DDIM-style deterministic point), and
  R_t = sum_pixels |eps_0 - eps_theta(x_t, t)|^p with p = 4 (the reference code sums the 4th powers;
  no root). Score = -R_t: a member's noise estimates are consistent, so R_t is small.
* PIAN first rescales eps_0 per sample so that mean(|eps_0|) = sqrt(2/pi), the mean absolute value of
  N(0, I): eps_0 <- eps_0 * sqrt(2/pi) / mean(|eps_0|).

Queries per sample: 1 + number of t's (one eps_0 shared by a sweep over t).
"""

from __future__ import annotations

import math

import numpy as np

from .. import ops
from ..errors import DiffmiaError
from .base import Attack, check_images, check_timesteps

GAUSS_MEAN_ABS = math.sqrt(2 / math.pi)      # E|z| for z ~ N(0, 1)


class PIA(Attack):
    """PIA (Kong et al. 2023, SPEC 3.6). Threat model: white-box query access.

    Arguments: ``t`` (default 200; a tuple of t's is a sweep sharing the single eps_0 query: the primary
    score is the first t, variants ``pia[t=...]``), ``p`` (default 4, the exponent of the per-pixel
    error). Score = -sum |eps_0 - eps_theta(x_t, t)|^p (higher = member). Queries: 1 + number of t's.
    """

    name = "pia"
    paper = ("Kong et al. 2023, An Efficient Membership Inference Attack for the Diffusion Model by Proximal "
             "Initialization")
    threat_model = "white-box"
    normalize = False

    def __init__(self, t=200, p: float = 4):
        self.t = t
        self.p = p

    def _ts(self) -> tuple[int, ...]:
        ts = tuple(int(x) for x in self.t) if isinstance(self.t, (list, tuple)) else (int(self.t),)
        if not ts or len(set(ts)) != len(ts):
            raise DiffmiaError(f"{self.name}: t must be one timestep or distinct timesteps, got {self.t!r}")
        return ts

    def queries_per_sample(self) -> int:
        return 1 + len(self._ts())

    def features(self, target, images, cond=None, seeds=None):
        if not self.p > 0:
            raise DiffmiaError(f"{self.name}: p must be positive, got {self.p}")
        ts = check_timesteps(list(self._ts()), target, self.name)
        x0 = target.to_model_space(check_images(images, self.name))
        abar = target.alphas_cumprod
        eps0 = target.eps(x0, 0, cond)                                 # eps_0 = eps_theta(x0, 0)
        if self.normalize:                                             # PIAN: mean |eps_0| = sqrt(2/pi)
            scale = eps0.flatten(1).abs().mean(1).clamp_min(1e-12)
            eps0 = eps0 * (GAUSS_MEAN_ABS / scale).view(-1, *([1] * (eps0.ndim - 1)))
        out = {}
        for t in ts:
            x_t = ops.q_sample(abar, x0, t, eps0)                      # x_t = sqrt(abar) x0 + sqrt(1-abar) eps_0
            r = (eps0 - target.eps(x_t, t, cond)).abs().pow(self.p)    # |eps_0 - eps_theta(x_t, t)|^p
            out[f"r_{t}"] = r.flatten(1).double().sum(1).cpu().numpy()  # summed, no root
        return out

    def scores(self, features):
        ts = self._ts()
        missing = [t for t in ts if f"r_{t}" not in features]
        if missing:
            raise DiffmiaError(f"{self.name}: features lack t={missing}; score with the t's they were computed with")
        out = {self.name: -np.asarray(features[f"r_{ts[0]}"])}         # score = -R
        if len(ts) > 1:
            out.update({f"{self.name}[t={t}]": -np.asarray(features[f"r_{t}"]) for t in ts})
        return out


class PIAN(PIA):
    """PIAN (Kong et al. 2023, SPEC 3.6): PIA with eps_0 rescaled per sample to mean |eps_0| = sqrt(2/pi)
    (that of N(0, I)) before it is used, both to build x_t and in the error. Same arguments, queries and
    score as :class:`PIA` (variants ``pian[t=...]``)."""

    name = "pian"
    normalize = True
