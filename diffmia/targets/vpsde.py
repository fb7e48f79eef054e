"""Continuous-time diffusion models (VP-SDE) as a :class:`~diffmia.targets.base.NoisePredictor`.

Papers: Y. Song, J. Sohl-Dickstein, D. Kingma, A. Kumar, S. Ermon, B. Poole, "Score-Based Generative
Modeling through Stochastic Differential Equations" (ICLR 2021): the variance-preserving SDE
dx = -beta(t) x / 2 dt + sqrt(beta(t)) dW on t in [0, 1] with beta(t) = beta_min + t (beta_max - beta_min);
Grad-TTS (Popov et al., ICML 2021) is such a model for speech. Kong et al. (PIA, ICLR 2024 / arXiv
2305.18355) report that PIA also works on continuous-time models (Grad-TTS). Threat model: white-box query
access; the attacks only read the model's noise predictions, exactly as on a DDPM.

Forward marginal: q(x_t | x_0) = N(sqrt(abar(t)) x_0, (1 - abar(t)) I) with
log abar(t) = -(beta_min t + (beta_max - beta_min) t^2 / 2)  (``ops.vp_alpha_bar``).

The grid. The attacks index ``alphas_cumprod[k]`` with integer steps k, so the target exposes ``grid``
(default 1000) times t_k = (k + 1) / grid, k = 0..grid-1, with ``alphas_cumprod[k] = abar(t_k)`` (float64),
and ``eps(x_t, k)`` evaluates the model at the continuous time t_k (its time input is t_k * ``time_scale``,
default 1000, as Grad-TTS and score-SDE networks embed time). Why this grid matches a DDPM exactly: Song et
al. 2021 (eq. 10-11 and their appendix B) show that the DDPM chain with linear betas
beta_i = (beta_min + (beta_max - beta_min) (i - 1) / (N - 1)) / N, i = 1..N, i.e. 1e-4..0.02 for N = 1000, is
this SDE's discretisation with x_i = x(i / N). The DDPM's 0-based step k is i = k + 1, the time t_k = (k + 1) / N
of this grid: index k names the same noise level on both kinds of target (and so does the fraction
(k + 1) / T of an attack's timestep parameter). Numerically the DDPM's sqrt(abar_k) and sqrt(1 - abar_k) agree
with this grid's to within 1.5e-3 at every k (tested).

Prediction types. ``epsilon``: the model predicts the noise eps in x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps
(Song et al.'s and Grad-TTS's eps form of the objective). ``score``: it predicts the score
s(x_t, t) = grad_x log p_t(x_t); since grad log q(x_t | x_0) = -(x_t - sqrt(abar) x_0) / (1 - abar)
= -eps / sqrt(1 - abar), the target returns eps = -sqrt(1 - abar(t)) s (``ops.eps_from_model_output``).

Shapes. Samples are N x C x H x W for the attacks. A 1-D model (diffusers ``UNet1DModel``, or any module
taking N x C x L with ``one_d=True``) is served with H == 1: the target hands the model N x C x L and
returns N x C x 1 x L.
"""

from __future__ import annotations

import json

import torch

from .. import ops
from ..errors import TargetError
from .diffusers import DiffusersTarget
from .folder import TargetFolder

PREDICTION_TYPES = ("epsilon", "score")
UNET_CLASSES = ("UNet2DModel", "UNet1DModel", "WaveUNet1D")   # WaveUNet1D: diffmia/wave_unet.py
ONE_D_CLASSES = ("UNet1DModel", "WaveUNet1D")                  # models that take N x C x L


def model_class(name: str):
    """The model class of a ``config.json`` ``_class_name`` (one of UNET_CLASSES)."""
    if name == "WaveUNet1D":
        from ..wave_unet import WaveUNet1D

        return WaveUNet1D
    import diffusers

    return getattr(diffusers, name)
SDE_DEFAULTS = {"type": "vp", "beta_min": 0.1, "beta_max": 20.0, "grid": 1000, "time_scale": 1000.0,
                "prediction_type": "epsilon"}


def vp_grid(grid: int) -> torch.Tensor:
    """The times t_k = (k + 1) / grid, k = 0..grid-1 (float64)."""
    return (torch.arange(int(grid), dtype=torch.float64) + 1) / int(grid)


def check_sde(sde: dict, where: str = "sde.json") -> dict:
    """The SDE settings with defaults filled in, or a one-line TargetError naming ``where``."""
    if not isinstance(sde, dict):
        raise TargetError(f"{where}: expected a JSON object")
    unknown = set(sde) - set(SDE_DEFAULTS)
    if unknown:
        raise TargetError(f"{where}: unknown keys {sorted(unknown)}; keys: {sorted(SDE_DEFAULTS)}")
    out = {**SDE_DEFAULTS, **sde}
    num = (int, float)
    if out["type"] != "vp":
        raise TargetError(f"{where}: type must be 'vp' (the variance-preserving SDE), got {out['type']!r}")
    if any(not isinstance(out[k], num) or isinstance(out[k], bool) for k in ("beta_min", "beta_max", "time_scale")):
        raise TargetError(f"{where}: beta_min, beta_max and time_scale must be numbers")
    if not 0 <= out["beta_min"] < out["beta_max"] or out["time_scale"] <= 0:
        raise TargetError(f"{where}: need 0 <= beta_min < beta_max and time_scale > 0, got {out}")
    if not isinstance(out["grid"], int) or isinstance(out["grid"], bool) or out["grid"] < 1:
        raise TargetError(f"{where}: grid must be a positive integer, got {out['grid']!r}")
    if out["prediction_type"] not in PREDICTION_TYPES:
        raise TargetError(f"{where}: prediction_type must be one of {PREDICTION_TYPES}, got {out['prediction_type']!r}")
    return out


