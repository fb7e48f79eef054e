"""Latent, text-conditioned targets: a local diffusers Stable Diffusion folder as a noise predictor.

Folder (``StableDiffusionPipeline.save_pretrained`` layout, see ``folder.py``): ``vae/`` AutoencoderKL,
``text_encoder/`` CLIPTextModel, ``tokenizer/`` CLIPTokenizer, ``unet/`` UNet2DConditionModel, ``scheduler/``.
Weights load only from safetensors; nothing is downloaded.

The attacks see the same interface as for pixel models; only the space and the condition change:

* ``to_model_space(images, seeds)``: images in [-1, 1] -> latents z = E(x) x ``scaling_factor``, with E the
  mean of the VAE's posterior (deterministic), or a draw from it (``sample_posterior=True``, noise stream
  ``vae_posterior`` keyed by the sample's seed);
* ``eps(z_t, t, cond)``: ``cond`` holds one prompt per sample (None = the empty prompt ""); the prompt is
  encoded by the tokenizer and text encoder (cached per distinct prompt). With ``guidance_scale`` w != 1
  the prediction is classifier-free guidance, eps_u + w (eps_c - eps_u), which costs two UNet evaluations
  per sample and is counted as two queries. ``queries`` counts UNet evaluations; encoding images and
  prompts is not counted (an attacker can do it with the public VAE and text encoder).
"""

from __future__ import annotations

import json
import time

import torch

from .. import ops
from ..errors import TargetError
from .base import resolve_device, timestep_tensor
from .folder import LATENT_COMPONENTS, TargetFolder, sample_size, vae_scale


