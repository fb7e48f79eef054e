"""Targets built from ``diffusers`` models saved in a local folder.

Folder layout (also what ``diffmia train`` writes, and a valid ``DDPMPipeline`` folder):
``unet/`` (config.json + diffusion_pytorch_model.safetensors; EMA weights when trained by diffmia),
``unet_raw/`` (optional raw weights), ``scheduler/`` (scheduler_config.json).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import ops
from ..errors import TargetError
from .base import resolve_device


class DiffusersTarget:
    """A pixel-space ``UNet2DModel`` + noise schedule as a :class:`NoisePredictor`.

    Parameters: ``unet``, ``alphas_cumprod`` (from the scheduler), ``prediction_type``,
    ``device`` ('cpu' | 'cuda' | 'auto'), ``batch_size`` (images per forward pass).
    Class-conditional UNets take integer class labels as ``cond``.
    """

    def __init__(self, unet, alphas_cumprod, prediction_type: str = "epsilon",
                 device: str = "auto", batch_size: int = 256, dtype=torch.float32):
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise TargetError(f"unsupported prediction_type {prediction_type!r}")
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.dtype = dtype
        unet = unet.to(self.device) if dtype == torch.float32 else unet.to(self.device, dtype)
        self.unet = unet.eval().requires_grad_(False)
        self.alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self.num_train_timesteps = len(self.alphas_cumprod)
        self.prediction_type = prediction_type
        self.batch_size = int(batch_size)
        self.queries = 0
        self.forward_seconds = 0.0
        self.source = None

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        cfg = self.unet.config
        size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
        return (cfg.in_channels, size, size)

    @classmethod
    def from_pretrained(cls, path, weights: str = "ema", device: str = "auto",
                        batch_size: int = 256) -> "DiffusersTarget":
        """Load a local folder (see module doc). ``weights``: 'ema' (``unet/``) or 'raw' (``unet_raw/``)."""
        from diffusers import DDPMScheduler, UNet2DModel

        path = Path(path)
        if not path.is_dir():
            raise TargetError(f"{path}: target folder not found")
        sub = {"ema": "unet", "raw": "unet_raw"}.get(weights)
        if sub is None:
            raise TargetError(f"weights must be 'ema' or 'raw', got {weights!r}")
        unet_dir = path / sub
        if not (unet_dir / "config.json").exists():
            hint = " (this target has no raw weights)" if weights == "raw" else ""
            raise TargetError(f"{unet_dir}: no diffusers UNet here (config.json missing){hint}")
        if not any(unet_dir.glob("*.safetensors")):
            raise TargetError(f"{unet_dir}: no .safetensors weights (diffmia never unpickles .bin files)")
        sched_dir = path / "scheduler"
        if not (sched_dir / "scheduler_config.json").exists():
            raise TargetError(f"{sched_dir}: scheduler_config.json missing")
        try:
            unet = UNet2DModel.from_pretrained(unet_dir, use_safetensors=True, local_files_only=True,
                                               low_cpu_mem_usage=False)
            sched = DDPMScheduler.from_pretrained(sched_dir, local_files_only=True)
        except (OSError, ValueError, json.JSONDecodeError) as e:
            raise TargetError(f"{path}: cannot load the model ({e})") from None
        t = cls(unet, sched.alphas_cumprod, sched.config.prediction_type, device, batch_size)
        t.source = str(path)
        return t

    def to_model_space(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.device, self.dtype)

    def from_model_space(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.inference_mode()
    def eps(self, x_t: torch.Tensor, t, cond=None) -> torch.Tensor:
        """eps_theta(x_t, t, cond), in batches of ``batch_size``; counts one query per image."""
        import time

        n = x_t.shape[0]
        if not torch.is_tensor(t) or t.ndim == 0:
            t = torch.full((n,), int(t), dtype=torch.long)
        t = t.to(self.device).long()
        if int(t.min()) < 0 or int(t.max()) >= self.num_train_timesteps:
            raise ValueError(f"timestep out of range [0, {self.num_train_timesteps - 1}]: "
                             f"{int(t.min())}..{int(t.max())}")
        x_t = x_t.to(self.device, self.dtype)
        outs = []
        start = time.perf_counter()
        for i in range(0, n, self.batch_size):
            xb, tb = x_t[i:i + self.batch_size], t[i:i + self.batch_size]
            kw = {}
            if cond is not None:
                kw["class_labels"] = torch.as_tensor(cond[i:i + self.batch_size], device=self.device)
            out = self.unet(xb, tb, **kw).sample
            outs.append(ops.eps_from_model_output(self.alphas_cumprod, xb, tb, out, self.prediction_type))
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.forward_seconds += time.perf_counter() - start
        self.queries += n
        return torch.cat(outs).float()
