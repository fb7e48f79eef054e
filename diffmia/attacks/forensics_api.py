"""Data Forensics, gray-box: loss estimated from the intermediate outputs of a generation API.

Paper: "Data Forensics in Diffusion Models: A
Systematic Analysis of Membership Privacy" (arXiv 2302.07801), gray-box attack. SPEC 3.3.
"""

from __future__ import annotations

import numpy as np

from ..errors import DiffmiaError
from ..targets.api import api_view, transform_timesteps
from .base import Attack, check_images, default_seeds
from .forensics import STATISTICS, truncate_and_reduce


class ForensicsGrayBox(Attack):
    """Data Forensics gray-box attack (arXiv 2302.07801; SPEC 3.3).

    Threat model: gray-box. The attacker cannot read losses or noise predictions; it can run the
    target's reverse process from an image of its choice and see the intermediate outputs (an img2img
    API with previews, :class:`~diffmia.targets.api.GenerationAPI`). It never touches the network.

    Per query image x0: **one** ``transform`` call noises x0 to x_{t_start} = sqrt(abar) x0 +
    sqrt(1-abar) eps (eps from ``ops.sample_noise`` keyed by the sample's seed, as the white-box attacks
    draw it; ``seed`` shifts all seeds) and runs ``num_steps`` deterministic DDIM steps t_start = tau_0 >
    ... > tau_{K-1} = 0. At each step the API shows its estimate x0_hat(tau_k) of the clean image; the
    estimated loss at that step is ||x0_hat(tau_k) - x0||^2 (sum over pixels). The trajectory then gets
    exactly the white-box truncations and statistics (``forensics.truncate_and_reduce``): time truncation
    keeps tau <= t_trunc (the paper's technique), value truncation drops each sample's m largest
    losses; score = -statistic (a member is reconstructed better, so a higher score = member).

    Arguments: ``t_start`` (default 300, "strength" 0.3), ``num_steps`` (default 11: every 30 steps),
    ``time_truncations``, ``value_truncations``, ``statistics`` (as the white-box attack), ``t_trunc``
    (the primary truncation, 300 as the white-box default), ``seed``. The paper gives no start step; the
    default starts the reverse process at the truncation point t_trunc = 300, since steps above it would
    be truncated away anyway (on the memorised test fixture: AUC 0.87 from 300, 0.68 from 500 with the
    same truncation, because a trajectory started higher has forgotten more of the query).

    Scores: keys ``time<={t}/{stat}``, ``all/{stat}``, ``value-drop{m}/{stat}``; the first (primary)
    is ``time<=300/mean``. Queries per sample: **1 API call** (one image submitted to ``transform``),
    which costs the service ``num_steps`` network evaluations; the features hold the visited steps
    (``traj_steps``, the same on every row) beside the losses (``traj_x0``).
    """

    name = "forensics_graybox"
    paper = "Zhu et al. 2023, Data Forensics in Diffusion Models (arXiv 2302.07801), gray-box"
    threat_model = "gray-box"
    access = "api"

    def __init__(self, t_start: int = 300, num_steps: int = 11, time_truncations=(None, 100, 200, 300),
                 value_truncations=(1, 3, 5), statistics=tuple(STATISTICS), t_trunc=300, seed: int = 0):
        self.t_start = t_start
        self.num_steps = num_steps
        self.time_truncations = time_truncations
        self.value_truncations = value_truncations
        self.statistics = statistics
        self.t_trunc = t_trunc
        self.seed = seed

    def queries_per_sample(self) -> int:
        """One ``transform`` call (one submitted image) per sample; the service runs ``num_steps`` steps."""
        return 1

    def _check(self):
        stats = tuple(self.statistics)
        if not stats or any(s not in STATISTICS for s in stats):
            raise DiffmiaError(f"{self.name}: statistics must be a non-empty subset of {tuple(STATISTICS)}, "
                               f"got {list(stats)}")
        for m in self.value_truncations:
            if int(m) < 1:
                raise DiffmiaError(f"{self.name}: value truncations drop m >= 1 largest losses, got {m}")
        if self.t_trunc is not None and (not isinstance(self.t_trunc, (int, np.integer)) or self.t_trunc < 0):
            raise DiffmiaError(f"{self.name}: t_trunc must be None or a non-negative step, got {self.t_trunc!r}")
        return stats

    def features(self, target, images, cond=None, seeds=None):
        self._check()
        api = api_view(target, self.name, needs=("transform",))
        transform_timesteps(self.t_start, self.num_steps, api.num_train_timesteps)   # clear errors early
        x0 = check_images(images, self.name)
        seeds = default_seeds(seeds, len(x0)).astype(np.int64) + int(self.seed) * 1_000_000_007
        _, inter = api.transform(x0, int(self.t_start), int(self.num_steps), seed=seeds,
                                 return_intermediates=True)
        if not inter:
            raise DiffmiaError(f"{self.name}: the API returned no intermediate outputs; the gray-box attack "
                               "needs them (GenerationAPI.transform with return_intermediates=True)")
        steps = sorted(inter, reverse=True)                                   # reverse-process order
        traj = np.stack([(inter[t].float().cpu() - x0).flatten(1).pow(2).sum(1).double().numpy()
                         for t in steps], axis=1)                             # ||x0_hat(t) - x0||^2
        return {"traj_x0": traj, "traj_steps": np.tile(np.asarray(steps, np.int64), (len(x0), 1))}

    def scores(self, features):
        stats = self._check()
        if "traj_x0" not in features or "traj_steps" not in features:
            raise DiffmiaError(f"{self.name}: features lack traj_x0/traj_steps; compute them with features()")
        steps = np.asarray(features["traj_steps"])
        if steps.ndim != 2 or not (steps == steps[:1]).all():
            raise DiffmiaError(f"{self.name}: rows were computed with different step grids; "
                               "recompute the features with one set of parameters")
        grid = steps[0]
        time_tr = list(self.time_truncations)
        if self.t_trunc not in time_tr:
            time_tr.insert(0, self.t_trunc)
        if self.t_trunc is not None and not (grid <= self.t_trunc).any():
            raise DiffmiaError(f"{self.name}: no visited step <= t_trunc={self.t_trunc} (steps {grid.tolist()})")
        out = truncate_and_reduce(features["traj_x0"], grid, tuple(time_tr), tuple(self.value_truncations),
                                  stats)
        primary = f"{'all' if self.t_trunc is None else f'time<={self.t_trunc}'}/{stats[0]}"
        return {primary: out.pop(primary), **out}

