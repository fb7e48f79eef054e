"""Per-sample scores and cached features on disk (no pickles: ``.npz`` with ``allow_pickle=False`` + JSON).

A run folder holds ``features/<attack>/chunk_<start>.npz`` (the query results, one file per chunk, so an
interrupted run resumes where it stopped) and ``scores/<attack>.npz`` + ``scores/<attack>.csv`` (every
score variant per sample, keyed by sample id).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def save_npz(path: Path, arrays: dict[str, np.ndarray], meta: dict | None = None) -> None:
    """Atomic write of named arrays (+ a JSON meta string)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(arrays)
    payload = {f"a{i}": np.asarray(arrays[k]) for i, k in enumerate(names)}
    payload["__names__"] = np.array(json.dumps(names))
    payload["__meta__"] = np.array(json.dumps(meta or {}))
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **payload)
    os.replace(tmp, path)


def load_npz(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    with np.load(path, allow_pickle=False) as z:
        names = json.loads(str(z["__names__"]))
        return {k: z[f"a{i}"] for i, k in enumerate(names)}, json.loads(str(z["__meta__"]))


@dataclass
class Scores:
    """All score variants of one attack on one evaluation set (higher = member)."""

    attack: str
    ids: np.ndarray
    is_member: np.ndarray
    calibration: np.ndarray
    variants: dict[str, np.ndarray]
    params: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @property
    def primary(self) -> np.ndarray:
        return next(iter(self.variants.values()))

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        arrays = {"ids": self.ids, "is_member": self.is_member, "calibration": self.calibration}
        arrays.update({f"variant:{k}": v for k, v in self.variants.items()})
        save_npz(folder / f"{self.attack}.npz", arrays, {"attack": self.attack, "params": self.params, **self.meta})
        with open(folder / f"{self.attack}.csv", "w", newline="") as f:
            w = csv.writer(f)
            names = list(self.variants)
            w.writerow(["id", "is_member", "calibration", *names])
            for i in range(len(self.ids)):
                w.writerow([int(self.ids[i]), int(self.is_member[i]), int(self.calibration[i]),
                            *(f"{self.variants[k][i]:.8g}" for k in names)])

    @classmethod
    def load(cls, path: Path) -> "Scores":
        arrays, meta = load_npz(Path(path))
        variants = {k[len("variant:"):]: v for k, v in arrays.items() if k.startswith("variant:")}
        params = meta.pop("params", {})
        return cls(meta.pop("attack"), arrays["ids"], arrays["is_member"].astype(bool),
                   arrays["calibration"].astype(bool), variants, params, meta)
