"""The interface every attack shares.

An attack turns (target, images) into per-sample membership scores, **higher = member**, in two steps:

1. ``features(target, images, cond=None, seeds=None, cache=None) -> dict[str, ndarray]``: everything that
   needs the target (all the queries). Arrays have N rows. The runner caches them on disk per chunk, so
   runs resume and all later steps rerun without the model. ``cache`` is a plain dict owned by the
   caller (the runner keeps one per process) where an attack may keep what it can reuse between calls
   (a generated image set, a feature network); ``features`` never changes the attack object itself.
2. ``scores(features) -> dict[str, ndarray]``: one or more score *variants* (N floats each) computed from
   the features without new queries; the first key is the attack's primary score as its paper defines
   it. Variants (a timestep sweep, a truncation/statistic grid) let the evaluation choose on the
   calibration half. Learned attacks (``learned = True``) first ``fit(features, is_member)`` on
   calibration rows only, and return ``self``.

``score(target, images)`` chains both for the primary score (the usual call for users). Constructors only
store hyperparameters (paper defaults); ``get_params()`` returns them. Each attack declares the
constraints of its parameters once (``_parameter_constraints``); the public methods here check them and,
for learned attacks, that ``fit`` ran (:func:`check_is_fitted`), then call the attack's own
``_features``/``_fit``/``_scores``/``_queries``. ``queries_per_sample()`` says how many noise predictions
(or API calls) one sample costs; tests measure it by counting.

Timestep parameters (declared with :func:`step`/``TIMESTEP``) take a step index or a float fraction f in (0, 1] of
the target's T (the step round(f*T) - 1); the public methods resolve fractions on a clone (``_timesteps.py``).
"""

from __future__ import annotations

import inspect
from typing import Callable, ClassVar

import numpy as np
import torch

from ..errors import DiffmiaError
from ._timesteps import T_KEY, features_T, has_fractions, resolved


# ----------------------------------------------------------------------------- parameter constraints
class Param:
    """A declared parameter constraint: ``ok(value) -> bool`` and what it asks for, in words. ``timestep``: the
    parameter names diffusion steps (an index or a fraction of T, resolved by ``_timesteps.resolved``)."""

    def __init__(self, text: str, ok: Callable[[object], bool], timestep: bool = False):
        self.text, self.ok, self.timestep = text, ok, timestep

    def __str__(self) -> str:
        return self.text


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def integer(lo: int | None = None) -> Param:
    text = {None: "an integer", 0: "a non-negative integer", 1: "a positive integer"}.get(lo, f"an integer >= {lo}")
    return Param(text, lambda v: _is_int(v) and (lo is None or v >= lo))


def number(lo: float | None = None, hi: float | None = None, strict: bool = False, hi_open: bool = False) -> Param:
    """A real number in [lo, hi] (``strict``: lo excluded; ``hi_open``: hi excluded)."""
    if lo == 0 and strict and hi is None:
        text = "a positive number"
    else:
        left = "any" if lo is None else f"{'(' if strict else '['}{lo:g}"
        right = "" if hi is None else f", {hi:g}{')' if hi_open else ']'}"
        text = "a number" + ("" if lo is None else f" in {left}{right or ', inf)'}")

    def ok(v):
        if not _is_number(v) or not np.isfinite(v):
            return False
        if lo is not None and (v <= lo if strict else v < lo):
            return False
        return hi is None or (v < hi if hi_open else v <= hi)
    return Param(text, ok)


def boolean() -> Param:
    return Param("True or False", lambda v: isinstance(v, (bool, np.bool_)))


def one_of(*values) -> Param:
    return Param(f"one of {values}", lambda v: v in values)


def text() -> Param:
    return Param("a string", lambda v: isinstance(v, str))


def subset_of(values) -> Param:
    """A non-empty sequence of distinct items of ``values``."""
    values = tuple(values)

    def ok(v):
        return _is_seq(v) and len(v) > 0 and len(set(v)) == len(v) and all(x in values for x in v)
    return Param(f"distinct values from {values}", ok)


def _is_seq(v) -> bool:
    return isinstance(v, (list, tuple))


def sequence(item: Param, nonempty: bool = True, distinct: bool = False, increasing: bool = False) -> Param:
    words = ("non-empty " if nonempty else "") + ("increasing " if increasing else "distinct " if distinct else "")
    text = f"a {words}sequence of ({item})"

    def ok(v):
        if not _is_seq(v) or (nonempty and not v) or not all(item.ok(x) for x in v):
            return False
        if distinct and len(set(v)) != len(v):
            return False
        return not increasing or all(a < b for a, b in zip(v, v[1:]))
    return Param(text, ok, item.timestep)


def optional(p: Param) -> Param:
    return Param(f"{p} (or None)", lambda v: v is None or p.ok(v), p.timestep)


def either(*ps: Param) -> Param:
    return Param(" or ".join(str(p) for p in ps), lambda v: any(p.ok(v) for p in ps), any(p.timestep for p in ps))


def anything() -> Param:
    return Param("anything", lambda v: True)


