"""Diffusion maths shared by the attacks: pure functions with the equations they implement.

Indices are 0-based as ``diffusers`` stores ``alphas_cumprod`` (SPEC section 1): abar[t] = prod_{s<=t}(1-beta_s).
All functions take ``abar`` as a 1-D float64 tensor and ``t`` as an int or a 1-D long tensor [B].
"""

from __future__ import annotations

import math

import torch


def _at(abar: torch.Tensor, t, x: torch.Tensor) -> torch.Tensor:
    """abar[t] broadcast to x's shape (float32 on x's device)."""
    if isinstance(t, int) or (torch.is_tensor(t) and t.ndim == 0):
        v = abar[int(t)].to(x.device, torch.float64).expand(x.shape[0])
    else:
        v = abar.to(x.device)[t.to(x.device).long()]
    return v.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))


def q_sample(abar, x0, t, noise):
    """Forward noising q(x_t | x_0): x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps  (DDPM eq. 4)."""
    a = _at(abar, t, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def predict_x0(abar, x_t, t, eps):
    """x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)  (DDIM eq. 9)."""
    a = _at(abar, t, x_t)
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


def ddim_move(abar, x_s, s, t, eps):
    """Deterministic DDIM move from step s to step t (either direction), no clipping (SPEC 1):
    x0_hat = (x_s - sqrt(1-abar_s) e)/sqrt(abar_s);  x_t = sqrt(abar_t) x0_hat + sqrt(1-abar_t) e."""
    x0 = predict_x0(abar, x_s, s, eps)
    a_t = _at(abar, t, x_s)
    return a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps


def eps_from_model_output(abar, x_t, t, out, prediction_type: str):
    """The noise prediction whatever the model predicts (SPEC 1)."""
    if prediction_type == "epsilon":
        return out
    a = _at(abar, t, x_t)
    if prediction_type == "v_prediction":  # v = sqrt(a) eps - sqrt(1-a) x0  =>  eps = sqrt(a) v + sqrt(1-a) x_t
        return a.sqrt() * out + (1 - a).sqrt() * x_t
    if prediction_type == "sample":  # out = x0_hat
        return (x_t - a.sqrt() * out) / (1 - a).sqrt()
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def sum_sq(x: torch.Tensor) -> torch.Tensor:
    """Per-sample squared L2 norm ||x||^2 (sum over all but the batch dimension)."""
    return x.flatten(1).pow(2).sum(1)


def posterior(abar, t: int):
    """DDPM posterior q(x_{t-1} | x_t, x_0) coefficients at 0-based step t (DDPM eq. 6-7):
    mu = c0 x_0 + ct x_t, variance beta_tilde. Returns (c0, ct, beta_tilde, beta_t)."""
    a_t = float(abar[t])
    a_prev = float(abar[t - 1]) if t > 0 else 1.0
    beta_t = 1.0 - a_t / a_prev
    c0 = math.sqrt(a_prev) * beta_t / (1 - a_t)
    ct = math.sqrt(1 - beta_t) * (1 - a_prev) / (1 - a_t)
    beta_tilde = beta_t * (1 - a_prev) / (1 - a_t)
    return c0, ct, beta_tilde, beta_t


def step_losses(abar, x0, x_t, t: int, noise, eps_hat) -> dict[str, torch.Tensor]:
    """Per-sample losses at step t (Data Forensics, SPEC 3.2):
    eps: ||eps - eps_hat||^2;  x0: ||x0 - x0_hat||^2;
    vlb: KL(q(x_{t-1}|x_t,x0) || p_theta(x_{t-1}|x_t)) with p's variance fixed to beta_tilde_t, which
    is c0^2 ||x0 - x0_hat||^2 / (2 beta_tilde_t) averaged over dimensions (nats/dim); at t = 0 the
    Gaussian NLL of x0 under N(x0_hat, beta_0)."""
    x0_hat = predict_x0(abar, x_t, t, eps_hat)
    d2 = sum_sq(x0 - x0_hat)
    dims = x0[0].numel()
    c0, _, beta_tilde, beta_t = posterior(abar, t)
    if t == 0:
        vlb = 0.5 * (math.log(2 * math.pi * beta_t) + d2 / dims / beta_t)
    else:
        vlb = c0 ** 2 * d2 / dims / (2 * beta_tilde)
    return {"eps": sum_sq(noise - eps_hat), "x0": d2, "vlb": vlb}


def sample_noise(shape, seeds, salt: int = 0, device="cpu") -> torch.Tensor:
    """Gaussian noise [B, *shape] where row i depends only on (seeds[i], salt): the same sample gets
    the same noise whatever batch it is scored in, so runs repeat and can resume."""
    out = torch.empty((len(seeds), *shape))
    g = torch.Generator()
    for i, s in enumerate(seeds):
        g.manual_seed((int(s) * 1_000_003 + int(salt) * 7_919 + 12345) % (2 ** 63))
        out[i] = torch.randn(shape, generator=g)
    return out.to(device)
