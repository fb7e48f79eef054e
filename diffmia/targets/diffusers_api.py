"""A local diffusers model served as a generation API (black-box / gray-box access): pixel DDPMs and latent,
text-conditioned Stable Diffusion folders (text-to-image ``generate`` and image-to-image ``transform`` with a
prompt per image, as ``StableDiffusionPipeline`` / ``StableDiffusionImg2ImgPipeline`` do: strength =
t_start / T, steps, seed).

The semantics of ``generate`` and ``transform`` are those of :class:`~diffmia.targets.api.GenerationAPI`.
The network is a private attribute: nothing public predicts noise, so API attacks cannot reach it.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch

from .. import ops
from ..errors import DiffmiaError, TargetError
from .api import _as_images, per_image_seeds, transform_timesteps
from .diffusers import DiffusersTarget
from .folder import TargetFolder


class DiffusersAPI:
    """A local diffusers model served as a :class:`GenerationAPI`.

    Parameters: ``unet`` (a ``UNet2DModel``), ``alphas_cumprod`` (the scheduler's), ``prediction_type``,
    ``device`` ('cpu' | 'cuda' | 'auto'), ``batch_size`` (images per network call),
    ``generate_sampler`` ('ddpm': ancestral, default; 'ddim': deterministic) and ``generate_steps``
    (reverse steps for ``generate``, spread evenly over 0..T-1; default 100, as the sample grids of
    ``diffmia train``), ``transform_sampler`` ('ddim', deterministic, default; or 'ddpm'),
    ``clip_sample`` (clip each x0 estimate to [-1, 1] inside the reverse process, as the diffusers
    schedulers do with ``clip_sample=True``; :meth:`from_pretrained` reads it from the scheduler),
    ``quantize`` (round outputs to 256 levels, like a service returning 8-bit images; default False).
    ``model``: serve an already built noise predictor instead (a ``LatentDiffusersTarget`` for Stable
    Diffusion: the reverse process then runs on latents, each x0 estimate is decoded through the VAE
    before it is shown, and every call takes ``prompt``: one string, or one per image; default "").

    Sampling (both calls), at steps tau_0 > ... > tau_{K-1} = 0: x0_hat = (x - sqrt(1-abar) e)/sqrt(abar)
    (clipped if ``clip_sample``); DDIM: x_next = sqrt(abar_next) x0_hat + sqrt(1-abar_next) e; DDPM:
    a draw from the posterior q(x_next | x, x0_hat) between the two steps (the strided DDPM step of
    diffusers); the output is x0_hat at tau = 0. Every random draw comes from a named noise stream of
    :mod:`diffmia.ops` keyed by the image's seed (``generate``: stream ``generate``; ``transform``: streams
    ``transform`` and ``transform_step``), so image i of ``generate(n, seed)`` equals image i of
    ``generate(m, seed)``. The initial noise of ``transform`` for request seed s at t_start is the noise
    the loss attack with seed 0 draws for sample s at t = t_start.
    """

    SAMPLERS = ("ddpm", "ddim")

    def __init__(self, unet=None, alphas_cumprod=None, prediction_type: str = "epsilon", device: str = "auto",
                 batch_size: int = 256, generate_sampler: str = "ddpm", generate_steps: int = 100,
                 transform_sampler: str = "ddim", clip_sample: bool = True, quantize: bool = False, model=None):
        for k, v in (("generate_sampler", generate_sampler), ("transform_sampler", transform_sampler)):
            if v not in self.SAMPLERS:
                raise TargetError(f"{k} must be one of {self.SAMPLERS}, got {v!r}")
        self.__model = model if model is not None else DiffusersTarget(unet, alphas_cumprod, prediction_type, device,
                                                                         batch_size)
        self.latent = bool(getattr(self.__model, "latent", False))
        self.num_train_timesteps = self.__model.num_train_timesteps
        if not isinstance(generate_steps, (int, np.integer)) or not 1 <= generate_steps <= self.num_train_timesteps:
            raise TargetError(f"generate_steps must be 1..{self.num_train_timesteps}, got {generate_steps!r}")
        self.image_shape = self.__model.sample_shape               # what callers send and receive
        self.__space = self.__model.model_shape                    # where the reverse process runs
        self.generate_sampler = generate_sampler
        self.generate_steps = int(generate_steps)
        self.transform_sampler = transform_sampler
        self.clip_sample = bool(clip_sample)
        self.quantize = bool(quantize)
        self.source = None
        self.generate_calls = 0
        self.transform_calls = 0
        self.images_generated = 0
        self.images_transformed = 0
        self.__identity = None

    @classmethod
    def from_pretrained(cls, path, weights: str = "ema", device: str = "auto", batch_size: int = 256,
                        **kwargs) -> "DiffusersAPI":
        """Serve a local target folder (pixel, or latent with vae/ text_encoder/ tokenizer/); ``kwargs`` as in
        the constructor (``clip_sample`` defaults to the scheduler's setting)."""
        folder = TargetFolder.open(path)
        if folder.is_latent:
            from .stable_diffusion import LatentDiffusersTarget

            t = LatentDiffusersTarget.from_pretrained(path, weights=weights, device=device, batch_size=batch_size)
        else:
            t = DiffusersTarget.from_pretrained(path, weights=weights, device=device, batch_size=batch_size)
        if "clip_sample" not in kwargs:
            kwargs["clip_sample"] = bool(folder.scheduler_config().get("clip_sample", True))
        api = cls(batch_size=batch_size, model=t, **kwargs)
        api.source = str(path)
        return api

    # -- bookkeeping
    @property
    def model_evaluations(self) -> int:
        """Network evaluations (one per image per reverse step) spent by all calls so far."""
        return self.__model.queries

    @property
    def api_calls(self) -> int:
        return self.generate_calls + self.transform_calls

    @property
    def device(self) -> torch.device:
        return self.__model.device

    def identity(self) -> str:
        """sha256 of the weights, the schedule and the sampling settings (keys caches of generated sets)."""
        if self.__identity is None:
            h = hashlib.sha256()
            m = self.__model
            for part in [m.unet] + ([m.vae, m.text_encoder] if self.latent else []):
                for name, v in sorted(part.state_dict().items()):
                    h.update(name.encode())
                    h.update(v.detach().cpu().contiguous().numpy().tobytes())
            h.update(self.__model.alphas_cumprod.numpy().tobytes())
            h.update(json.dumps([self.__model.prediction_type, self.generate_sampler, self.generate_steps,
                                 self.transform_sampler, self.clip_sample, self.quantize]).encode())
            self.__identity = "diffusers-api:" + h.hexdigest()
        return self.__identity

    def __repr__(self) -> str:
        return (f"DiffusersAPI(source={self.source!r}, generate={self.generate_sampler}x{self.generate_steps}, "
                f"transform={self.transform_sampler})")

    # -- sampling
    def _out(self, x: torch.Tensor) -> torch.Tensor:
        """What the service shows of a clean-image estimate: decoded (latent models), clipped, quantized."""
        x = self.__model.from_model_space(x).float().clamp(-1, 1)
        if self.quantize:
            x = torch.round((x + 1) * 127.5) / 127.5 - 1
        return x.cpu()

    @torch.inference_mode()
    def _reverse(self, x, steps, seeds, sampler: str, stream: str, key: dict, keep: bool, prompts=None):
        """Run the reverse process from x at steps[0]; returns (final, {step: x0_hat}). The DDPM sampler's
        k-th draw (k >= 1) comes from ``stream`` with ``step=k`` and ``key``; ``prompts`` condition a
        text-to-image model."""
        m = self.__model
        abar = m.alphas_cumprod
        inter = {}
        x0_hat = None
        for k, t in enumerate(steps):
            e = m.eps(x, t, prompts)
            x0_hat = ops.predict_x0(abar, x, t, e)
            if self.clip_sample:
                x0_hat = x0_hat.clamp(-1, 1)
            if keep:
                inter[int(t)] = self._out(x0_hat)
            if k + 1 == len(steps):
                break
            s = steps[k + 1]
            a_t, a_s = float(abar[t]), float(abar[s])
            if sampler == "ddim":
                x = a_s ** 0.5 * x0_hat + (1 - a_s) ** 0.5 * e
            else:  # posterior q(x_s | x_t, x0_hat) of the strided chain (DDPM eq. 6-7 with abar_t / abar_s)
                beta = 1 - a_t / a_s
                mean = (a_s ** 0.5 * beta / (1 - a_t)) * x0_hat + ((1 - beta) ** 0.5 * (1 - a_s) / (1 - a_t)) * x
                var = beta * (1 - a_s) / (1 - a_t)
                z = ops.noise(stream, x.shape[1:], seeds, device=x.device, step=k + 1, **key)
                x = mean + var ** 0.5 * z
        return self._out(x0_hat), inter

    def _prompts(self, prompt, n: int):
        if prompt is None:
            return None
        if not self.latent:
            raise DiffmiaError("this model is not text-conditioned: it takes no prompt")
        prompts = [prompt] * n if isinstance(prompt, str) else [str(p) for p in prompt]
        if len(prompts) != n:
            raise DiffmiaError(f"got {len(prompts)} prompts for {n} images")
        return prompts

    def generate(self, n: int, seed: int = 0, prompt=None) -> torch.Tensor:
        """``n`` samples (N x C x H x W in [-1, 1]); image i depends only on (seed, i) (and its prompt)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise DiffmiaError(f"generate: n must be a positive integer, got {n!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise DiffmiaError(f"generate: seed must be an integer, got {seed!r}")
        T = self.num_train_timesteps
        steps = tuple(int(round(t)) for t in np.linspace(T - 1, 0, self.generate_steps)) \
            if self.generate_steps > 1 else (T - 1,)
        seeds = np.arange(int(n), dtype=np.int64)
        prompts = self._prompts(prompt, int(n))
        key = {"seed": int(seed)}
        self.generate_calls += 1
        out = []
        bs = max(1, self.__model.batch_size)
        for i in range(0, n, bs):
            sb = seeds[i:i + bs]
            x = ops.noise("generate", self.__space, sb, device=self.device, step=0, **key)
            final, _ = self._reverse(x, steps, sb, self.generate_sampler, "generate", key, keep=False,
                                     prompts=None if prompts is None else prompts[i:i + bs])
            out.append(final)
        self.images_generated += int(n)
        return torch.cat(out)

    def transform(self, images, t_start: int, num_steps: int, seed=0, return_intermediates: bool = True,
                  prompt=None):
        """Image-to-image from ``t_start`` in ``num_steps`` steps (module docstring). Returns
        ``(final, intermediates)``; ``intermediates`` is ``{}`` when ``return_intermediates`` is False."""
        x0 = _as_images(images, "transform", shape=self.image_shape)
        steps = transform_timesteps(t_start, num_steps, self.num_train_timesteps)
        seeds = per_image_seeds(seed, len(x0))
        prompts = self._prompts(prompt, len(x0))
        z0 = self.__model.to_model_space(x0.to(self.device), seeds)        # latents (identity for pixels)
        noise = ops.noise("transform", z0.shape[1:], seeds, device=self.device, t=steps[0])
        x = ops.q_sample(self.__model.alphas_cumprod, z0, steps[0], noise)
        self.transform_calls += 1
        final, inter = self._reverse(x, steps, seeds, self.transform_sampler, "transform_step",
                                     {"t": steps[0]}, keep=return_intermediates, prompts=prompts)
        self.images_transformed += len(x0)
        return final, inter
