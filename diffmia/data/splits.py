"""Membership splits: which samples of a pool a target trained on, with the SHA-256 of every image so a
split can be verified against the data later. Saved as JSON, or in the SecMI/PIA ``.npz`` format
(``mia_train_idxs`` = members, ``mia_eval_idxs`` = non-members)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SplitError
from .datasets import Dataset


def _ids(values, what: str) -> np.ndarray:
    """``values`` as int64 ids; anything but a flat list of non-negative whole numbers (1.5, "a", true, -1, a
    nested list) is refused, naming the first bad value."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu" and values.ndim == 1:
        if values.dtype == np.uint64 and (values >= 2 ** 63).any():
            raise SplitError(f"{what} id {values[values >= 2 ** 63][0]} is too large")
        ids = values.astype(np.int64)
    else:
        items = values.tolist() if isinstance(values, np.ndarray) else values
        if not isinstance(items, (list, tuple)):
            raise SplitError(f"the {what} ids must be a list of integers, got {type(items).__name__} {items!r:.40}")
        for x in items:
            whole = isinstance(x, (int, np.integer)) or (isinstance(x, float) and x.is_integer())   # 3 or 3.0
            if isinstance(x, bool) or not whole:
                raise SplitError(f"{what} id {json.dumps(x, default=str)[:40]} is not an integer")
            if x >= 2 ** 63:
                raise SplitError(f"{what} id {x} is too large")
        ids = np.asarray(items, dtype=np.int64).reshape(-1)
    if (ids < 0).any():
        raise SplitError(f"{what} id {ids[ids < 0][0]} is negative (ids are positions in the data set, 0 or more)")
    return ids


