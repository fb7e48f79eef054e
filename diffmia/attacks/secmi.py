"""SecMI: Step-wise Error Comparing Membership Inference (Duan et al., ICML 2023), statistical attack.

Paper: J. Duan, F. Kong, S. Wang, X. Shi, K. Xu, "Are Diffusion Models Vulnerable to Membership
Inference Attacks?", ICML 2023. Threat model: white-box query access to eps_theta (no weights or
gradients are read, only noise predictions).

The t-error (paper Definition 4.1, eq. 13) with DDIM(k) steps tau_i = i*k:

* deterministic inversion (paper eq. 9-10, the reverse DDIM map Phi_theta): x~_0 = x0 and for
  i = 0 .. t_sec/k - 1, x~_{tau_{i+1}} = DDIM move tau_i -> tau_{i+1} with e = eps_theta(x~_{tau_i}, tau_i);
* one deterministic denoising step (paper eq. 11, Psi_theta): x^_{t_sec-k} = DDIM move t_sec -> t_sec-k
  with e = eps_theta(x~_{t_sec}, t_sec);
* t-error = sum_pixels (x^_{t_sec-k} - x~_{t_sec-k})^2 (the reference code compares at t_sec - k).

Members are reconstructed more faithfully, so they have smaller t-errors. SecMI_NNs, the paper's
learned attack on the same reconstruction, is in ``secmi_nns.py``.
"""

from __future__ import annotations

import torch

from .. import ops
from ..errors import DiffmiaError
from .base import Attack, integer, optional, sequence, step


def check_secmi_steps(t_secs, k: int, num_train_timesteps: int | None, name: str) -> tuple[int, ...]:
    """The sorted distinct t_sec values, each a positive multiple of k inside 0..T-1 (T None: unchecked)."""
    if not integer(1).ok(k):
        raise DiffmiaError(f"{name}: k (the DDIM interval) must be a positive integer, got {k!r}")
    ts = tuple(sorted({int(t) for t in t_secs}))
    if not ts:
        raise DiffmiaError(f"{name}: no t_sec given")
    for t in ts:
        if t < k or t % k:
            raise DiffmiaError(f"{name}: t_sec={t} must be a positive multiple of k={k} (steps tau_i = i*k)")
        if num_train_timesteps is not None and t >= num_train_timesteps:
            raise DiffmiaError(f"{name}: t_sec={t} outside 0..{num_train_timesteps - 1}")
    return ts


def secmi_reconstructions(target, x0: torch.Tensor, t_secs, k: int, cond=None, name: str = "secmi"):
    """For each t_sec: (x^_{t_sec-k}, x~_{t_sec-k}) from ONE inversion trajectory up to max(t_secs).

    Queries per sample: max(t_secs)/k (inversion) + 1 (eps at the last inverted step). The denoising move
    at a smaller t_sec uses eps_theta(x~_{t_sec}, t_sec), which the inversion already evaluated (it is
    the noise estimate of the move t_sec -> t_sec + k), so smaller t_secs cost no extra query.
    """
    ts = check_secmi_steps(t_secs, k, target.num_train_timesteps, name)
    abar = target.alphas_cumprod
    t_max = ts[-1]
    xs = {0: x0}                       # x~_{tau_i}
    es = {}                            # eps_theta(x~_{tau_i}, tau_i)
    x = x0
    for i in range(t_max // k):        # inversion tau_i -> tau_{i+1} (eq. 10)
        s, t = i * k, (i + 1) * k
        es[s] = target.eps(x, s, cond)
        x = ops.ddim_move(abar, x, s, t, es[s])
        xs[t] = x
    es[t_max] = target.eps(xs[t_max], t_max, cond)
    out = {}
    for t in ts:                       # one denoising step t_sec -> t_sec - k (eq. 11)
        x_hat = ops.ddim_move(abar, xs[t], t, t - k, es[t])
        out[t] = (x_hat, xs[t - k])
    return out


class SecMIStat(Attack):
    """SecMI_stat (Duan et al. 2023): score = -t-error at ``t_sec`` with DDIM interval ``k``.

    Threat model: white-box query access. Arguments: ``t_sec`` (default 100), ``k`` (default 10; t_sec
    must be a multiple of k), ``t_secs``: optional extra t_sec values scored from the same inversion
    trajectory (variants ``secmi[t_sec=...]``; the primary score stays at ``t_sec``). A float t_sec is a
    fraction f of T, the step round(f*T) - 1 (``_timesteps.py``): the default t_sec = 100 is f = 0.101 at
    T = 1000 (f = 0.1 is step 99, not a multiple of k = 10).
    Queries per sample: max(t_sec, *t_secs)/k + 1 (11 at the defaults). A sweep below t_sec is free;
    one above it extends the inversion by one query per k steps.
    Higher score (smaller t-error) = member.
    """

    name = "secmi"
    paper = "Duan et al. 2023, Are Diffusion Models Vulnerable to Membership Inference Attacks? (SecMI_stat)"
    threat_model = "white-box"
    _parameter_constraints = {"t_sec": step(1), "k": integer(1), "t_secs": optional(sequence(step(1)))}

    def __init__(self, t_sec: int = 100, k: int = 10, t_secs=None):
        self.t_sec = t_sec
        self.k = k
        self.t_secs = t_secs

    def _all_t(self) -> tuple[int, ...]:
        extra = () if self.t_secs is None else tuple(int(t) for t in self.t_secs)
        return tuple(sorted({int(self.t_sec), *extra}))

    def _queries(self, num_train_timesteps):
        ts = check_secmi_steps(self._all_t(), self.k, num_train_timesteps, self.name)
        return max(ts) // self.k + 1

    def _features(self, target, images, cond, seeds, cache):
        x0 = target.to_model_space(images, seeds)
        rec = secmi_reconstructions(target, x0, self._all_t(), self.k, cond, self.name)
        # t-error (eq. 13): squared L2 distance summed over pixels
        return {f"terr_{t}": ops.sum_sq(xh - xt).double().cpu().numpy() for t, (xh, xt) in rec.items()}

    def _scores(self, features):
        key = f"terr_{int(self.t_sec)}"
        if key not in features:
            raise DiffmiaError(f"{self.name}: features lack {key}; score with the t_sec they were computed with")
        out = {"secmi": -features[key]}                       # SecMI_stat: score = -t-error
        if self.t_secs is not None:
            for t in self._all_t():
                out[f"secmi[t_sec={t}]"] = -features[f"terr_{t}"]
        return out
