"""Data Forensics in Diffusion Models (Dubinski-style loss trajectories; arXiv 2302.07801). SPEC 3.2-3.3.

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
