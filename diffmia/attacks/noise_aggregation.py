"""Noise aggregation after small-noise injection (Li, Chen & Fan 2025, "Noise Aggregation Analysis Driven
by Small-Noise Injection: Efficient Membership Inference for Diffusion Models", arXiv 2510.21783).

Threat model: white-box query access to eps_theta.

The paper's observation: after a *small* noise injection, the model's noise predictions for a training
image aggregate tightly (its denoiser pulls every noisy copy back to the same memorised image), while for
an unseen image they scatter. In the notation of this file:

* (N1) K injections k = 1..K at a small step t: eps_k from the ``noise_aggregation`` stream (per sample
  id, k and t), x_t^k = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps_k;
* (N2) r_k = eps_theta(x_t^k, t) - eps_k: what the prediction gets wrong, equivalently (up to the constant
  sqrt(1-abar_t)/sqrt(abar_t)) the offset of the denoised estimate x0_hat^k from x0;
* (N3) aggregation A_t = mean_pixels Var_k(r_k) (unbiased over k): the spread of the K predictions around
  their own mean. The mean error (the loss) is removed, so A measures consistency, not accuracy;
* (N4) score = -A_t (higher = member). Variant ``[mean-loss]``: -mean_k ||r_k||^2 (the K-draw loss).

The paper's text fixes the number of injections (K = 5, our default) but not, in what we could read, one
noise level for every model; our default t = 20 is a small step of a T = 1000 schedule (abar_20 = 0.996)
and a sweep of t's is offered like every sweep (chosen on the calibration half).
Queries per sample: K x number of t's.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import ops
from .base import SEED, TIMESTEP, Attack, as_timesteps, check_timesteps, either, integer, sequence, sweep_scores


class NoiseAggregation(Attack):
    """Noise aggregation after small-noise injection (Li et al. 2025). Threat model: white-box queries.

    Arguments: ``t`` (default 20; a tuple is a sweep), ``k`` (default 5 injections, >= 2), ``seed`` (noise
    seed). Score = -mean over pixels of the variance across the K noise-prediction errors (higher =
    member). Queries per sample: k x number of t's.
    """

    name = "noise_aggregation"
    paper = ("Li, Chen & Fan 2025, Noise Aggregation Analysis Driven by Small-Noise Injection: Efficient "
             "Membership Inference for Diffusion Models")
    threat_model = "white-box"
    _parameter_constraints = {"t": either(TIMESTEP, sequence(TIMESTEP, distinct=True)), "k": integer(2),
                              "seed": SEED}

    def __init__(self, t=20, k: int = 5, seed: int = 0):
        self.t = t
        self.k = k
        self.seed = seed

    def _ts(self) -> tuple[int, ...]:
        return as_timesteps(self.t)

    def _queries(self, num_train_timesteps):
        return self.k * len(self._ts())

    def _features(self, target, images, cond, seeds, cache):
        ts = check_timesteps(list(self._ts()), target, self.name)
        x0 = target.to_model_space(images, seeds)
        abar = target.alphas_cumprod
        out = {}
        for t in ts:
            errs = []
            for j in range(self.k):
                eps = ops.noise("noise_aggregation", x0.shape[1:], seeds, device=x0.device, seed=self.seed,
                                t=t, step=j)                                # (N1) eps_k
                x_t = ops.q_sample(abar, x0, t, eps)
                errs.append((target.eps(x_t, t, cond) - eps).flatten(1).double())  # (N2) r_k
            r = torch.stack(errs)                                           # K x B x D
            out[f"agg_{t}"] = r.var(0, unbiased=True).mean(1).cpu().numpy()  # (N3) mean_pixels Var_k r_k
            out[f"loss_{t}"] = r.pow(2).sum(2).mean(0).cpu().numpy()        # mean_k ||r_k||^2
        return out

    def _scores(self, features):
        ts = self._ts()
        out = sweep_scores(self.name, features, "agg", ts)                 # (N4) score = -A_t
        out.update({f"{self.name}[t={t},mean-loss]": -np.asarray(features[f"loss_{t}"]) for t in ts})
        return out