class VPSDETarget(DiffusersTarget):
    """A continuous-time (VP-SDE) model as a :class:`NoisePredictor` on a grid of ``grid`` times.

    Arguments: ``model`` (a diffusers ``UNet2DModel``/``UNet1DModel`` or any module ``model(x, time)`` that
    returns the prediction or an object with ``.sample``), ``beta_min``/``beta_max`` (0.1, 20), ``grid``
    (1000 steps, t_k = (k+1)/grid), ``time_scale`` (1000: the model's time input is t * time_scale),
    ``prediction_type`` ('epsilon' | 'score'), ``device``, ``batch_size`` (images per forward pass),
    ``one_d`` (the model takes N x C x L; default: True for a ``UNet1DModel``), ``sample_shape`` (C, H, W)
    for a module without a diffusers config. Batching, query counting (one per image), ``forward_seconds``
    and class labels as ``cond`` are :class:`~diffmia.targets.diffusers.DiffusersTarget`'s.
    """

    PREDICTION_TYPES = PREDICTION_TYPES

    def __init__(self, model, beta_min: float = 0.1, beta_max: float = 20.0, grid: int = 1000,
                 time_scale: float = 1000.0, prediction_type: str = "epsilon", device="auto",
                 batch_size: int = 256, one_d: bool | None = None, sample_shape=None):
        self.sde = check_sde({"beta_min": beta_min, "beta_max": beta_max, "grid": grid, "time_scale": time_scale,
                              "prediction_type": prediction_type}, "VPSDETarget")
        self.one_d = type(model).__name__ in ONE_D_CLASSES if one_d is None else bool(one_d)
        self._shape = None if sample_shape is None else tuple(int(s) for s in sample_shape)
        self.times = vp_grid(grid)
        self.time_scale = float(time_scale)
        super().__init__(model, ops.vp_alpha_bar(self.times, beta_min, beta_max), prediction_type,
                         device if isinstance(device, str) else torch.device(device), batch_size)

    @property
    def model(self):
        """The network (``unet`` as DiffusersTarget names it)."""
        return self.unet

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the samples the attacks pass (H = 1 for a 1-D model); non-square allowed."""
        if self._shape is not None:
            return self._shape
        cfg = getattr(self.model, "config", None)
        if cfg is None:
            raise TargetError("VPSDETarget: the model has no diffusers config; pass sample_shape=(C, H, W)")
        s = cfg.sample_size
        if self.one_d:
            return (cfg.in_channels, 1, int(s if isinstance(s, int) else s[-1]))
        h, w = (s, s) if isinstance(s, int) else s
        return (cfg.in_channels, int(h), int(w))

    @property
    def model_shape(self) -> tuple[int, int, int]:
        """The shape eps works on (the sample itself: there is no latent space)."""
        return self.sample_shape

    @classmethod
    def from_pretrained(cls, path, weights: str = "ema", device: str = "auto", batch_size: int = 256) -> "VPSDETarget":
        """Load a VP-SDE target folder: ``unet/`` (``weights='ema'``) or ``unet_raw/`` (``'raw'``), diffusers
        ``save_pretrained`` output with safetensors weights (class from config ``_class_name``: UNet2DModel or
        UNet1DModel, or diffmia's WaveUNet1D), ``sde.json`` (module docstring), and split.json / training.json as
        every target."""
        folder = TargetFolder.open(path)
        if not folder.sde_json.exists():
            raise TargetError(f"{folder.sde_json}: missing (a VP-SDE target folder needs it)")
        sde = check_sde(folder.sde_config(), str(folder.sde_json))
        unet_dir = folder.checked_unet_dir(weights)
        name = folder.unet_config(weights).get("_class_name")
        if name not in UNET_CLASSES:
            raise TargetError(f"{unet_dir / 'config.json'}: _class_name must be one of {UNET_CLASSES}, got {name!r}")
        try:
            model = model_class(name).from_pretrained(unet_dir, use_safetensors=True, local_files_only=True,
                                                             low_cpu_mem_usage=False)
        except (OSError, ValueError, TypeError, json.JSONDecodeError) as e:
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise TargetError(f"{unet_dir}: cannot load the model ({why})") from None
        t = cls(model, sde["beta_min"], sde["beta_max"], sde["grid"], sde["time_scale"], sde["prediction_type"],
                device, batch_size)
        t.source = str(path)
        return t

    def time_input(self, k: torch.Tensor) -> torch.Tensor:
        """The model's time input for grid steps ``k``: t_k * time_scale (float32)."""
        return (self.times.to(k.device)[k] * self.time_scale).float()

    def _forward(self, xb: torch.Tensor, kb: torch.Tensor, kw: dict) -> torch.Tensor:
        """The model at the continuous times t_k of steps ``kb`` (a 1-D model sees N x C x L)."""
        if self.one_d and xb.shape[2] != 1:
            raise TargetError(f"VPSDETarget: a 1-D model takes N x C x 1 x L samples, got {tuple(xb.shape)}")
        out = self.unet(xb[:, :, 0] if self.one_d else xb, self.time_input(kb), **kw)
        out = getattr(out, "sample", out)
        return out.unsqueeze(2) if self.one_d else out
