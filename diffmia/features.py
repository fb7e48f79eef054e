"""Query results ("features") of an attack, computed chunk by chunk into a run folder and reused.

``features/<attack>-<key>/chunk_<start>.npz`` holds the features of one chunk of samples and what they
cost (seconds, queries, forward seconds). A rerun skips finished chunks (resume after an interruption);
``workers > 1`` computes chunks in that many processes, each loading its own copy of the target. The key
is a hash of the attack's parameters, the target folder and weights, the samples' ids and the data.
Each process keeps one ``cache`` dict that the attacks may reuse between chunks (see ``attacks/base.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .errors import TargetError
from .scores import load_npz, save_npz


def load_target(folder: str, access: str, weights: str = "ema", device: str = "auto", batch_size: int = 256,
                guidance_scale: float = 1.0):
    """The object an attack of this access kind may touch (never more)."""
    from .targets import TargetFolder

    if access == "none":
        return None
    latent = TargetFolder(folder).is_latent
    if access == "model" and latent:
        from .targets.stable_diffusion import LatentDiffusersTarget

        return LatentDiffusersTarget.from_pretrained(folder, weights=weights, device=device, batch_size=batch_size,
                                                     guidance_scale=guidance_scale)
    if access == "model":
        from .targets import DiffusersTarget

        return DiffusersTarget.from_pretrained(folder, weights=weights, device=device, batch_size=batch_size)
    if access == "api":
        from .targets import DiffusersAPI

        return DiffusersAPI.from_pretrained(folder, weights=weights, device=device, batch_size=batch_size)
    raise TargetError(f"unknown access kind {access!r}")


def cache_key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


_WORKER: dict = {}


def _worker_init(folder, access, weights, device, batch_size, guidance_scale, threads):
    torch.set_num_threads(threads)
    _WORKER["target"] = load_target(folder, access, weights, device, batch_size, guidance_scale)
    _WORKER["cache"] = {}


def _compute_chunk(attack, target, images: np.ndarray, cond, seeds: np.ndarray, path: Path, cache: dict) -> dict:
    q0 = getattr(target, "queries", 0)
    f0 = getattr(target, "forward_seconds", 0.0)
    t0 = time.perf_counter()
    feats = attack.features(target, torch.from_numpy(images), cond, seeds, cache=cache)
    meta = {"seconds": time.perf_counter() - t0, "n": len(images),
            "queries": getattr(target, "queries", 0) - q0,
            "forward_seconds": getattr(target, "forward_seconds", 0.0) - f0}
    for k, v in feats.items():
        if len(v) != len(images):
            raise RuntimeError(f"{attack.name}: feature {k!r} has {len(v)} rows for {len(images)} images")
    save_npz(path, feats, meta)
    return meta


def _worker_chunk(attack, images, cond, seeds, path):
    return _compute_chunk(attack, _WORKER["target"], images, cond, seeds, Path(path), _WORKER["cache"])


def compute_features(attack, images: np.ndarray, ids: np.ndarray, folder: Path, *, cond=None, target=None,
                     target_folder: str = "", weights: str = "ema", device: str = "auto", batch_size: int = 256,
                     guidance_scale: float = 1.0, chunk_size: int = 256, workers: int = 1, cache: dict | None = None,
                     progress: bool = True) -> tuple[dict[str, np.ndarray], dict]:
    """Features for all images, computed chunk by chunk into ``folder`` (finished chunks are reused).
    ``cond``: one condition per image (prompts of a text-conditioned target) or None. One process:
    ``target`` (loaded from ``target_folder`` when None) and ``cache``; ``workers`` > 1: each worker loads
    ``target_folder`` itself. Returns (features, cost summed over chunks)."""
    from tqdm.auto import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    starts = list(range(0, len(images), chunk_size))
    paths = [folder / f"chunk_{s:07d}.npz" for s in starts]
    todo = [i for i, p in enumerate(paths) if not p.exists()]
    bar = tqdm(total=len(images), initial=len(images) - sum(min(chunk_size, len(images) - starts[i]) for i in todo),
               desc=attack.name, unit="img", disable=not progress, dynamic_ncols=True, leave=True)
    sl = [slice(s, s + chunk_size) for s in starts]
    part = (lambda i: None) if cond is None else (lambda i: list(cond[sl[i]]))  # noqa: E731
    if todo and workers > 1 and attack.access != "none":
        import multiprocessing as mp

        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                 initargs=(target_folder, attack.access, weights, device, batch_size, guidance_scale,
                                           threads)) as ex:
            futs = {ex.submit(_worker_chunk, attack, images[sl[i]], part(i), ids[sl[i]], str(paths[i])): i
                    for i in todo}
            for fut in futs:
                fut.result()
                bar.update(len(images[sl[futs[fut]]]))
    elif todo:
        if target is None and attack.access != "none":
            target = load_target(target_folder, attack.access, weights, device, batch_size, guidance_scale)
        cache = {} if cache is None else cache
        for i in todo:
            _compute_chunk(attack, target, images[sl[i]], part(i), ids[sl[i]], paths[i], cache)
            bar.update(len(images[sl[i]]))
    bar.close()
    parts, metas = zip(*(load_npz(p) for p in paths))
    feats = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    cost = {k: float(sum(m[k] for m in metas)) for k in ("seconds", "queries", "forward_seconds")}
    return feats, cost
