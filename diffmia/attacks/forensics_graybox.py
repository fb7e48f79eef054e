"""Data Forensics in Diffusion Models (Zhu, Chen, Grossklags & Fritz; arXiv 2302.07801), gray-box: the
loss estimated from the intermediate outputs of a generation API, then truncated and reduced exactly as
the white-box trajectory (``_trajectory.py``).
"""

from __future__ import annotations

import numpy as np

from .. import ops
from ..errors import DiffmiaError
from ..targets.api import api_view, transform_timesteps
from ._trajectory import STATISTICS, TRUNCATION_CONSTRAINTS, trajectory_scores
from .base import SEED, TIMESTEP, Attack, integer


class ForensicsGrayBox(Attack):
    """Data Forensics gray-box attack (arXiv 2302.07801).

    Threat model: gray-box. The attacker cannot read losses or noise predictions; it can run the
    target's reverse process from an image of its choice and see the intermediate outputs (an img2img
    API with previews, :class:`~diffmia.targets.api.GenerationAPI`). It never touches the network.

    Per query image x0: **one** ``transform`` call noises x0 to x_{t_start} = sqrt(abar) x0 +
    sqrt(1-abar) eps and runs ``num_steps`` deterministic DDIM steps t_start = tau_0 > ... > tau_{K-1} = 0.
    The request seed of sample s is s + 1000000007 * ``seed`` (stream ``api_request`` of
    ``diffmia.ops``): with ``seed=0`` a :class:`~diffmia.targets.DiffusersAPI` then starts from the loss
    attack's noise for s at t = t_start; another ``seed`` gives an independent draw. At each step the API
    shows its estimate x0_hat(tau_k) of the clean image; the estimated loss at that step is
    ||x0_hat(tau_k) - x0||^2 (sum over pixels). The trajectory then gets exactly the white-box
    truncations and statistics: time truncation keeps tau <= t_trunc (the paper's technique), value
    truncation drops each sample's m largest losses; score = -statistic (a member is reconstructed
    better, so a higher score = member).

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
    api_calls = ("transform",)
    _parameter_constraints = {"t_start": TIMESTEP, "num_steps": integer(1), **TRUNCATION_CONSTRAINTS,
                              "seed": SEED}

    def __init__(self, t_start: int = 300, num_steps: int = 11, time_truncations=(None, 100, 200, 300),
                 value_truncations=(1, 3, 5), statistics=tuple(STATISTICS), t_trunc=300, seed: int = 0):
        self.t_start = t_start
        self.num_steps = num_steps
        self.time_truncations = time_truncations
        self.value_truncations = value_truncations
        self.statistics = statistics
        self.t_trunc = t_trunc
        self.seed = seed

    def _queries(self, num_train_timesteps):
        """One ``transform`` call (one submitted image) per sample; the service runs ``num_steps`` steps."""
        return 1

    def _features(self, target, images, cond, seeds, cache):
        api = api_view(target, self.name, needs=self.api_calls)
        transform_timesteps(self.t_start, self.num_steps, api.num_train_timesteps)   # clear errors early
        x0 = images
        requests = np.asarray([ops.stream_seed("api_request", s, seed=self.seed) for s in seeds], np.int64)
        _, inter = api.transform(x0, int(self.t_start), int(self.num_steps), seed=requests,
                                 return_intermediates=True, **({} if cond is None else {"prompt": list(cond)}))
        if not inter:
            raise DiffmiaError(f"{self.name}: the API returned no intermediate outputs; the gray-box attack "
                               "needs them (GenerationAPI.transform with return_intermediates=True)")
        steps = sorted(inter, reverse=True)                                   # reverse-process order
        traj = np.stack([(inter[t].float().cpu() - x0).flatten(1).pow(2).sum(1).double().numpy()
                         for t in steps], axis=1)                             # ||x0_hat(t) - x0||^2
        return {"traj_x0": traj, "traj_steps": np.tile(np.asarray(steps, np.int64), (len(x0), 1))}

    def _scores(self, features):
        if "traj_x0" not in features or "traj_steps" not in features:
            raise DiffmiaError(f"{self.name}: features lack traj_x0/traj_steps; compute them with features()")
        steps = np.asarray(features["traj_steps"])
        if steps.ndim != 2 or not (steps == steps[:1]).all():
            raise DiffmiaError(f"{self.name}: rows were computed with different step grids; "
                               "recompute the features with one set of parameters")
        return trajectory_scores(self, {"": features["traj_x0"]}, steps[0])
