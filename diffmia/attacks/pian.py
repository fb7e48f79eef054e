"""PIAN: PIA with a normalised initial noise (Kong et al., ICLR 2024; arXiv 2305.18355).

Paper: as ``pia.py``. Threat model: white-box query access to eps_theta.

PIAN replaces step (P1) of PIA by a normalised eps_0, so that it has the mean absolute value of a
standard Gaussian draw, E|z| = sqrt(2/pi) for z ~ N(0, 1):

* (N1) eps_0 <- eps_0 * sqrt(2/pi) / mean_pixels |eps_0|  (per sample),

and then runs PIA's (P2)-(P4) unchanged with the rescaled eps_0 (both to build x_t and in the error).
The paper reports PIAN weaker than PIA on most DDPMs; it is kept as the paper's second attack.
"""

from __future__ import annotations

import math

from .pia import PIA

GAUSS_MEAN_ABS = math.sqrt(2 / math.pi)      # E|z| for z ~ N(0, 1)


class PIAN(PIA):
    """PIAN (Kong et al. 2023): PIA with eps_0 rescaled per sample to mean |eps_0| = sqrt(2/pi) (that of
    N(0, I)) before it is used, both to build x_t and in the error. Same arguments, queries and score as
    :class:`~diffmia.attacks.pia.PIA` (variants ``pian[t=...]``)."""

    name = "pian"

    def _initial_noise(self, eps0):
        scale = eps0.flatten(1).abs().mean(1).clamp_min(1e-12)
        return eps0 * (GAUSS_MEAN_ABS / scale).view(-1, *([1] * (eps0.ndim - 1)))   # (N1)
