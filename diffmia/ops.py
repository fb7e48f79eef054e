"""Diffusion maths shared by the attacks: pure functions with the equations they implement.

Indices are 0-based as ``diffusers`` stores ``alphas_cumprod``: abar[t] = prod_{s<=t}(1-beta_s).
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
    """Deterministic DDIM move from step s to step t (either direction), no clipping:
    x0_hat = (x_s - sqrt(1-abar_s) e)/sqrt(abar_s);  x_t = sqrt(abar_t) x0_hat + sqrt(1-abar_t) e."""
    x0 = predict_x0(abar, x_s, s, eps)
    a_t = _at(abar, t, x_s)
    return a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps


def eps_from_model_output(abar, x_t, t, out, prediction_type: str):
    """The noise prediction whatever the model predicts (epsilon, v, x0, or the score of a VP-SDE model)."""
    if prediction_type == "epsilon":
        return out
    if prediction_type == "score":   # out = grad log p_t(x_t) = -eps / sqrt(1-a)  =>  eps = -sqrt(1-a) out
        a = _at(abar, t, x_t.double())                  # in float64: 1 - a is tiny near t = 0
        return (-(1 - a).sqrt() * out.double()).to(out.dtype)
    a = _at(abar, t, x_t)
    if prediction_type == "v_prediction":  # v = sqrt(a) eps - sqrt(1-a) x0  =>  eps = sqrt(a) v + sqrt(1-a) x_t
        return a.sqrt() * out + (1 - a).sqrt() * x_t
    if prediction_type == "sample":  # out = x0_hat
        return (x_t - a.sqrt() * out) / (1 - a).sqrt()
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def vp_alpha_bar(t, beta_min: float = 0.1, beta_max: float = 20.0) -> torch.Tensor:
    """abar(t) of the VP-SDE dx = -beta(t) x/2 dt + sqrt(beta(t)) dW (Song et al. 2021, eq. 11; Grad-TTS) with
    beta(t) = beta_min + t (beta_max - beta_min), t in [0, 1]: log abar(t) = -int_0^t beta = -(beta_min t +
    (beta_max - beta_min) t^2 / 2); q(x_t | x_0) = N(sqrt(abar(t)) x_0, (1 - abar(t)) I). Float64."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return torch.exp(-(beta_min * t + 0.5 * (beta_max - beta_min) * t * t))


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
    """Per-sample losses at step t (Data Forensics, white-box):
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


# ----------------------------------------------------------------------------- noise streams
# Every random draw on a sample comes from a *named stream*: the seed of a draw is a function of the
# stream's name, the sample's own seed (its id) and the stream's key (attack seed, timestep, step), never
# of the batch or of other samples. So a sample gets the same noise in any batch, runs repeat and resume,
# and two attacks share noise exactly where this table says they do. `stream_seed` is the only place the
# formulas live; they reproduce the draws of diffmia 0.1 bit for bit.
#
#   stream          per   key                          seed of sample s                      used by
#   loss            s     seed, t                      mix(s, 100003 seed + t)               loss attack
#   forensics       s     seed, t                      = loss (the same noise, by design)    forensics (white-box)
#   clid            s     seed, t                      = loss (the same noise, by design)    clid
#   api_request     s     seed                         s + 1000000007 seed (an int sent to   forensics_graybox,
#                                                      the service, not a draw)              observers
#   transform       v     t (= t_start)                mix(v, t)                             DiffusersAPI.transform,
#                                                                                            initial noise
#   transform_step  v     t (= t_start), step k >= 1   mix(v, 10000000 + 1000 t + k)         its DDPM draws
#   generate        i     seed, step k >= 0            mix(i, 50000000 + 10007 seed + k)     DiffusersAPI.generate
#   train           -     seed, step                   1000003 seed + step (one generator    diffmia train,
#                                                      per step: batch, t, noise, augment)   train_vpsde
#   train_vae       -     seed, step                   1000003 seed + step + 500000000       diffmia train-sd (VAE)
#   dp_batch        -     seed, step                   1000003 seed + step + 600000000       diffmia train with DP:
#                                                                                            Poisson batch membership
#   dp_noise        -     seed, step                   1000003 seed + step + 700000000       its gradient noise
#   vae_posterior   s     -                            mix(s, 70000000)                      latent targets that
#                                                                                            sample the VAE posterior
#   noise_aggregation s   seed, t, injection k         mix(s, 90000000 + 10007 seed         noise_aggregation
#                                                          + 1000 k + t)
#
# with mix(s, salt) = (1000003 s + 7919 salt + 12345) mod 2^63 the seed of a torch.Generator. Promises
# that follow (and are tested): forensics' eps-trajectory at t equals the loss attack's loss at t for
# every seed; with seed 0, ``DiffusersAPI.transform`` from t_start for request seed s starts from the loss
# attack's noise of sample s at t = t_start (so does forensics_graybox, whose request seed at seed 0 is
# the sample id). With another attack seed, gray-box/observer noise is a different, independent draw.
STREAMS = ("loss", "forensics", "clid", "api_request", "transform", "transform_step", "generate", "train", "train_vae",
           "dp_batch", "dp_noise", "vae_posterior", "noise_aggregation")


def _mix(s: int, salt: int) -> int:
    return (int(s) * 1_000_003 + int(salt) * 7_919 + 12345) % (2 ** 63)


def stream_seed(stream: str, sample: int = 0, *, seed: int = 0, t: int = 0, step: int = 0) -> int:
    """The integer seed of one draw of ``stream`` for one sample (see the table above)."""
    if stream in ("loss", "forensics", "clid"):
        return _mix(sample, int(seed) * 100_003 + int(t))
    if stream == "api_request":
        return int(sample) + int(seed) * 1_000_000_007
    if stream == "transform":
        return _mix(sample, int(t))
    if stream == "transform_step":
        return _mix(sample, 10_000_000 + int(t) * 1_000 + int(step))
    if stream == "generate":
        return _mix(sample, 50_000_000 + int(seed) * 10_007 + int(step))
    if stream == "train":
        return int(seed) * 1_000_003 + int(step)
    if stream == "train_vae":
        return int(seed) * 1_000_003 + int(step) + 500_000_000
    if stream in ("dp_batch", "dp_noise"):
        return int(seed) * 1_000_003 + int(step) + (600_000_000 if stream == "dp_batch" else 700_000_000)
    if stream == "vae_posterior":
        return _mix(sample, 70_000_000)
    if stream == "noise_aggregation":
        return _mix(sample, 90_000_000 + int(seed) * 10_007 + int(step) * 1_000 + int(t))
    raise ValueError(f"unknown noise stream {stream!r}; streams: {STREAMS}")


def noise(stream: str, shape, samples, device="cpu", **key) -> torch.Tensor:
    """Gaussian noise [B, *shape] of ``stream``; row i depends only on (stream, samples[i], key)."""
    out = torch.empty((len(samples), *shape))
    g = torch.Generator()
    for i, s in enumerate(samples):
        g.manual_seed(stream_seed(stream, int(s), **key))
        out[i] = torch.randn(shape, generator=g)
    return out.to(device)


def generator(stream: str, device="cpu", **key) -> torch.Generator:
    """A torch.Generator (on ``device``) for a stream drawn once per step (``train``, ``dp_batch``, ``dp_noise``),
    seeded by :func:`stream_seed`."""
    return torch.Generator(device=device).manual_seed(stream_seed(stream, **key))
