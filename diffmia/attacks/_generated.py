"""What the black-box attacks on generated samples share: GAN-Leaks (``ganleaks.py``) and the Monte-Carlo
set (``monte_carlo_set.py``).

Both draw ``n_generated`` images from the target's ``generate`` call once, then compare every query with
that set. Sets are shared at two levels: in memory through the caller's ``cache`` dict (the runner keeps
one per process, so chunk after chunk reuses the set) and on disk (:func:`generated_set`), keyed by the
API's fingerprint (``identity()``: a hash of its weights and sampling settings), ``n`` and ``seed``, so
several attacks and reruns generate once. Cached sets are ``.npz`` files read with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import DiffmiaError
from .base import SEED, Attack, anything, integer

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """``$DIFFMIA_CACHE`` or ``$XDG_CACHE_HOME/diffmia`` or ``~/.cache/diffmia``, plus ``generated/``."""
    root = os.environ.get("DIFFMIA_CACHE")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "diffmia"
    return Path(root) / "generated"


def generated_set(api, n: int, seed: int = 0, cache_dir=None, prompt: str | None = None) -> torch.Tensor:
    """``n`` images from ``api.generate(n, seed)`` (with ``prompt`` for a text-to-image service), reused from
    ``cache_dir`` when already generated.

    ``api``: a generation API or the view ``api_view`` returns. ``cache_dir``: None = the user cache
    (:func:`default_cache_dir`), False = no disk cache. Without a fingerprint (``identity()`` None) the
    set is never cached, since nothing would tell two models apart. Files are written atomically.
    """
    ident = api.identity() if callable(getattr(api, "identity", None)) else None
    path = None
    if ident is not None and cache_dir is not False:
        folder = default_cache_dir() if cache_dir is None else Path(cache_dir)
        what = [CACHE_FORMAT, ident, int(n), int(seed)] + ([] if prompt is None else [prompt])
        key = hashlib.sha256(json.dumps(what).encode()).hexdigest()[:24]
        path = folder / f"gen-{key}.npz"
        if path.exists():
            try:
                with np.load(path, allow_pickle=False) as z:
                    stored = str(z["prompt"]) if "prompt" in z.files else None
                    if str(z["identity"]) == ident and int(z["n"]) == n and int(z["seed"]) == seed \
                            and stored == prompt:
                        return torch.from_numpy(z["images"].astype(np.float32))
            except (OSError, ValueError, KeyError):
                pass                                   # unreadable or foreign: regenerate and overwrite
    images = api.generate(int(n), int(seed)) if prompt is None else api.generate(int(n), int(seed), prompt=prompt)
    images = torch.as_tensor(images).float().cpu()
    if images.ndim != 4 or images.shape[0] != n:
        raise DiffmiaError(f"generate({n}, {seed}) returned shape {tuple(images.shape)}, expected {n} x C x H x W")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, images=images.numpy(), identity=np.asarray(ident), n=np.asarray(n), seed=np.asarray(seed),
                 **({} if prompt is None else {"prompt": np.asarray(prompt)}))
        os.replace(tmp, path)
    return images


def nearest_distances(queries: torch.Tensor, pool: torch.Tensor, k: int = 1, exclude_self: bool = False,
                      chunk: int = 512) -> np.ndarray:
    """Euclidean (L2 over all pixels) distances from each query to its k nearest images in ``pool``
    (N x k, ascending). ``exclude_self``: queries are the pool itself; skip the zero self-distance."""
    q = queries.flatten(1).double()
    p = pool.flatten(1).double()
    k = min(k, len(p) - int(exclude_self))
    out = []
    for i in range(0, len(q), chunk):
        d = torch.cdist(q[i:i + chunk], p)
        if exclude_self:
            idx = torch.arange(i, min(i + chunk, len(q)))
            d[torch.arange(len(idx)), idx] = float("inf")
        out.append(d.topk(k, dim=1, largest=False).values)
    return torch.cat(out).numpy()


class GeneratedSetAttack(Attack):
    """Base of the attacks that compare queries with a generated set (``n_generated`` images, ``seed``)."""

    threat_model = "black-box"
    access = "api"
    api_calls = ("generate",)
    _parameter_constraints = {"n_generated": integer(2), "seed": SEED, "cache_dir": anything()}

    def _generated(self, api, cache: dict, prompt: str | None = None) -> torch.Tensor:
        """The generated set of ``api`` (for ``prompt``), from the caller's ``cache`` when it holds it (keyed
        by the API's fingerprint; an API without one is asked again on every call)."""
        ident = api.identity()
        key = ("generated_set", ident, int(self.n_generated), int(self.seed), prompt)
        if ident is not None and key in cache:
            return cache[key]
        gen = generated_set(api, int(self.n_generated), int(self.seed), self.cache_dir, prompt)
        if ident is not None:
            cache[key] = gen
        return gen

    def _sets(self, api, images, cond, cache):
        """(rows, generated set) pairs: one set for all queries, or, with captions (``cond``), one set per
        distinct caption generated from it, for the queries with that caption."""
        groups = {None: np.arange(len(images))} if cond is None else {}
        if cond is not None:
            for i, c in enumerate(cond):
                groups.setdefault(str(c), []).append(i)
        for prompt, rows in groups.items():
            gen = self._generated(api, cache, prompt)
            if gen.shape[1:] != images.shape[1:]:
                raise DiffmiaError(f"{self.name}: generated images are {tuple(gen.shape[1:])} but queries are "
                                   f"{tuple(images.shape[1:])}")
            yield prompt, np.asarray(rows), gen

    def _queries(self, num_train_timesteps):
        """0: no call per sample. The attack calls ``generate`` once for ``n_generated`` images shared by
        all samples (and by other attacks through the cache), once per distinct caption for a text-to-image
        target: see ``fixed_generations()``."""
        return 0