class LatentDiffusersTarget:
    """A Stable Diffusion-style model (VAE + text encoder + conditional UNet) as a :class:`NoisePredictor`."""

    latent = True

    def __init__(self, unet, vae, text_encoder, tokenizer, alphas_cumprod, prediction_type: str = "epsilon",
                 guidance_scale: float = 1.0, sample_posterior: bool = False, device: str = "auto",
                 batch_size: int = 64, dtype=torch.float32):
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise TargetError(f"unsupported prediction_type {prediction_type!r}")
        if not float(guidance_scale) > 0:
            raise TargetError(f"guidance_scale must be positive, got {guidance_scale!r}")
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.dtype = dtype
        move = (lambda m: m.to(self.device)) if dtype == torch.float32 else (lambda m: m.to(self.device, dtype))
        self.unet = move(unet).eval().requires_grad_(False)
        self.vae = move(vae).eval().requires_grad_(False)
        self.text_encoder = text_encoder.to(self.device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self.num_train_timesteps = len(self.alphas_cumprod)
        self.prediction_type = prediction_type
        self.guidance_scale = float(guidance_scale)
        self.sample_posterior = bool(sample_posterior)
        self.batch_size = int(batch_size)
        self.scaling_factor = float(getattr(vae.config, "scaling_factor", 0.18215))
        self.queries = 0
        self.forward_seconds = 0.0
        self.source = None
        self._prompts: dict[str, torch.Tensor] = {}

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """Pixel images the target takes (C, H, W)."""
        size = sample_size(self.unet.config) * vae_scale(self.vae.config)
        return (self.vae.config.in_channels, size, size)

    @property
    def model_shape(self) -> tuple[int, int, int]:
        """The latents' shape (C, h, w) eps works on."""
        s = sample_size(self.unet.config)
        return (self.unet.config.in_channels, s, s)

    @classmethod
    def from_pretrained(cls, path, weights: str = "ema", device: str = "auto", batch_size: int = 64,
                        guidance_scale: float = 1.0, sample_posterior: bool = False) -> "LatentDiffusersTarget":
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()

        folder = TargetFolder.open(path)
        unet_dir = folder.checked_unet_dir(weights)
        sched_dir = folder.checked_scheduler_dir()
        for name in LATENT_COMPONENTS:
            if not folder.component_dir(name).is_dir():
                raise TargetError(f"{folder.component_dir(name)}: missing; a latent target needs "
                                  f"{', '.join(c + '/' for c in LATENT_COMPONENTS)} beside unet/ and scheduler/")
        for name in ("vae", "text_encoder"):
            if not any(folder.component_dir(name).glob("*.safetensors")):
                raise TargetError(f"{folder.component_dir(name)}: no .safetensors weights (diffmia never "
                                  "unpickles .bin/.ckpt files)")
        try:
            kw = dict(use_safetensors=True, local_files_only=True, low_cpu_mem_usage=False)
            unet = UNet2DConditionModel.from_pretrained(unet_dir, **kw)
            vae = AutoencoderKL.from_pretrained(folder.component_dir("vae"), **kw)
            text_encoder = CLIPTextModel.from_pretrained(folder.component_dir("text_encoder"), use_safetensors=True,
                                                         local_files_only=True)
            tokenizer = CLIPTokenizer.from_pretrained(folder.component_dir("tokenizer"), local_files_only=True)
            sched = DDPMScheduler.from_pretrained(sched_dir, local_files_only=True)
        except (OSError, ValueError, json.JSONDecodeError) as e:
            raise TargetError(f"{folder.path}: cannot load the latent model ({str(e).splitlines()[0]})") from None
        t = cls(unet, vae, text_encoder, tokenizer, sched.alphas_cumprod, sched.config.prediction_type,
                guidance_scale, sample_posterior, device, batch_size)
        t.source = str(path)
        return t

    # -- spaces
    @torch.inference_mode()
    def to_model_space(self, images: torch.Tensor, seeds=None) -> torch.Tensor:
        """Latents of [-1, 1] images: the VAE posterior's mean (or a seeded draw) x scaling_factor."""
        x = images.to(self.device, self.dtype)
        if tuple(x.shape[1:]) != self.sample_shape:
            raise TargetError(f"images are {tuple(x.shape[1:])} (C x H x W) but the latent target takes "
                              f"{self.sample_shape}")
        outs = []
        for i in range(0, len(x), self.batch_size):
            post = self.vae.encode(x[i:i + self.batch_size]).latent_dist
            z = post.mean
            if self.sample_posterior:
                s = range(i, i + len(z)) if seeds is None else seeds[i:i + self.batch_size]
                z = z + post.std * ops.noise("vae_posterior", z.shape[1:], s, device=z.device)
            outs.append(z * self.scaling_factor)
        return torch.cat(outs).float()

    @torch.inference_mode()
    def from_model_space(self, z: torch.Tensor) -> torch.Tensor:
        """Decoded images in [-1, 1] (not clipped)."""
        z = z.to(self.device, self.dtype) / self.scaling_factor
        return torch.cat([self.vae.decode(z[i:i + self.batch_size]).sample
                          for i in range(0, len(z), self.batch_size)]).float()

    @torch.inference_mode()
    def encode_prompts(self, prompts) -> torch.Tensor:
        """Text-encoder hidden states [N, L, D] of the prompts (cached per distinct prompt, at most 2048)."""
        todo = sorted({p for p in prompts if p not in self._prompts})
        if len(self._prompts) + len(todo) > 2048:
            self._prompts.clear()                      # a large audit: keep memory bounded
            todo = sorted(set(prompts))
        if todo:
            ids = self.tokenizer(todo, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids.to(self.device)
            hidden = self.text_encoder(ids)[0].to(self.dtype)
            self._prompts.update(zip(todo, hidden))
        return torch.stack([self._prompts[p] for p in prompts])

    # -- the noise predictor
    @torch.inference_mode()
    def eps(self, x_t: torch.Tensor, t, cond=None) -> torch.Tensor:
        """eps_theta(z_t, t, prompt) in batches; one query per image (two with guidance != 1)."""
        n = x_t.shape[0]
        prompts = [""] * n if cond is None else [str(c) for c in cond]
        if len(prompts) != n:
            raise TargetError(f"got {len(prompts)} prompts for {n} latents")
        t = timestep_tensor(t, n, self.num_train_timesteps, self.device)
        x_t = x_t.to(self.device, self.dtype)
        guided = self.guidance_scale != 1.0
        outs = []
        start = time.perf_counter()
        for i in range(0, n, self.batch_size):
            xb, tb = x_t[i:i + self.batch_size], t[i:i + self.batch_size]
            hc = self.encode_prompts(prompts[i:i + self.batch_size])
            out = self.unet(xb, tb, encoder_hidden_states=hc).sample
            e = ops.eps_from_model_output(self.alphas_cumprod, xb, tb, out, self.prediction_type)
            if guided:                                  # classifier-free guidance: eps_u + w (eps_c - eps_u)
                hu = self.encode_prompts([""] * len(xb))
                ou = self.unet(xb, tb, encoder_hidden_states=hu).sample
                eu = ops.eps_from_model_output(self.alphas_cumprod, xb, tb, ou, self.prediction_type)
                e = eu + self.guidance_scale * (e - eu)
            outs.append(e)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.forward_seconds += time.perf_counter() - start
        self.queries += n * (2 if guided else 1)
        return torch.cat(outs).float()
