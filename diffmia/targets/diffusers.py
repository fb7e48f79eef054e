"""Model-access targets built from ``diffusers`` models saved in a local folder (layout: ``folder.py``)."""

from __future__ import annotations

import json
import time

import torch

from .. import ops
from ..errors import TargetError
from .base import resolve_device, timestep_tensor
from .folder import TargetFolder, sample_size


class DiffusersTarget:
    """A pixel-space ``UNet2DModel`` + noise schedule as a :class:`NoisePredictor`.

    Parameters: ``unet``, ``alphas_cumprod`` (from the scheduler), ``prediction_type``,
    ``device`` ('cpu' | 'cuda' | 'auto'), ``batch_size`` (images per forward pass).
    Class-conditional UNets take integer class labels as ``cond``. Subclasses for other kinds of model
    (:class:`~diffmia.targets.vpsde.VPSDETarget`) override ``_forward`` and ``PREDICTION_TYPES``.
    """

    PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")

    def __init__(self, unet, alphas_cumprod, prediction_type: str = "epsilon",
                 device: str = "auto", batch_size: int = 256, dtype=torch.float32):
        if prediction_type not in self.PREDICTION_TYPES:
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
        size = sample_size(self.unet.config)
        return (self.unet.config.in_channels, size, size)

    @property
    def model_shape(self) -> tuple[int, int, int]:
        """The shape eps works on (the image itself for a pixel model)."""
        return self.sample_shape

    @classmethod
    def from_pretrained(cls, path, weights: str = "ema", device: str = "auto",
                        batch_size: int = 256) -> "DiffusersTarget":
        """Load a local target folder (:class:`~diffmia.targets.folder.TargetFolder`). ``weights``: 'ema'
        (``unet/``) or 'raw' (``unet_raw/``)."""
        from diffusers import DDPMScheduler, UNet2DModel

        folder = TargetFolder.open(path)
        unet_dir = folder.checked_unet_dir(weights)
        sched_dir = folder.checked_scheduler_dir()
        try:
            unet = UNet2DModel.from_pretrained(unet_dir, use_safetensors=True, local_files_only=True,
                                               low_cpu_mem_usage=False)
            sched = DDPMScheduler.from_pretrained(sched_dir, local_files_only=True)
        except (OSError, ValueError, json.JSONDecodeError) as e:
            raise TargetError(f"{folder.path}: cannot load the model ({e})") from None
        t = cls(unet, sched.alphas_cumprod, sched.config.prediction_type, device, batch_size)
        t.source = str(path)
        return t

    def to_model_space(self, images: torch.Tensor, seeds=None) -> torch.Tensor:
        """Pixel models work on the images themselves ([-1, 1])."""
        return images.to(self.device, self.dtype)

    def from_model_space(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.inference_mode()
    def eps(self, x_t: torch.Tensor, t, cond=None) -> torch.Tensor:
        """eps_theta(x_t, t, cond), in batches of ``batch_size``; counts one query per image."""
        n = x_t.shape[0]
        t = timestep_tensor(t, n, self.num_train_timesteps, self.device)
        x_t = x_t.to(self.device, self.dtype)
        outs = []
        start = time.perf_counter()
        for i in range(0, n, self.batch_size):
            xb, tb = x_t[i:i + self.batch_size], t[i:i + self.batch_size]
            kw = {}
            if cond is not None:
                kw["class_labels"] = torch.as_tensor(cond[i:i + self.batch_size], device=self.device)
            out = self._forward(xb, tb, kw)
            outs.append(ops.eps_from_model_output(self.alphas_cumprod, xb, tb, out, self.prediction_type))
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.forward_seconds += time.perf_counter() - start
        self.queries += n
        return torch.cat(outs).float()

    def _forward(self, xb: torch.Tensor, tb: torch.Tensor, kw: dict) -> torch.Tensor:
        """The model's raw output for one batch at steps ``tb`` (its prediction_type's quantity)."""
        return self.unet(xb, tb, **kw).sample
