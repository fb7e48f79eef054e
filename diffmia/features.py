"""Query results ("features") of the attacks, computed chunk by chunk into a run folder and reused.

``features/<attack>-<key>/chunk_<start>.npz`` holds one chunk's features and what they cost. The key is
a hash of what determines the result: the attack's parameters (noise seed included) and the content of
the target's weights and scheduler (:func:`fingerprint`, never the folder's path); each chunk also records
a hash of its own input bytes (images, ids, conditions) and of its features, so a chunk whose data
changed, or a corrupt or truncated file, is reported in one line and recomputed. A rerun skips finished
chunks, whatever the number of processes that computed them.

:class:`Engine` is one process's worker: it loads each target once, runs every attack of the run on one
chunk at a time through the query planner (``planner.py``), and writes each chunk atomically with the
rank that computed it. ``distributed.py`` says which process computes which chunk.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import DiffmiaError, TargetError
from .planner import NonFiniteAnswer, SharedQueries
from .scores import load_npz, save_npz


def load_target(folder: str, access: str, weights: str = "ema", device: str = "auto", batch_size: int = 256,
                guidance_scale: float = 1.0):
    """The object an attack of this access kind may touch (never more)."""
    from .targets import TargetFolder

    if access == "none":
        return None
    latent = TargetFolder(folder).is_latent
    if access == "model" and TargetFolder(folder).is_vpsde:
        from .targets import VPSDETarget

        return VPSDETarget.from_pretrained(folder, weights=weights, device=device, batch_size=batch_size)
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


# ----------------------------------------------------------------------------- what determines a result
def _file_sha(path: Path, store: dict) -> str:
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    if key not in store:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
        store[key] = h.hexdigest()
    return store[key]


def fingerprint(folder, weights: str = "ema", store_path: Path | None = None) -> str:
    """SHA-256 of a target's weights and configuration (UNet of ``weights``, scheduler or sde.json, and the VAE,
    text encoder and tokenizer of a latent target). File hashes are kept in ``store_path`` (a JSON file, keyed by
    path, size and modification time) so each file is read once; changing a file in place changes its key."""
    from .targets import TargetFolder

    tf = TargetFolder(folder)
    dirs = [tf.unet_dir(weights), tf.scheduler_dir] + [tf.path / c for c in ("vae", "text_encoder", "tokenizer")]
    store = {}
    if store_path is not None and Path(store_path).exists():
        try:
            store = json.loads(Path(store_path).read_text())
        except (OSError, json.JSONDecodeError):
            store = {}
    h = hashlib.sha256(weights.encode())
    for d in dirs:
        for p in sorted(d.rglob("*")) if d.is_dir() else []:
            if p.is_file():
                h.update(f"{p.relative_to(tf.path)}:{_file_sha(p, store)}\n".encode())
    if tf.sde_json.is_file():                   # a VP-SDE target's schedule and time scaling
        h.update(f"sde.json:{_file_sha(tf.sde_json, store)}\n".encode())
    if store_path is not None:
        tmp = Path(store_path).with_suffix(".tmp")
        tmp.write_text(json.dumps(store, indent=0))
        os.replace(tmp, store_path)
    return h.hexdigest()[:16]


def input_sha(images: np.ndarray, ids: np.ndarray, cond) -> str:
    h = hashlib.sha256(np.ascontiguousarray(images, np.float32).tobytes())
    h.update(np.asarray(ids, np.int64).tobytes())
    if cond is not None:
        h.update(json.dumps([str(c) for c in cond]).encode())
    return h.hexdigest()[:16]


def features_sha(feats: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(feats):
        h.update(k.encode() + np.ascontiguousarray(feats[k]).tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- stages and chunks
@dataclass
class Stage:
    """One attack's features in one cache folder."""
    name: str
    attack: object
    folder: Path


class Chunks:
    """The chunking of a run's samples: ``starts``, slices and the inputs of chunk i."""

    def __init__(self, images: np.ndarray, ids: np.ndarray, cond, chunk_size: int):
        self.images, self.ids, self.cond, self.size = images, ids, cond, chunk_size
        self.starts = list(range(0, len(images), chunk_size))
        self.offset = 0                   # a one-chunk view holds only its chunk's rows

    def __len__(self) -> int:
        return len(self.starts)

    def path(self, stage: Stage, i: int) -> Path:
        return stage.folder / f"chunk_{self.starts[i]:07d}.npz"

    def part(self, i: int):
        sl = slice(self.starts[i] - self.offset, self.starts[i] - self.offset + self.size)
        return self.images[sl], self.ids[sl], (None if self.cond is None else list(self.cond[sl]))

    def sha(self, i: int, stage: Stage) -> str:
        images, ids, cond = self.part(i)
        return input_sha(images, ids, cond if stage.attack.access != "none" else None)


