"""The target folder: one object that knows where everything of a target lives on disk.

A target is a local ``diffusers`` pipeline folder (what ``save_pretrained`` writes and ``diffmia train``
produces) plus diffmia's own records beside it::

    model_index.json        the pipeline class (DDPMPipeline; StableDiffusionPipeline for latent targets)
    unet/                   config.json + *.safetensors (EMA weights when trained by diffmia)
    unet_raw/               optional raw (non-EMA) weights: ``--weights raw``
    scheduler/              scheduler_config.json (noise schedule, prediction type, T)
    sde.json                continuous-time (VP-SDE) targets instead of scheduler/: {"type": "vp", "beta_min",
                            "beta_max", "grid", "time_scale", "prediction_type"} (targets/vpsde.py)
    vae/ text_encoder/ tokenizer/   latent, text-conditioned targets (Stable Diffusion layout)
    split.json              the membership split the target was trained on
    captions.csv, replacement_captions.csv   latent targets: the samples' captions (id,caption), and
                            captions of the same images by another captioner
    train_config.json, training.json, checkpoint/   training configuration, record and resume state
    conversion.json         for a converted checkpoint: its source, SHA-256 and configuration
    samples.png             a grid of samples

Everything that reads or writes this layout asks a :class:`TargetFolder`; no other module spells a
sub-folder name. Weights are only ever read from ``safetensors``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import TargetError

WEIGHTS = {"ema": "unet", "raw": "unet_raw"}          # --weights -> the UNet's sub-folder
LATENT_COMPONENTS = ("vae", "text_encoder", "tokenizer")


def sample_size(unet_config) -> int:
    """The UNet's square input size from its config (``sample_size`` is an int or [H, W])."""
    s = unet_config["sample_size"] if isinstance(unet_config, dict) else unet_config.sample_size
    return int(s) if isinstance(s, int) else int(s[0])


def vae_scale(vae_config) -> int:
    """How many pixels one latent position spans: 2 ** (number of VAE blocks - 1)."""
    blocks = vae_config["block_out_channels"] if isinstance(vae_config, dict) else vae_config.block_out_channels
    return 2 ** (len(blocks) - 1)


@dataclass(frozen=True)
class TargetFolder:
    """Paths and small facts of one target folder (nothing is loaded until asked)."""

    path: Path

    def __init__(self, path):
        object.__setattr__(self, "path", Path(path))

    @classmethod
    def open(cls, path) -> "TargetFolder":
        """An existing folder, or a one-line error."""
        folder = cls(path)
        if not folder.path.is_dir():
            raise TargetError(f"{folder.path}: target folder not found")
        return folder

    # -- the layout
    def unet_dir(self, weights: str = "ema") -> Path:
        if weights not in WEIGHTS:
            raise TargetError(f"weights must be 'ema' or 'raw', got {weights!r}")
        return self.path / WEIGHTS[weights]

    @property
    def scheduler_dir(self) -> Path:
        return self.path / "scheduler"

    def component_dir(self, name: str) -> Path:
        """A latent target's component folder: 'vae', 'text_encoder' or 'tokenizer'."""
        if name not in LATENT_COMPONENTS:
            raise TargetError(f"unknown component {name!r}; components: {LATENT_COMPONENTS}")
        return self.path / name

    @property
    def split_path(self) -> Path:
        return self.path / "split.json"

    @property
    def captions_csv(self) -> Path:
        return self.path / "captions.csv"

    @property
    def replacement_captions_csv(self) -> Path:
        return self.path / "replacement_captions.csv"

    @property
    def samples_png(self) -> Path:
        return self.path / "samples.png"

    @property
    def training_json(self) -> Path:
        return self.path / "training.json"

    @property
    def train_config_json(self) -> Path:
        return self.path / "train_config.json"

    @property
    def conversion_json(self) -> Path:
        return self.path / "conversion.json"

    @property
    def sde_json(self) -> Path:
        return self.path / "sde.json"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoint"

    @property
    def model_index_json(self) -> Path:
        return self.path / "model_index.json"

    # -- facts
    @property
    def is_latent(self) -> bool:
        """True for a latent (VAE) target: the Stable Diffusion layout has a ``vae/`` folder."""
        return (self.path / "vae").is_dir()

    @property
    def is_vpsde(self) -> bool:
        """True for a continuous-time (VP-SDE) target: it has ``sde.json``."""
        return self.sde_json.exists()

    def checked_unet_dir(self, weights: str = "ema") -> Path:
        """The UNet folder, after checking it holds a config and safetensors weights."""
        unet = self.unet_dir(weights)
        if not (unet / "config.json").exists():
            hint = " (this target has no raw weights)" if weights == "raw" else ""
            raise TargetError(f"{unet}: no diffusers UNet here (config.json missing){hint}")
        if not any(unet.glob("*.safetensors")):
            raise TargetError(f"{unet}: no .safetensors weights (diffmia never unpickles .bin files)")
        return unet

    def checked_scheduler_dir(self) -> Path:
        if not (self.scheduler_dir / "scheduler_config.json").exists():
            raise TargetError(f"{self.scheduler_dir}: scheduler_config.json missing")
        return self.scheduler_dir

    def _json(self, path: Path) -> dict:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise TargetError(f"{path}: cannot read ({e})") from None

    def unet_config(self, weights: str = "ema") -> dict:
        return self._json(self.unet_dir(weights) / "config.json")

    def scheduler_config(self) -> dict:
        return self._json(self.scheduler_dir / "scheduler_config.json")

    def sample_size(self, weights: str = "ema") -> int | None:
        """The model's input size, or None when the folder has no UNet config."""
        if not (self.unet_dir(weights) / "config.json").exists():
            return None
        return sample_size(self.unet_config(weights))

    def image_size(self, weights: str = "ema") -> int | None:
        """The size of the images the target takes: the UNet's input size, times the VAE's downscaling for
        a latent target (None without a UNet config)."""
        size = self.sample_size(weights)
        if size is None or not self.is_latent:
            return size
        return size * vae_scale(self._json(self.component_dir("vae") / "config.json"))

    def image_channels(self, weights: str = "ema") -> int | None:
        """The channels of the images the target takes (the UNet's, or the VAE's for a latent target)."""
        cfg = self._json(self.component_dir("vae") / "config.json") if self.is_latent else (
            self.unet_config(weights) if (self.unet_dir(weights) / "config.json").exists() else {})
        return cfg.get("in_channels")

    def sde_config(self) -> dict:
        return self._json(self.sde_json)

    def num_train_timesteps(self) -> int | None:
        """T from the scheduler config, or a VP-SDE target's grid (None without either)."""
        if not (self.scheduler_dir / "scheduler_config.json").exists():
            if self.is_vpsde:
                return int(self.sde_config().get("grid", 1000))
            return None
        return int(self.scheduler_config().get("num_train_timesteps", 1000))

    def training_record(self) -> dict:
        return self._json(self.training_json)
