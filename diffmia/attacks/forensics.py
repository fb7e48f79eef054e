"""Data Forensics in Diffusion Models (Zhu, Chen, Grossklags & Fritz; arXiv 2302.07801), white-box.

Threat model: white-box: eps_theta is queried directly and the attacker reads per-step losses. The
loss trajectory is truncated and reduced by a statistic (``_trajectory.py``, shared with the gray-box
attack); score = -statistic.
"""

from __future__ import annotations

import numpy as np

from .. import ops
from ..errors import DiffmiaError
from ._trajectory import STATISTICS, TRUNCATION_CONSTRAINTS, trajectory_scores
from .base import SEED, TIMESTEP, Attack, integer, optional, sequence, subset_of

KINDS = ("eps", "x0", "vlb")


class ForensicsWhiteBox(Attack):
    """Data Forensics white-box attack (Zhu et al. 2023, arXiv 2302.07801): loss trajectories.

    Threat model: white-box (eps_theta is queried directly; the attacker reads per-step losses).

    For every step t of a grid G (``range(0, T, grid_stride)``, or the explicit ``timesteps``) one noisy
    version x_t = sqrt(abar_t) x0 + sqrt(1-abar_t) eps is made (eps from the ``forensics`` noise stream,
    which is the loss attack's: the same noise as the loss attack with the same ``seed``) and **one**
    query eps_theta(x_t, t) gives all three per-step losses (``ops.step_losses``):

    * ``eps``: ||eps - eps_hat||^2 (the DDPM training loss),
    * ``x0``: ||x0 - x0_hat||^2 (error of the predicted clean image),
    * ``vlb``: the variational-bound KL term with posterior variance beta_tilde_t (Gaussian NLL at t=0).

    Scores (higher = member; score = -statistic of the kept losses) for every (kind, truncation,
    statistic): time truncation keeps t <= t_trunc (the paper's technique, ``time_truncations``; None =
    keep all), value truncation drops each sample's m largest losses (the public code's variant,
    ``value_truncations``). Keys: ``{kind}:time<={t}/{stat}``, ``{kind}:all/{stat}``,
    ``{kind}:value-drop{m}/{stat}``.

    The primary (first) score is ``eps:time<=300/mean`` with the defaults: the mean noise loss over the
    grid steps t <= ``t_trunc`` = 300 (a truncation inside the paper's informative low-t region; pass
    ``t_trunc=None`` for the untruncated mean). Queries per sample: |G| (20 with T = 1000 and stride 50);
    kinds, truncations and statistics cost no extra query.

    The grid is not stored as a feature (features have N rows): with ``timesteps=None`` it is
    ``grid_stride * arange(G)``, G the trajectory length, which is exactly ``range(0, T, grid_stride)``.
    """

    name = "forensics"
    paper = ("Zhu et al. 2023, Data Forensics in Diffusion Models: A Systematic Analysis of Membership Privacy "
             "(arXiv 2302.07801), white-box")
    threat_model = "white-box"
    _parameter_constraints = {
        "kinds": subset_of(KINDS), "grid_stride": integer(1),
        "timesteps": optional(sequence(TIMESTEP, increasing=True)),
        **TRUNCATION_CONSTRAINTS, "seed": SEED}

    def __init__(self, kinds=KINDS, grid_stride: int = 50, timesteps=None,
                 time_truncations=(None, 100, 200, 300, 500), value_truncations=(1, 3, 5),
                 statistics=tuple(STATISTICS), t_trunc=300, seed: int = 0):
        self.kinds = kinds
        self.grid_stride = grid_stride
        self.timesteps = timesteps
        self.time_truncations = time_truncations
        self.value_truncations = value_truncations
        self.statistics = statistics
        self.t_trunc = t_trunc
        self.seed = seed

    def grid(self, num_train_timesteps: int) -> tuple[int, ...]:
        """The timestep grid G for a target with T = ``num_train_timesteps`` steps."""
        if self.timesteps is not None:
            ts = tuple(int(t) for t in self.timesteps)
            bad = [t for t in ts if not 0 <= t < num_train_timesteps]
            if bad:
                raise DiffmiaError(f"forensics: timesteps {bad} outside 0..{num_train_timesteps - 1}")
            return ts
        return tuple(range(0, num_train_timesteps, int(self.grid_stride)))

    def _grid_from_length(self, g: int) -> np.ndarray:
        if self.timesteps is not None:
            ts = np.asarray([int(t) for t in self.timesteps])
            if len(ts) != g:
                raise DiffmiaError(f"forensics: features have {g} grid steps but timesteps has {len(ts)}; "
                                   "score with the parameters the features were computed with")
            return ts
        return int(self.grid_stride) * np.arange(g)             # = range(0, T, stride)

    def _queries(self, num_train_timesteps):
        """|G|; without explicit ``timesteps`` it depends on the target's T (1000 when not given)."""
        if self.timesteps is not None:
            return len(self.timesteps)
        return len(self.grid(int(num_train_timesteps or 1000)))

    def _features(self, target, images, cond, seeds, cache):
        grid = self.grid(target.num_train_timesteps)
        x0 = target.to_model_space(images, seeds)
        abar = target.alphas_cumprod
        trajs = {k: np.empty((len(x0), len(grid))) for k in self.kinds}
        for j, t in enumerate(grid):
            noise = ops.noise("forensics", x0.shape[1:], seeds, device=x0.device, seed=self.seed, t=t)
            x_t = ops.q_sample(abar, x0, t, noise)                   # x_t ~ q(x_t | x_0)
            eps_hat = target.eps(x_t, t, cond)                       # the only query at step t
            losses = ops.step_losses(abar, x0, x_t, t, noise, eps_hat)
            for k in self.kinds:
                trajs[k][:, j] = losses[k].double().cpu().numpy()
        return {f"traj_{k}": v for k, v in trajs.items()}

    def _scores(self, features):
        missing = [k for k in self.kinds if f"traj_{k}" not in features]
        if missing:
            raise DiffmiaError(f"forensics: features lack the trajectories {missing}")
        grid = self._grid_from_length(features[f"traj_{self.kinds[0]}"].shape[1])
        # primary: the first kind, truncation t_trunc, first statistic (defaults: eps, t <= 300, mean)
        return trajectory_scores(self, {f"{k}:": features[f"traj_{k}"] for k in self.kinds}, grid)
