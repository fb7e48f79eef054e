"""Data Forensics in Diffusion Models (Zhu, Chen, Grossklags & Fritz; arXiv 2302.07801). SPEC 3.2-3.3.

Shared by the white-box attack (here) and the gray-box attack (``forensics_api.py``): a per-sample loss
trajectory over a timestep grid, **truncated** and reduced by a **statistic**; score = -statistic.

Truncation kinds:
* ``time``: the paper's technique: keep only steps t <= t_trunc (drop the early, noise-dominated
  denoising steps near T);
* ``value``: the public code's variant: sort each sample's losses in decreasing order and drop the
  largest m.
"""

from __future__ import annotations

import numpy as np

STATISTICS = {"mean": np.mean, "sum": np.sum, "median": np.median, "min": np.min, "max": np.max}


def truncate_and_reduce(traj: np.ndarray, timesteps, time_truncations=(None,), value_truncations=(),
                        statistics=tuple(STATISTICS), prefix: str = "") -> dict[str, np.ndarray]:
    """Scores (higher = member) for every (truncation, statistic) of a loss trajectory.

    traj: N x G losses at ``timesteps`` (G grid steps). ``time_truncations``: t_trunc values (None = keep
    all); ``value_truncations``: m values (drop each sample's m largest losses). Keys look like
    ``{prefix}time<=300/mean`` or ``{prefix}value-drop5/median``.
    """
    traj = np.asarray(traj, dtype=np.float64)
    ts = np.asarray(timesteps)
    if traj.ndim != 2 or traj.shape[1] != len(ts):
        raise ValueError(f"trajectory shape {traj.shape} does not match {len(ts)} timesteps")
    out: dict[str, np.ndarray] = {}
    for t_trunc in time_truncations:
        keep = np.ones(len(ts), bool) if t_trunc is None else ts <= t_trunc
        if not keep.any():
            continue
        label = "all" if t_trunc is None else f"time<={t_trunc}"
        for s in statistics:
            out[f"{prefix}{label}/{s}"] = -STATISTICS[s](traj[:, keep], axis=1)   # score = -statistic
    for m in value_truncations:
        if m <= 0 or m >= len(ts):
            continue
        kept = -np.sort(-traj, axis=1)[:, m:]                                    # drop the m largest
        for s in statistics:
            out[f"{prefix}value-drop{m}/{s}"] = -STATISTICS[s](kept, axis=1)
    return out


# ---------------------------------------------------------------------------------------------------------
# White-box attack (SPEC 3.2)

from .. import ops  # noqa: E402
from ..errors import DiffmiaError  # noqa: E402
from .base import Attack, check_images, default_seeds  # noqa: E402

KINDS = ("eps", "x0", "vlb")


