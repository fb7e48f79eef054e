"""The interface every attack shares.

An attack turns (target, images) into per-sample membership scores, **higher = member**, in two steps:

1. ``features(target, images, cond=None, seeds=None) -> dict[str, ndarray]``: everything that needs the
   target (all the queries). Arrays have N rows. The runner caches them on disk per chunk, so runs
   resume and all later steps rerun without the model.
2. ``scores(features) -> dict[str, ndarray]``: one or more score *variants* (N floats each) computed from
   the features without new queries; the first key is the attack's primary score as its paper defines
   it. Variants (a timestep sweep, a truncation/statistic grid) let the evaluation choose on the
   calibration half. Learned attacks (``learned = True``) first ``fit(features, is_member)`` on
   calibration rows only, and return ``self``.

``score(target, images)`` chains both for the primary score (the usual call for users). Constructors only
store hyperparameters (paper defaults); ``get_params()`` returns them. ``queries_per_sample()`` says how
many noise predictions (or API calls) one sample costs; tests measure it by counting.
"""

from __future__ import annotations

import inspect
from typing import ClassVar

import numpy as np
import torch

from ..errors import DiffmiaError


class Attack:
    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    threat_model: ClassVar[str] = ""   # "white-box" | "gray-box" | "black-box" | "no access"
    access: ClassVar[str] = "model"    # "model": NoisePredictor; "api": GenerationAPI; "none"
    learned: ClassVar[bool] = False

    # -- sklearn-style parameters
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self) -> dict:
        out = {}
        for k in self._param_names():
            v = getattr(self, k)
            out[k] = list(v) if isinstance(v, tuple) else v
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- the interface
    def queries_per_sample(self) -> int:
        raise NotImplementedError

    def features(self, target, images: torch.Tensor, cond=None, seeds=None) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def fit(self, features: dict[str, np.ndarray], is_member: np.ndarray) -> "Attack":
        return self

    def scores(self, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def score(self, target, images: torch.Tensor, cond=None, seeds=None) -> np.ndarray:
        """The primary score, one float per image (higher = member)."""
        if self.learned and not getattr(self, "fitted_", False):
            raise DiffmiaError(f"{self.name} is a learned attack: call fit(...) on calibration features first")
        return next(iter(self.scores(self.features(target, images, cond, seeds)).values()))


def check_images(images, name: str) -> torch.Tensor:
    """Images as a float tensor N x C x H x W with finite values."""
    if not torch.is_tensor(images):
        images = torch.as_tensor(np.asarray(images))
    if images.ndim != 4:
        raise DiffmiaError(f"{name}: images must be N x C x H x W, got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise DiffmiaError(f"{name}: no images to score")
    images = images.float()
    if not torch.isfinite(images).all():
        raise DiffmiaError(f"{name}: images contain NaN or infinite values")
    return images


def default_seeds(seeds, n: int) -> np.ndarray:
    """Per-sample noise seeds; default 0..N-1 (the runner passes the samples' ids)."""
    if seeds is None:
        return np.arange(n)
    seeds = np.asarray(seeds)
    if len(seeds) != n:
        raise DiffmiaError(f"got {len(seeds)} seeds for {n} images")
    return seeds


def check_timesteps(ts, target, name: str) -> tuple[int, ...]:
    ts = tuple(int(t) for t in (ts if isinstance(ts, (list, tuple)) else [ts]))
    bad = [t for t in ts if not 0 <= t < target.num_train_timesteps]
    if bad or not ts:
        raise DiffmiaError(f"{name}: timesteps {bad or ts} outside 0..{target.num_train_timesteps - 1}")
    return ts
