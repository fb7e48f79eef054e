"""The only surface model-access attacks touch: a noise predictor eps_theta(x_t, t, cond)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class NoisePredictor(Protocol):
    """A diffusion model seen as eps_theta(x_t, t, cond).

    ``alphas_cumprod``: float64 [T], 0-based as diffusers stores it. ``eps`` takes x_t in model space
    (N x C x H x W, [-1, 1] for pixel models) and t (int or long tensor [N]) and returns the noise
    prediction whatever the model's prediction type. ``queries`` counts evaluated images.
    ``to_model_space(images, seeds)`` maps [-1, 1] pixels to the space eps works in (identity, or VAE
    latents; ``seeds`` key any per-sample randomness). ``cond`` holds one condition per sample (a class
    label, or a prompt for text-conditioned targets), None for unconditional use.
    """

    alphas_cumprod: torch.Tensor
    num_train_timesteps: int
    queries: int

    def eps(self, x_t: torch.Tensor, t, cond=None) -> torch.Tensor: ...

    def to_model_space(self, images: torch.Tensor, seeds=None) -> torch.Tensor: ...


def timestep_tensor(t, n: int, num_train_timesteps: int, device) -> torch.Tensor:
    """t (an int or a tensor [n]) as a long tensor [n] on ``device``, inside 0..T-1."""
    if not torch.is_tensor(t) or t.ndim == 0:
        t = torch.full((n,), int(t), dtype=torch.long)
    t = t.to(device).long()
    if int(t.min()) < 0 or int(t.max()) >= num_train_timesteps:
        raise ValueError(f"timestep out of range [0, {num_train_timesteps - 1}]: {int(t.min())}..{int(t.max())}")
    return t


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        from ..errors import TargetError
        raise TargetError(f"device {device!r} asked for, but no CUDA GPU is available; use --device cpu")
    return torch.device(device)
