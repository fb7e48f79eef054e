"""Loss trajectories, truncation and statistics: shared by the white-box (``forensics.py``) and gray-box
(``forensics_graybox.py``) attacks of Zhu et al., "Data Forensics in Diffusion Models" (arXiv 2302.07801).

A trajectory is one loss per step of a timestep grid. It is **truncated** and reduced by a
**statistic**; score = -statistic (a member has lower losses). Truncation kinds:

* ``time``: the paper's technique: keep only steps t <= t_trunc (drop the early, noise-dominated
  denoising steps near T);
* ``value``: the public code's variant: sort each sample's losses in decreasing order and drop the
  largest m.
"""

from __future__ import annotations

import numpy as np

from ..errors import DiffmiaError
from .base import TIMESTEP, integer, optional, sequence, subset_of

STATISTICS = {"mean": np.mean, "sum": np.sum, "median": np.median, "min": np.min, "max": np.max}

# The parameters both attacks share, declared once.
TRUNCATION_CONSTRAINTS = {
    "time_truncations": sequence(optional(TIMESTEP), nonempty=False),
    "value_truncations": sequence(integer(1), nonempty=False),
    "statistics": subset_of(STATISTICS),
    "t_trunc": optional(TIMESTEP),
}


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


def trajectory_scores(attack, trajectories: dict[str, np.ndarray], grid) -> dict[str, np.ndarray]:
    """Every (truncation, statistic) score of each trajectory (keyed by its prefix), with the primary
    score first: truncation ``attack.t_trunc``, the first statistic, of the first trajectory."""
    grid = np.asarray(grid)
    t_trunc = attack.t_trunc
    time_tr = list(attack.time_truncations)
    if t_trunc not in time_tr:
        time_tr.insert(0, t_trunc)
    if t_trunc is not None and not (grid <= t_trunc).any():
        raise DiffmiaError(f"{attack.name}: no grid step t <= t_trunc={t_trunc} (steps {grid.tolist()})")
    stats = tuple(attack.statistics)
    out = {}
    for prefix, traj in trajectories.items():
        out.update(truncate_and_reduce(traj, grid, tuple(time_tr), tuple(attack.value_truncations), stats, prefix))
    label = "all" if t_trunc is None else f"time<={t_trunc}"
    primary = f"{next(iter(trajectories))}{label}/{stats[0]}"
    return {primary: out.pop(primary), **out}