def check_chunks(stages: list[Stage], chunks: Chunks) -> list[str]:
    """Remove every cached chunk that cannot be loaded, fails its checksum or was computed on other input
    bytes; returns one line per removed chunk (the caller prints them)."""
    lines = []
    for st in stages:
        for i in range(len(chunks)):
            p = chunks.path(st, i)
            if not p.exists():
                continue
            try:
                feats, meta = load_npz(p)
                why = None
                if meta.get("features_sha") not in (None, features_sha(feats)):
                    why = "checksum mismatch"
                elif meta.get("input_sha") not in (None, chunks.sha(i, st)):
                    why = "its input images, ids or prompts changed"
            except Exception as e:  # noqa: BLE001  -- any unreadable file is recomputed
                why = f"unreadable ({type(e).__name__})"
            if why:
                p.unlink()
                lines.append(f"{p}: {why}; recomputing it")
    return lines


def plan(stages: list[Stage], chunks: Chunks) -> list[tuple[int, list[str]]]:
    """The work left: (chunk index, names of the stages that miss it), in chunk order."""
    out = []
    for i in range(len(chunks)):
        missing = [st.name for st in stages if not chunks.path(st, i).exists()]
        if missing:
            out.append((i, missing))
    return out


def merge(stage: Stage, chunks: Chunks) -> tuple[dict[str, np.ndarray], dict, dict[int, object]]:
    """(features, cost summed over chunks, {chunk start: the rank that computed it})."""
    parts, metas = zip(*(load_npz(chunks.path(stage, i)) for i in range(len(chunks))))
    feats = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    cost = {k: float(sum(m.get(k, m.get("queries", 0) if k == "model_calls" else 0) for m in metas))
            for k in ("seconds", "queries", "forward_seconds", "model_calls")}
    return feats, cost, {s: m.get("rank") for s, m in zip(chunks.starts, metas)}


# ----------------------------------------------------------------------------- one process's worker
class Engine:
    """One process: each target loaded once (one copy of the model), the attacks' ``cache`` dict, and the
    planner that answers repeated queries of a chunk from memory."""

    def __init__(self, target_folder: str, weights: str = "ema", device: str = "auto", batch_size: int = 256,
                 guidance_scale: float = 1.0, rank: int = 0, world: int = 1, targets: dict | None = None):
        self.args = (target_folder, weights, device, batch_size, guidance_scale)
        self.rank, self.world = rank, world
        self.targets: dict = {} if targets is None else targets
        self.cache: dict = {}

    def target(self, access: str):
        if access == "none":
            return None
        if access not in self.targets:
            self.targets[access] = load_target(self.args[0], access, *self.args[1:])
        t = self.targets[access]
        if access == "model" and not isinstance(t, SharedQueries):
            t = self.targets[access] = SharedQueries(t)
        return t

    def compute(self, stages: list[Stage], chunks: Chunks, i: int, names: list[str]) -> int:
        """Every stage in ``names`` on chunk i (the planner shares their queries); returns the chunk's size."""
        images, ids, cond = chunks.part(i)
        try:
            for st in stages:
                if st.name in names:
                    self._one(st, chunks, i, images, ids, cond)
        finally:
            for t in self.targets.values():
                if isinstance(t, SharedQueries):
                    t.clear()
        return len(images)

    def _one(self, st: Stage, chunks: Chunks, i: int, images, ids, cond) -> None:
        target = self.target(st.attack.access)
        c = cond if st.attack.access != "none" else None
        q0, m0 = getattr(target, "queries", 0), getattr(target, "model_calls", getattr(target, "queries", 0))
        f0 = getattr(target, "forward_seconds", 0.0)
        t0 = time.perf_counter()
        try:
            feats = st.attack.features(target, torch.from_numpy(images), c, ids, cache=self.cache)
        except NonFiniteAnswer as e:
            who = f"sample id {int(ids[e.row])}" if e.n == len(ids) else f"row {e.row} of a query of {e.n}"
            raise DiffmiaError(f"{st.attack.name}: the model answered {e.value} at timestep {e.t} for {who} (the "
                               "first non-finite answer); finished chunks are kept") from None
        meta = {"seconds": time.perf_counter() - t0, "n": len(images),
                "queries": getattr(target, "queries", 0) - q0,
                "model_calls": getattr(target, "model_calls", getattr(target, "queries", 0)) - m0,
                "forward_seconds": getattr(target, "forward_seconds", 0.0) - f0,
                "rank": self.rank, "world_size": self.world, "input_sha": chunks.sha(i, st)}
        feats = {k: np.asarray(v) for k, v in feats.items()}
        for k, v in feats.items():
            if len(v) != len(images):
                raise RuntimeError(f"{st.attack.name}: feature {k!r} has {len(v)} rows for {len(images)} images")
            bad = ~np.isfinite(v.astype(np.float64)) if v.dtype.kind in "fc" else np.zeros(len(v), bool)
            if bad.any():
                j = int(np.flatnonzero(bad.reshape(len(v), -1).any(1))[0])
                row = v.reshape(len(v), -1)[j]
                raise DiffmiaError(f"{st.attack.name}: non-finite feature {k!r} ({row[~np.isfinite(row)][0]}) for "
                                   f"sample id {int(ids[j])} (the first one); finished chunks are kept")
        meta["features_sha"] = features_sha(feats)
        save_npz(chunks.path(st, i), feats, meta)


def warn(line: str) -> None:
    print(f"diffmia: warning: {line}", file=sys.stderr)