class ForensicsWhiteBox(Attack):
    """Data Forensics white-box attack (Zhu et al. 2023, arXiv 2302.07801; SPEC 3.2): loss trajectories.

    Threat model: white-box (eps_theta is queried directly; the attacker reads per-step losses).

    For every step t of a grid G (``range(0, T, grid_stride)``, or the explicit ``timesteps``) one noisy
    version x_t = sqrt(abar_t) x0 + sqrt(1-abar_t) eps is made (eps seeded per sample and t, the same noise
    as the loss attack with the same ``seed``) and **one** query eps_theta(x_t, t) gives all three
    per-step losses (``ops.step_losses``):

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

    # -- checks
    def _check_params(self):
        kinds = tuple(self.kinds)
        bad = [k for k in kinds if k not in KINDS]
        if bad or not kinds:
            raise DiffmiaError(f"forensics: kinds must be a non-empty subset of {KINDS}, got {list(kinds)}")
        stats = tuple(self.statistics)
        bad = [s for s in stats if s not in STATISTICS]
        if bad or not stats:
            raise DiffmiaError(f"forensics: statistics must be a non-empty subset of {tuple(STATISTICS)}, "
                               f"got {list(stats)}")
        if self.timesteps is None and (not isinstance(self.grid_stride, (int, np.integer)) or self.grid_stride < 1):
            raise DiffmiaError(f"forensics: grid_stride must be a positive integer, got {self.grid_stride!r}")
        for m in self.value_truncations:
            if int(m) < 1:
                raise DiffmiaError(f"forensics: value truncations drop m >= 1 largest losses, got {m}")
        return kinds, stats

    def grid(self, num_train_timesteps: int) -> tuple[int, ...]:
        """The timestep grid G for a target with T = ``num_train_timesteps`` steps."""
        if self.timesteps is not None:
            ts = tuple(int(t) for t in self.timesteps)
            if not ts or list(ts) != sorted(set(ts)):
                raise DiffmiaError(f"forensics: timesteps must be distinct and increasing, got {list(ts)}")
            bad = [t for t in ts if not 0 <= t < num_train_timesteps]
            if bad:
                raise DiffmiaError(f"forensics: timesteps {bad} outside 0..{num_train_timesteps - 1}")
            return ts
        self._check_params()
        return tuple(range(0, num_train_timesteps, int(self.grid_stride)))

    def _grid_from_length(self, g: int) -> np.ndarray:
        if self.timesteps is not None:
            ts = np.asarray([int(t) for t in self.timesteps])
            if len(ts) != g:
                raise DiffmiaError(f"forensics: features have {g} grid steps but timesteps has {len(ts)}; "
                                   "score with the parameters the features were computed with")
            return ts
        return int(self.grid_stride) * np.arange(g)             # = range(0, T, stride)

    def queries_per_sample(self, num_train_timesteps: int | None = None) -> int:
        """|G|. Without explicit ``timesteps`` this depends on the target's T: pass it, or the T of the
        last target this attack queried is used (1000, the DDPM default, before any query)."""
        if self.timesteps is not None:
            return len(self.timesteps)
        T = num_train_timesteps or getattr(self, "num_train_timesteps_", 1000)
        return len(self.grid(int(T)))

    # -- the interface
    def features(self, target, images, cond=None, seeds=None):
        kinds, _ = self._check_params()
        grid = self.grid(target.num_train_timesteps)
        self.num_train_timesteps_ = int(target.num_train_timesteps)
        x0 = target.to_model_space(check_images(images, self.name))
        seeds = default_seeds(seeds, len(x0))
        abar = target.alphas_cumprod
        trajs = {k: np.empty((len(x0), len(grid))) for k in kinds}
        for j, t in enumerate(grid):
            # the same seeded noise as the loss attack at this t (salt), so eps-trajectories agree with it
            noise = ops.sample_noise(x0.shape[1:], seeds, salt=self.seed * 100_003 + t, device=x0.device)
            x_t = ops.q_sample(abar, x0, t, noise)                   # x_t ~ q(x_t | x_0)
            eps_hat = target.eps(x_t, t, cond)                       # the only query at step t
            losses = ops.step_losses(abar, x0, x_t, t, noise, eps_hat)
            for k in kinds:
                trajs[k][:, j] = losses[k].double().cpu().numpy()
        return {f"traj_{k}": v for k, v in trajs.items()}

    def scores(self, features):
        kinds, stats = self._check_params()
        missing = [k for k in kinds if f"traj_{k}" not in features]
        if missing:
            raise DiffmiaError(f"forensics: features lack the trajectories {missing}")
        g = features[f"traj_{kinds[0]}"].shape[1]
        grid = self._grid_from_length(g)
        time_tr = list(self.time_truncations)
        if self.t_trunc not in time_tr:
            time_tr.insert(0, self.t_trunc)
        if self.t_trunc is not None and not (grid <= self.t_trunc).any():
            raise DiffmiaError(f"forensics: no grid step t <= t_trunc={self.t_trunc} (grid starts at {grid[0]})")
        out = {}
        for k in kinds:
            out.update(truncate_and_reduce(features[f"traj_{k}"], grid, tuple(time_tr),
                                           tuple(self.value_truncations), stats, prefix=f"{k}:"))
        label = "all" if self.t_trunc is None else f"time<={self.t_trunc}"
        primary = f"{kinds[0]}:{label}/{stats[0]}"                   # paper default: eps, t <= 300, mean
        return {primary: out.pop(primary), **out}