@dataclass
class MembershipSplit:
    """Which samples of a pool the target trained on (members) and which it did not.

    Saved as JSON with the SHA-256 of each image's bytes so it can be verified against data later.
    """

    members: np.ndarray
    nonmembers: np.ndarray
    dataset: str = ""
    seed: int | None = None
    member_sha256: list[str] | None = None
    nonmember_sha256: list[str] | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.members = _ids(self.members, "member")
        self.nonmembers = _ids(self.nonmembers, "non-member")
        if len(self.members) == 0 or len(self.nonmembers) == 0:
            raise SplitError("a split needs at least one member and one non-member")
        for label, ids in (("members", self.members), ("non-members", self.nonmembers)):
            if len(np.unique(ids)) != len(ids):
                raise SplitError(f"the split lists some {label} twice")
        both = np.intersect1d(self.members, self.nonmembers)
        if len(both):
            raise SplitError(f"{len(both)} samples are both members and non-members "
                             f"(ids {both[:5].tolist()})")
        for what, ids, hashes in (("member", self.members, self.member_sha256),
                                  ("non-member", self.nonmembers, self.nonmember_sha256)):
            if hashes is None:
                continue
            if not isinstance(hashes, (list, tuple)) or not all(isinstance(h, str) for h in hashes):
                raise SplitError(f"the {what} SHA-256 hashes must be a list of hex strings")
            if len(hashes) != len(ids):
                raise SplitError(f"the split lists {len(hashes)} {what} SHA-256 hashes for {len(ids)} {what} ids; "
                                 "one hash per id is needed (remake the split with 'diffmia split')")
        if self.member_sha256 and self.nonmember_sha256:
            dup = set(self.member_sha256) & set(self.nonmember_sha256)
            if dup:
                raise SplitError(f"{len(dup)} member images are byte-identical to non-member images "
                                 "(same SHA-256); remove the duplicates from the pool")

    @classmethod
    def random(cls, data: Dataset, n_members: int, n_nonmembers: int | None = None,
               seed: int = 0) -> "MembershipSplit":
        """A seeded random split of ``data`` (default: the rest of a 50/50 split)."""
        n = len(data)
        n_nonmembers = n_members if n_nonmembers is None else n_nonmembers
        if n_members < 1 or n_nonmembers < 1 or n_members + n_nonmembers > n:
            raise SplitError(f"cannot draw {n_members} members and {n_nonmembers} non-members "
                             f"from {n} images of {data.name}")
        perm = np.random.default_rng(seed).permutation(n)
        mem, non = data.ids[perm[:n_members]], data.ids[perm[n_members:n_members + n_nonmembers]]
        return cls.for_data(data, mem, non, seed=seed)

    @classmethod
    def for_data(cls, data: Dataset, members, nonmembers, seed=None, **meta) -> "MembershipSplit":
        m, nm = data.subset(members), data.subset(nonmembers)
        return cls(members=m.ids, nonmembers=nm.ids, dataset=data.name, seed=seed,
                   member_sha256=m.sha256(), nonmember_sha256=nm.sha256(), meta=meta)

    # -- views
    @property
    def ids(self) -> np.ndarray:
        return np.concatenate([self.members, self.nonmembers])

    @property
    def is_member(self) -> np.ndarray:
        return np.concatenate([np.ones(len(self.members), bool), np.zeros(len(self.nonmembers), bool)])

    def select(self, data: Dataset, verify: bool = True) -> tuple[Dataset, np.ndarray]:
        """(members then non-members as one Dataset, is_member), checking the hashes."""
        sub = data.subset(self.ids)
        if verify and self.member_sha256 and self.nonmember_sha256:
            want = list(self.member_sha256) + list(self.nonmember_sha256)
            bad = [int(i) for i, a, b in zip(sub.ids, sub.sha256(), want) if a != b]
            if bad:
                raise SplitError(f"{len(bad)} images differ from the split's SHA-256 (ids {bad[:5]}); "
                                 f"the split was made for other data than {data.name}")
        return sub, self.is_member

    def limit(self, n_members: int | None, n_nonmembers: int | None) -> "MembershipSplit":
        """The first ``n`` members / non-members (for quick runs); None keeps them all. Asking for fewer than 1
        or for more than the split has is refused."""
        for what, n, have in (("members", n_members, len(self.members)),
                              ("non-members", n_nonmembers, len(self.nonmembers))):
            if n is not None and not 1 <= n <= have:
                raise SplitError(f"cannot use {n} {what}: the split has {have} {what} (and "
                                 f"{len(self.nonmembers) if what == 'members' else len(self.members)} "
                                 f"{'non-members' if what == 'members' else 'members'}); ask for 1 to {have}")
        km = slice(None if n_members is None else n_members)
        kn = slice(None if n_nonmembers is None else n_nonmembers)
        return MembershipSplit(
            self.members[km], self.nonmembers[kn], self.dataset, self.seed,
            None if self.member_sha256 is None else self.member_sha256[km],
            None if self.nonmember_sha256 is None else self.nonmember_sha256[kn], dict(self.meta))

    # -- files
    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "seed": self.seed,
                "members": self.members.tolist(), "nonmembers": self.nonmembers.tolist(),
                "member_sha256": self.member_sha256, "nonmember_sha256": self.nonmember_sha256,
                "meta": self.meta}

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        if path.suffix == ".npz":  # SecMI / PIA format
            np.savez(path, mia_train_idxs=self.members, mia_eval_idxs=self.nonmembers)
        else:
            path.write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MembershipSplit":
        path = Path(path)
        if not path.exists():
            raise SplitError(f"{path}: split file not found")
        try:
            if path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as z:
                    if "mia_train_idxs" not in z or "mia_eval_idxs" not in z:
                        raise SplitError(f"a SecMI/PIA split needs arrays 'mia_train_idxs' "
                                         f"and 'mia_eval_idxs' (has {sorted(z.files)})")
                    return cls(z["mia_train_idxs"], z["mia_eval_idxs"], dataset="", meta={"source": str(path)})
            d = json.loads(path.read_text())
            return cls(d["members"], d["nonmembers"], d.get("dataset", ""), d.get("seed"),
                       d.get("member_sha256"), d.get("nonmember_sha256"), d.get("meta") or {})
        except SplitError as e:
            raise SplitError(f"{path}: {e}") from None
        except (ValueError, OSError, KeyError, TypeError, AttributeError) as e:   # bad JSON, a broken .npz
            kind = "SecMI/PIA .npz" if path.suffix == ".npz" else "diffmia"
            raise SplitError(f"{path}: not a {kind} split file ({e!r})") from None
