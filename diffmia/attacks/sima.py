"""SimA: the simple score-based attack (Rao et al. 2025, "Score-based Membership Inference on Diffusion
Models", arXiv 2509.25003; authors' code ``mx-ethan-rao/SimA``).

Threat model: white-box query access to eps_theta, one query per timestep.

The idea: a diffusion model's noise prediction is a scaled score, eps_theta(x, t) = -sqrt(1 - abar_t)
grad_x log p_t(x). A training image sits near a mode of the learned density, where the score vanishes, so
the model predicts almost no noise *on the clean image itself*:

* (S1) eps_hat_t = eps_theta(x0, t): the clean image is given to the model as if it were x_t (no noise is
  added; nothing random is involved);
* (S2) R_t = sum_pixels |eps_hat_t|^4: the authors' statistic, the 4th power of the l4 norm (their code
  sums the 4th powers and takes no root; the ranking is the same);
* (S3) score_t = -R_t: higher = member.

The authors evaluate every t of a grid (t = 0, 20, ..., 20 * attack_num; their default attack_num = 5)
and report the best t. Here the grid is the default sweep ``t = (0, 20, 40, 60, 80, 100)`` and the
variant (t) is chosen on the calibration half like every sweep; the primary score is the first t given.
The t's share nothing but the image: each costs one query. Queries per sample: number of t's.
"""

from __future__ import annotations

from .base import TIMESTEP, Attack, as_timesteps, check_timesteps, either, number, sequence, sweep_scores


class SimA(Attack):
    """SimA (Rao et al. 2025). Threat model: white-box query access.

    Arguments: ``t`` (default (0, 20, 40, 60, 80, 100), the authors' grid; an int is a single query),
    ``p`` (default 4, the exponent of the per-pixel magnitude). Score = -sum |eps_theta(x0, t)|^p
    (higher = member). Queries per sample: number of t's.
    """

    name = "sima"
    paper = "Rao et al. 2025, Score-based Membership Inference on Diffusion Models (SimA)"
    threat_model = "white-box"
    _parameter_constraints = {"t": either(TIMESTEP, sequence(TIMESTEP, distinct=True)),
                              "p": number(0, strict=True)}

    def __init__(self, t=(0, 20, 40, 60, 80, 100), p: float = 4):
        self.t = t
        self.p = p

    def _ts(self) -> tuple[int, ...]:
        return as_timesteps(self.t)

    def _queries(self, num_train_timesteps):
        return len(self._ts())

    def _features(self, target, images, cond, seeds, cache):
        ts = check_timesteps(list(self._ts()), target, self.name)
        x0 = target.to_model_space(images, seeds)
        out = {}
        for t in ts:
            eps_hat = target.eps(x0, t, cond)                               # (S1) eps_theta(x0, t), no noise
            out[f"r_{t}"] = eps_hat.abs().pow(self.p).flatten(1).double().sum(1).cpu().numpy()  # (S2)
        return out

    def _scores(self, features):
        return sweep_scores(self.name, features, "r", self._ts())          # (S3) score = -R_t
