"""CLiD: Conditional Likelihood Discrepancy (Zhai et al., "Membership Inference on Text-to-Image Diffusion
Models via Conditional Likelihood Discrepancy", NeurIPS 2024), the threshold variant CLiD_th.

Threat model: white-box query access to a text-conditioned noise predictor eps_theta(z_t, t, c) (latent
Stable Diffusion targets); the sample's caption c is known. A text-to-image model that memorised (x, c)
fits x much better *with its own caption* than with a degraded one: the conditional likelihood
discrepancy is large for members.

Notation (tags D1-D4 mark the lines below; timesteps and perturbations follow the authors' public code):

* (D1) timesteps around the middle of the chain: ``n_timesteps`` (3) steps ``interval`` (10) apart centred
  on T/2 (485, 495, 505 for T = 1000); one noise draw eps_t per sample and t (stream ``clid``, which is the
  loss attack's), shared by every condition;
* (D2) L(c) = mean_t ||eps_t - eps_theta(sqrt(abar_t) z + sqrt(1-abar_t) eps_t, t, c)||^2 / dims, the
  conditional denoising loss with the sample's own caption;
* (D3) perturbed conditions c'_k: the caption's three character thirds and the empty caption (the public
  code's choice); discrepancy D = mean_k [L(c'_k) - L(c)];
* (D4) CLiD_th: both statistics robust-scaled (median / IQR, fitted on calibration rows), score =
  -(1 - alpha) L~ + alpha D~ for alpha in {0, 0.1, ..., 1} (higher = member: low loss, high discrepancy);
  ``fit`` picks the alpha with the best AUC on its rows (the paper picks it on shadow data): the primary
  score ``clid``; every alpha is also a variant ``clid[alpha=...]`` (alpha = 0 is the plain conditional
  loss, alpha = 1 the discrepancy alone).

Queries per sample: n_timesteps x (1 + number of perturbations) = 15 at the defaults.
"""

from __future__ import annotations

import numpy as np

from .. import ops
from ..errors import DiffmiaError
from .base import SEED, Attack, integer, number, sequence, subset_of

PERTURBATIONS = ("third1", "third2", "third3", "null")


def perturb(caption: str, kind: str) -> str:
    """(D3) A degraded caption: one character third of it (the public code's split) or the empty one."""
    n = len(caption)
    if kind == "null":
        return ""
    k = int(kind[-1]) - 1
    return caption[int(k * n / 3):int((k + 1) * n / 3)] if k < 2 else caption[int(2 * n / 3):]


class CLiD(Attack):
    """CLiD_th (Zhai et al. 2024). Threat model: white-box queries to a text-conditioned model.

    Arguments: ``n_timesteps`` (3) and ``interval`` (10): the timesteps around T/2; ``perturbations``
    (thirds of the caption and the empty caption); ``alphas``: the weights of the discrepancy scored as
    variants; ``seed``: the noise seed. Needs one caption per sample (``cond``). Learned: the robust
    scaler is fitted on calibration rows. Score (higher = member) = -(1-alpha) L~ + alpha D~.
    """

    name = "clid"
    paper = ("Zhai et al. 2024, Membership Inference on Text-to-Image Diffusion Models via Conditional Likelihood "
             "Discrepancy (CLiD_th)")
    threat_model = "white-box"
    learned = True
    needs_text = True
    _parameter_constraints = {"n_timesteps": integer(1), "interval": integer(1),
                              "perturbations": subset_of(PERTURBATIONS),
                              "alphas": sequence(number(0, 1), distinct=True), "seed": SEED}

    def __init__(self, n_timesteps: int = 3, interval: int = 10, perturbations=PERTURBATIONS,
                 alphas=tuple(round(0.1 * i, 1) for i in range(11)), seed: int = 0):
        self.n_timesteps = n_timesteps
        self.interval = interval
        self.perturbations = perturbations
        self.alphas = alphas
        self.seed = seed

    def timesteps(self, num_train_timesteps: int = 1000) -> list[int]:
        """(D1) ``n_timesteps`` steps ``interval`` apart, centred on T/2."""
        start = num_train_timesteps // 2 - self.interval * self.n_timesteps // 2
        ts = list(range(start, start + self.interval * self.n_timesteps, self.interval))
        if ts[0] < 0 or ts[-1] >= num_train_timesteps:
            raise DiffmiaError(f"{self.name}: timesteps {ts} outside 0..{num_train_timesteps - 1}")
        return ts

    def _queries(self, num_train_timesteps):
        return self.n_timesteps * (1 + len(self.perturbations))

    def _loss(self, target, z, t, noise, prompts):
        z_t = ops.q_sample(target.alphas_cumprod, z, t, noise)
        return (noise - target.eps(z_t, t, prompts)).flatten(1).pow(2).mean(1).double()

    def _features(self, target, images, cond, seeds, cache):
        if cond is None or any(not isinstance(c, str) for c in cond):
            raise DiffmiaError(f"{self.name} needs a text-conditioned target and one caption per sample "
                               "(a latent target with --condition caption)")
        cond = list(cond)
        z = target.to_model_space(images, seeds)
        l_cond = 0.0
        l_other = {k: 0.0 for k in self.perturbations}
        for t in self.timesteps(target.num_train_timesteps):
            noise = ops.noise("clid", z.shape[1:], seeds, device=z.device, seed=self.seed, t=t)   # (D1)
            l_cond = l_cond + self._loss(target, z, t, noise, cond)                               # (D2)
            for k in self.perturbations:                                                        # (D3)
                l_other[k] = l_other[k] + self._loss(target, z, t, noise, [perturb(c, k) for c in cond])
        n = self.n_timesteps
        out = {"l_cond": (l_cond / n).cpu().numpy()}
        out.update({f"d_{k}": ((l_other[k] - l_cond) / n).cpu().numpy() for k in self.perturbations})
        return out

    def _matrix(self, features) -> np.ndarray:
        missing = [k for k in ["l_cond", *(f"d_{p}" for p in self.perturbations)] if k not in features]
        if missing:
            raise DiffmiaError(f"{self.name}: features lack {missing}; compute them with these parameters")
        d = np.mean([features[f"d_{p}"] for p in self.perturbations], axis=0)          # D = mean_k discrepancy
        return np.stack([np.asarray(features["l_cond"], np.float64), d], axis=1)

    def _fit(self, features, is_member):
        from sklearn.metrics import roc_auc_score
        from sklearn.preprocessing import RobustScaler

        y = np.asarray(is_member).astype(bool)
        if y.all() or not y.any():
            raise DiffmiaError(f"{self.name}: fitting needs both members and non-members")
        self.scaler_ = RobustScaler().fit(self._matrix(features))                      # (D4) on calibration rows
        variants = self._variants(features)
        self.alpha_ = max(self.alphas, key=lambda a: roc_auc_score(y, variants[a]))   # the paper's choice of alpha

    def _variants(self, features) -> dict:
        loss, disc = self.scaler_.transform(self._matrix(features)).T
        return {a: -(1 - a) * loss + a * disc for a in self.alphas}                   # (D4)

    def _scores(self, features):
        v = self._variants(features)
        return {"clid": v[self.alpha_], **{f"clid[alpha={a:g}]": s for a, s in v.items()}}