def step(lo: int = 0) -> Param:
    """A diffusion step: an integer index >= lo, or a float fraction f in (0, 1] of the target's T (the step
    round(f*T) - 1; see ``_timesteps.py``)."""
    index = integer(lo)
    return Param(f"{index} (a step index) or a fraction in (0, 1] of the target's T",
                 lambda v: index.ok(v) or (_is_number(v) and not _is_int(v) and 0 < v <= 1), timestep=True)


TIMESTEP = step(0)
SEED = integer()


# ----------------------------------------------------------------------------- the interface
class Attack:
    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    threat_model: ClassVar[str] = ""   # "white-box" | "gray-box" | "black-box" | "no access"
    access: ClassVar[str] = "model"    # "model": NoisePredictor; "api": GenerationAPI; "none"
    api_calls: ClassVar[tuple[str, ...]] = ()   # API attacks: the GenerationAPI methods they call
    learned: ClassVar[bool] = False
    needs_text: ClassVar[bool] = False  # needs one caption per sample (text-conditioned targets only)
    _parameter_constraints: ClassVar[dict[str, Param]] = {}

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

    def check_params(self) -> None:
        """Check every declared parameter constraint; a violation is a one-line :class:`DiffmiaError`."""
        for k, p in self._parameter_constraints.items():
            v = getattr(self, k)
            if not p.ok(v):
                raise DiffmiaError(f"{self.name}: {k} must be {p}, got {v!r}")

    # -- the interface (public methods check, then call the attack's own method)
    def queries_per_sample(self, num_train_timesteps: int | None = None) -> int:
        """Noise predictions (model access) or API calls (API access) that one sample costs. Attacks whose
        cost depends on the target's T use ``num_train_timesteps`` (1000 when not given)."""
        self.check_params()
        return resolved(self, int(num_train_timesteps or 1000))._queries(num_train_timesteps)

    def features(self, target, images, cond=None, seeds=None, cache: dict | None = None) -> dict[str, np.ndarray]:
        """Query results for ``images`` (N x C x H x W in [-1, 1]); ``seeds`` keys each sample's noise
        (default 0..N-1; the runner passes the sample ids); ``cache``: see the module docstring."""
        self.check_params()
        images = check_images(images, self.name)
        seeds, cache = default_seeds(seeds, len(images)), {} if cache is None else cache
        if not has_fractions(self):
            return self._features(target, images, cond, seeds, cache)
        T = int(getattr(target, "num_train_timesteps", None) or 1000)
        out = resolved(self, T)._features(target, images, cond, seeds, cache)   # fractions -> steps (a clone)
        out[T_KEY] = np.full(len(images), T, np.int64)      # so that scores() resolves them the same way
        return out

    def fit(self, features: dict[str, np.ndarray], is_member) -> "Attack":
        """Learned attacks: fit on the rows given (the runner passes calibration rows only)."""
        self.check_params()
        self._fit(features, is_member)
        self.fitted_ = True
        return self

    def scores(self, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check_params()
        if self.learned:
            check_is_fitted(self)
        att = resolved(self, features_T(features, self.name)) if has_fractions(self) else self
        return att._scores(features)

    def score(self, target, images, cond=None, seeds=None) -> np.ndarray:
        """The primary score, one float per image (higher = member)."""
        if self.learned:
            check_is_fitted(self)
        return next(iter(self.scores(self.features(target, images, cond, seeds)).values()))

    # -- what each attack implements
    def _queries(self, num_train_timesteps: int | None) -> int:
        raise NotImplementedError

    def _features(self, target, images: torch.Tensor, cond, seeds: np.ndarray, cache: dict) -> dict:
        raise NotImplementedError

    def _fit(self, features: dict[str, np.ndarray], is_member) -> None:
        pass

    def _scores(self, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError


def check_is_fitted(attack: Attack) -> None:
    if not getattr(attack, "fitted_", False):
        raise DiffmiaError(f"{attack.name} is a learned attack: call fit(features, is_member) on calibration "
                           "rows first")


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


def as_timesteps(t) -> tuple[int, ...]:
    """A timestep parameter (an int or a sequence, a sweep) as a tuple of ints."""
    return tuple(int(x) for x in t) if isinstance(t, (list, tuple)) else (int(t),)


def sweep_scores(name: str, features: dict, key: str, ts) -> dict[str, np.ndarray]:
    """Scores of an attack whose statistic ``features[f"{key}_{t}"]`` is an error (lower = member) at each t
    of a sweep: the primary score -error at the first t, and with several t's one variant ``name[t=...]`` each."""
    missing = [t for t in ts if f"{key}_{t}" not in features]
    if missing:
        raise DiffmiaError(f"{name}: features lack t={missing}; score with the t's they were computed with")
    out = {name: -np.asarray(features[f"{key}_{ts[0]}"])}
    if len(ts) > 1:
        out.update({f"{name}[t={t}]": -np.asarray(features[f"{key}_{t}"]) for t in ts})
    return out


def check_timesteps(ts, target, name: str) -> tuple[int, ...]:
    """Timesteps (an int or a sequence) inside the target's 0..T-1."""
    ts = tuple(int(t) for t in (ts if isinstance(ts, (list, tuple)) else [ts]))
    bad = [t for t in ts if not 0 <= t < target.num_train_timesteps]
    if bad or not ts:
        raise DiffmiaError(f"{name}: timesteps {bad or ts} outside 0..{target.num_train_timesteps - 1}")
    return ts
