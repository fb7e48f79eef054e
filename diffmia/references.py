"""Reference models for calibrated attacks (``diffmia train-references``) and larger evaluation splits.

Reference-model calibration (the ``refcal`` attack, offline LiRA) compares the target's score for a
sample with the scores that models trained *without* that sample give it. The auditor trains K such
models with the target's own recipe (its ``training.json``: architecture, steps, batch size, learning
rate, augmentation) on members drawn from data that holds none of the target's candidates, so every
candidate is a non-member ("out") of every reference model.

``extend_split`` adds non-members to a split from the unused part of the pool: the target's members are
fixed, but any image it never saw is a valid non-member, and low false-positive rates need many of them
(TPR at 0.1% FPR rests on 0.1% of the test non-members).

Output of ``train_references(target, k, out)``::

    out/references.json     the target, its recipe, the excluded candidates and each reference's seed
    out/ref-0/ ... ref-K-1/ one target folder each (resumable; a finished one is never retrained)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .data import MembershipSplit, load_dataset
from .errors import DiffmiaError
from .targets.folder import TargetFolder
from .trainer import checkpoint_step

REFERENCE_SEED_OFFSET = 1000   # reference i: split seed and training seed = target seed + 1000 + i


def extend_split(split: MembershipSplit, data, n_nonmembers: int, seed: int = 0) -> MembershipSplit:
    """The same members; the split's non-members followed by new ones drawn (seeded) from the images of
    ``data`` that the split does not list, up to ``n_nonmembers`` in all."""
    have = len(split.nonmembers)
    if n_nonmembers < have:
        raise DiffmiaError(f"the split already has {have} non-members; asked for {n_nonmembers}")
    unused = np.setdiff1d(data.ids, split.ids)
    if n_nonmembers - have > len(unused):
        raise DiffmiaError(f"{data.name} has only {len(unused)} images outside the split; cannot add "
                           f"{n_nonmembers - have} non-members (at most {have + len(unused)} in all)")
    extra = np.random.default_rng([seed, 1]).permutation(unused)[:n_nonmembers - have]
    out = MembershipSplit.for_data(data, split.members, np.concatenate([split.nonmembers, extra]),
                                   seed=split.seed, **split.meta)
    out.meta["extended_from"] = {"nonmembers": have, "seed": seed}
    return out


def _recipe(target: TargetFolder) -> dict:
    if not target.training_json.exists():
        raise DiffmiaError(f"{target.training_json}: missing; reference models copy the recipe a target was trained "
                           "with (diffmia train writes it)")
    config = json.loads(target.training_json.read_text()).get("config") or {}
    if target.is_latent or "vae_steps" in config:
        raise DiffmiaError(f"{target.path}: reference models are trained with diffmia train (pixel DDPMs); this target "
                           "is a latent text-to-image model")
    return config


def candidate_splits(target: TargetFolder) -> list[Path]:
    """Every split file in the target folder (split.json and extended ones, split*.json)."""
    return sorted(target.path.glob("split*.json"))


def reference_split(data, exclude: np.ndarray, n_members: int, n_nonmembers: int, seed: int) -> MembershipSplit:
    """Members (and a few non-members, which a split needs) drawn from ``data`` minus ``exclude``."""
    pool = np.setdiff1d(data.ids, exclude)
    if n_members + n_nonmembers > len(pool):
        raise DiffmiaError(f"{data.name} has {len(pool)} images outside the target's candidates; a reference model "
                           f"needs {n_members + n_nonmembers}")
    perm = np.random.default_rng(seed).permutation(pool)
    return MembershipSplit.for_data(data, perm[:n_members], perm[n_members:n_members + n_nonmembers], seed=seed,
                                    role="reference")


def train_references(target, k: int, out, device: str = "auto", threads: int | None = None,
                     progress: bool = True, max_steps_this_run: int | None = None) -> Path:
    """Train (or resume) K reference models for ``target`` into ``out`` (see the module docstring)."""
    from .train import TrainConfig, train

    if k < 1:
        raise DiffmiaError(f"--k must be a positive number of reference models, got {k}")
    target = TargetFolder.open(target)
    recipe = _recipe(target)
    cfg0 = TrainConfig.from_dict(recipe)
    splits = candidate_splits(target)
    if not splits:
        raise DiffmiaError(f"{target.path}: no split*.json; the candidates to keep out of the reference models "
                           "are unknown")
    exclude = np.unique(np.concatenate([MembershipSplit.load(s).ids for s in splits]))
    data = load_dataset(cfg0.data, cfg0.data_root)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"target": str(target.path), "recipe": recipe, "k": k,
              "excluded_candidates": {"files": [s.name for s in splits], "n": int(len(exclude)),
                                      "sha256_of_ids": hashlib.sha256(exclude.tobytes()).hexdigest()},
              "references": []}
    budget = max_steps_this_run
    for i in range(k):
        seed = cfg0.seed + REFERENCE_SEED_OFFSET + i
        ref = out / f"ref-{i}"
        ref.mkdir(exist_ok=True)
        split_file = ref / "reference_split.json"
        if not split_file.exists():
            reference_split(data, exclude, len(MembershipSplit.load(target.split_path).members),
                            16, seed).save(split_file)
        record["references"].append({"folder": ref.name, "seed": seed})
        if (ref / "training.json").exists():
            continue
        if budget is not None and budget <= 0:
            break
        cfg = TrainConfig.from_dict({**recipe, "split": str(split_file), "seed": seed, "split_seed": seed,
                                     "sample_grid": 0, "quality_samples": 0, "device": device,
                                     "threads": threads})
        before = _step_of(ref)
        train(cfg, ref, progress=progress, command=f"diffmia train-references --target {target.path} --k {k}",
              max_steps_this_run=budget)
        if budget is not None:
            budget -= _step_of(ref) - before
    (out / "references.json").write_text(json.dumps(record, indent=1))
    return out


def _step_of(folder: Path) -> int:
    if (folder / "training.json").exists():
        return int(json.loads((folder / "training.json").read_text())["steps"])
    return checkpoint_step(folder / "checkpoint")


def finished_references(path) -> list[Path]:
    """The finished reference target folders under ``path`` (a train-references output, or one target)."""
    path = Path(path)
    if not path.is_dir():
        raise DiffmiaError(f"{path}: reference folder not found (make it with diffmia train-references)")
    if (path / "training.json").exists():
        return [path]
    refs = sorted((p for p in path.glob("ref-*") if (p / "training.json").exists()),
                  key=lambda p: int(p.name.split("-")[1]))
    if not refs:
        raise DiffmiaError(f"{path}: no finished reference model (ref-*/training.json); run or resume "
                           "diffmia train-references")
    return refs
