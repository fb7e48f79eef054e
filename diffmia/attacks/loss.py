"""Loss attack ("naive attack", NA).

Papers: Matsumoto, Miura & Yanai, "Membership Inference Attacks against Diffusion Models" (2023);
Hu & Pang, "Membership Inference of Diffusion Models" (2023).
Threat model: white-box (the noise predictor eps_theta is queried directly).

For each t in ``timesteps`` (default {200}): l_t = ||eps - eps_theta(sqrt(abar_t) x0 + sqrt(1-abar_t) eps, t)||^2
(the DDPM training loss of one noise draw) with eps from the ``loss`` noise stream (``diffmia.ops``): the
same noise for a sample id in any batch. Score = -mean_t l_t (a member has a lower loss).
Variants: with several timesteps, also each single ``loss[t=...]`` (the sweep). Queries: |timesteps|.
"""

from __future__ import annotations

import numpy as np

from .. import ops
from .base import SEED, TIMESTEP, Attack, check_timesteps, either, sequence


class LossAttack(Attack):
    """Loss attack. Threat model: white-box query access to eps_theta.

    Arguments: ``timesteps`` (default (200,)): the set S; ``seed``: the noise seed (noise is drawn per
    sample id, so a sample gets the same noise in any batch). Score = -mean_{t in S} ||eps - eps_theta(x_t, t)||^2
    (higher = member). Queries per sample: |S|.

    >>> LossAttack(timesteps=(100, 200)).score(target, images)   # doctest: +SKIP
    """

    name = "loss"
    paper = "Matsumoto et al. 2023; Hu & Pang 2023 (naive loss attack)"
    threat_model = "white-box"
    _parameter_constraints = {"timesteps": either(TIMESTEP, sequence(TIMESTEP, distinct=True)), "seed": SEED}

    def __init__(self, timesteps=(200,), seed: int = 0):
        self.timesteps = timesteps
        self.seed = seed

    def _queries(self, num_train_timesteps):
        return len(self.timesteps) if isinstance(self.timesteps, (list, tuple)) else 1

    def _features(self, target, images, cond, seeds, cache):
        ts = check_timesteps(self.timesteps, target, self.name)
        x0 = target.to_model_space(images, seeds)
        abar = target.alphas_cumprod
        out = {}
        for t in ts:
            eps = ops.noise("loss", x0.shape[1:], seeds, device=x0.device, seed=self.seed, t=t)
            x_t = ops.q_sample(abar, x0, t, eps)                      # x_t ~ q(x_t | x_0)
            out[f"l_{t}"] = ops.sum_sq(eps - target.eps(x_t, t, cond)).cpu().numpy()
        return out

    def _scores(self, features):
        keys = [k for k in features if k.startswith("l_")]
        losses = np.stack([features[k] for k in keys])
        out = {"loss": -losses.mean(0)}                              # score = -mean_t l_t
        if len(keys) > 1:
            out.update({f"loss[t={k[2:]}]": -features[k] for k in keys})
        return out
