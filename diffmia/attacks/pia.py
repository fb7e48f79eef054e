"""PIA: Proximal Initialization Attack (Kong et al., ICLR 2024; arXiv 2305.18355).

Paper: F. Kong, J. Duan, R. Ma, H. Shen, X. Zhu, X. Shi, K. Xu, "An Efficient Membership Inference
Attack for the Diffusion Model by Proximal Initialization". Threat model: white-box query access to
eps_theta (only noise predictions are read). PIAN, the paper's normalised variant, is in ``pian.py``.

The paper's method section ("proximal initialization") in the notation of this file (tags P1-P4 mark
the lines below that implement each step; our reference of the paper is its method description, so
the tags follow the steps rather than the paper's equation numbers):

* (P1) eps_0 = eps_theta(x0, 0): the model's noise estimate at the clean image and t = 0, used as the
  *proximal initialisation* of the deterministic (DDIM, eta = 0) trajectory through x0 instead of a
  random noise draw;
* (P2) x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps_0: the ground-truth point of that trajectory at t;
* (P3) R_{t,p} = sum_pixels |eps_0 - eps_theta(x_t, t)|^p with p = 4: the paper's attack metric R_{t,p},
  an l_p distance (the reference code sums the 4th powers and takes no root, so neither do we);
* (P4) score = -R_{t,p}: a member's noise estimates agree along its own trajectory, so R is small.

The paper phrases the distance between the *points* x_{t-1} predicted from x_t and the ground-truth
x_{t-1}; with a deterministic DDIM step both are affine in the noise, and their difference is
c_t (eps_0 - eps_theta(x_t, t)) with c_t = sqrt(abar_{t-1}) sqrt(1-abar_t)/sqrt(abar_t) - sqrt(1-abar_{t-1}),
a constant for a fixed t: the ranking of samples (and every metric) is that of R_{t,p} (tested).

Queries per sample: 1 + number of t's (one eps_0 shared by a sweep over t).

Continuous-time models: the paper also attacks Grad-TTS, a VP-SDE model with t in (0, 1]. On a
:class:`~diffmia.targets.vpsde.VPSDETarget` the same steps run on its grid t_k = (k + 1) / T (step 0 is the
smallest time 1/T, standing in for t = 0 in (P1)); ``t`` may be a fraction of T (``t=0.2``: the time 0.2 there,
step 199 of a 1000-step DDPM; ``_timesteps.py``).
"""

from __future__ import annotations

from .. import ops
from .base import TIMESTEP, Attack, as_timesteps, check_timesteps, either, number, sequence, sweep_scores


class PIA(Attack):
    """PIA (Kong et al. 2023). Threat model: white-box query access.

    Arguments: ``t`` (default 200; a tuple of t's is a sweep sharing the single eps_0 query: the primary
    score is the first t, variants ``pia[t=...]``), ``p`` (default 4, the exponent of the per-pixel
    error). Score = -sum |eps_0 - eps_theta(x_t, t)|^p (higher = member). Queries: 1 + number of t's.
    """

    name = "pia"
    paper = ("Kong et al. 2023, An Efficient Membership Inference Attack for the Diffusion Model by Proximal "
             "Initialization")
    threat_model = "white-box"
    _parameter_constraints = {"t": either(TIMESTEP, sequence(TIMESTEP, distinct=True)),
                              "p": number(0, strict=True)}

    def __init__(self, t=200, p: float = 4):
        self.t = t
        self.p = p

    def _ts(self) -> tuple[int, ...]:
        return as_timesteps(self.t)

    def _queries(self, num_train_timesteps):
        return 1 + len(self._ts())

    def _initial_noise(self, eps0):
        """eps_0 as the attack uses it (PIA: unchanged; PIAN rescales it)."""
        return eps0

    def _features(self, target, images, cond, seeds, cache):
        ts = check_timesteps(list(self._ts()), target, self.name)
        x0 = target.to_model_space(images, seeds)
        abar = target.alphas_cumprod
        eps0 = self._initial_noise(target.eps(x0, 0, cond))          # (P1) eps_0 = eps_theta(x0, 0)
        out = {}
        for t in ts:
            x_t = ops.q_sample(abar, x0, t, eps0)                      # (P2) x_t = sqrt(abar) x0 + sqrt(1-abar) eps_0
            r = (eps0 - target.eps(x_t, t, cond)).abs().pow(self.p)    # (P3) |eps_0 - eps_theta(x_t, t)|^p
            out[f"r_{t}"] = r.flatten(1).double().sum(1).cpu().numpy()  # summed over pixels, no root
        return out

    def _scores(self, features):
        return sweep_scores(self.name, features, "r", self._ts())          # (P4) score = -R_{t,p}
