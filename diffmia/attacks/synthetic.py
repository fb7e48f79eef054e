"""Black-box attacks from generated samples only: GAN-Leaks nearest neighbour (the Data Forensics
black-box attack) and the Monte-Carlo set. SPEC 3.4 and 3.8.

Both draw ``n_generated`` images from the target's ``generate`` call once, then compare every query with
that set; they share generated sets through an on-disk cache (:func:`generated_set`), keyed by the API's
fingerprint (``identity()``: a hash of its weights and sampling settings), ``n`` and ``seed``, so several
attacks and reruns generate once. Cached sets are ``.npz`` files read with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import DiffmiaError
from ..targets.api import api_view
from .base import Attack, check_images

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """``$DIFFMIA_CACHE`` or ``$XDG_CACHE_HOME/diffmia`` or ``~/.cache/diffmia``, plus ``generated/``."""
    root = os.environ.get("DIFFMIA_CACHE")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "diffmia"
    return Path(root) / "generated"


def generated_set(api, n: int, seed: int = 0, cache_dir=None) -> torch.Tensor:
    """``n`` images from ``api.generate(n, seed)``, reused from ``cache_dir`` when already generated.

    ``api``: a generation API or the view ``api_view`` returns. ``cache_dir``: None = the user cache
    (:func:`default_cache_dir`), False = no disk cache. Without a fingerprint (``identity()`` None) the
    set is never cached, since nothing would tell two models apart. Files are written atomically.
    """
    ident = api.identity() if callable(getattr(api, "identity", None)) else None
    path = None
    if ident is not None and cache_dir is not False:
        folder = default_cache_dir() if cache_dir is None else Path(cache_dir)
        key = hashlib.sha256(json.dumps([CACHE_FORMAT, ident, int(n), int(seed)]).encode()).hexdigest()[:24]
        path = folder / f"gen-{key}.npz"
        if path.exists():
            try:
                with np.load(path, allow_pickle=False) as z:
                    if str(z["identity"]) == ident and int(z["n"]) == n and int(z["seed"]) == seed:
                        return torch.from_numpy(z["images"].astype(np.float32))
            except (OSError, ValueError, KeyError):
                pass                                   # unreadable or foreign: regenerate and overwrite
    images = api.generate(int(n), int(seed))
    images = torch.as_tensor(images).float().cpu()
    if images.ndim != 4 or images.shape[0] != n:
        raise DiffmiaError(f"generate({n}, {seed}) returned shape {tuple(images.shape)}, expected {n} x C x H x W")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, images=images.numpy(), identity=np.asarray(ident), n=np.asarray(n), seed=np.asarray(seed))
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


class _GeneratedSetAttack(Attack):
    threat_model = "black-box"
    access = "api"

    def _check_common(self):
        if isinstance(self.n_generated, bool) or not isinstance(self.n_generated, (int, np.integer)) \
                or self.n_generated < 2:
            raise DiffmiaError(f"{self.name}: n_generated must be an integer >= 2, got {self.n_generated!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise DiffmiaError(f"{self.name}: seed must be an integer, got {self.seed!r}")

    def _generated(self, api, slot: str = "_memo") -> torch.Tensor:
        """The generated set, kept in memory (attribute ``slot``) per API fingerprint: the runner calls
        features per chunk."""
        ident = api.identity()
        memo = getattr(self, slot, None)
        if memo is not None and ident is not None and memo[0] == ident:
            return memo[1]
        gen = generated_set(api, int(self.n_generated), int(self.seed), self.cache_dir)
        if ident is not None:
            setattr(self, slot, (ident, gen))
        return gen

    def _queries_and_generated(self, target, images) -> tuple[torch.Tensor, torch.Tensor]:
        """The checked query images and the (cached) generated set, of the same shape."""
        self._check_common()
        api = api_view(target, self.name, needs=("generate",))
        x = check_images(images, self.name)
        gen = self._generated(api)
        if gen.shape[1:] != x.shape[1:]:
            raise DiffmiaError(f"{self.name}: generated images are {tuple(gen.shape[1:])} but queries are "
                               f"{tuple(x.shape[1:])}")
        return x, gen

    def queries_per_sample(self) -> int:
        """0: no call per sample. The attack calls ``generate`` once for ``n_generated`` images shared by
        all samples (and by other attacks through the cache): see ``fixed_generations()``."""
        return 0

    def __getstate__(self):                 # do not ship generated sets to worker processes
        d = dict(self.__dict__)
        d.pop("_memo", None)
        return d


class GANLeaks(_GeneratedSetAttack):
    """GAN-Leaks black-box attack = the Data Forensics black-box attack (SPEC 3.4, 3.8).

    Papers: Chen et al., "GAN-Leaks: A Taxonomy of Membership Inference Attacks against Generative
    Models" (CCS 2020), black-box, calibrated variant; used on diffusion models as the black-box attack
    of Data Forensics in Diffusion Models (arXiv 2302.07801) and as a baseline in SecMI.

    Threat model: black-box; only ``generate`` of a :class:`~diffmia.targets.api.GenerationAPI` is used.
    The attack draws ``n_generated`` images (seeded, cached on disk in ``cache_dir``; None = the user
    cache, False = none) and scores each query by **minus its L2 distance (over all pixels in [-1, 1])
    to the nearest generated image**: a model that memorised a member reproduces it, so members lie
    closer to the generated set. With ``reference`` (a target folder or a GenerationAPI of a model
    trained on other data of the same distribution) the same distance under the reference is
    subtracted: score = -(d_target - d_reference), which removes how typical the query is in general;
    that calibrated score is then the primary one. ``reference_weights``/``reference_device`` load a
    reference folder.

    The set is kept in memory between ``features`` calls (the runner scores chunk by chunk) and on disk
    only for APIs with a fingerprint (``identity()``); an API without one is asked again for every call.

    Scores: ``ganleaks`` (= -d_target), and with a reference ``ganleaks_calibrated`` first.
    Queries per sample: 0 (``n_generated`` generations in all, twice with a reference).
    """

    name = "ganleaks"
    paper = "Chen et al. 2020 (GAN-Leaks); Data Forensics in Diffusion Models, Zhu et al. 2023 (arXiv 2302.07801), black-box"

    def __init__(self, n_generated: int = 1000, seed: int = 0, reference=None, reference_weights: str = "ema",
                 reference_device: str = "auto", cache_dir=None):
        self.n_generated = n_generated
        self.seed = seed
        self.reference = reference
        self.reference_weights = reference_weights
        self.reference_device = reference_device
        self.cache_dir = cache_dir

    def fixed_generations(self) -> int:
        return int(self.n_generated) * (2 if self.reference is not None else 1)

    def _reference_api(self):
        ref = self.reference
        if isinstance(ref, (str, os.PathLike)):
            memo = getattr(self, "_ref_api", None)
            if memo is None or memo[0] != str(ref):
                from ..targets.api import DiffusersAPI

                self._ref_api = (str(ref), DiffusersAPI.from_pretrained(ref, weights=self.reference_weights,
                                                                         device=self.reference_device))
            ref = self._ref_api[1]
        return api_view(ref, f"{self.name} (reference)", needs=("generate",))

    def __getstate__(self):
        d = super().__getstate__()
        d.pop("_ref_memo", None)
        d.pop("_ref_api", None)
        return d

    def features(self, target, images, cond=None, seeds=None):
        x, gen = self._queries_and_generated(target, images)
        out = {"nn_dist": nearest_distances(x, gen)[:, 0]}
        if self.reference is not None:
            ref = self._reference_api()
            rgen = self._generated(ref, "_ref_memo")
            if rgen.shape[1:] != x.shape[1:]:
                raise DiffmiaError(f"{self.name}: the reference generates {tuple(rgen.shape[1:])} images, "
                                   f"the queries are {tuple(x.shape[1:])}")
            out["nn_dist_ref"] = nearest_distances(x, rgen)[:, 0]
        return out

    def scores(self, features):
        if "nn_dist" not in features:
            raise DiffmiaError(f"{self.name}: features lack nn_dist; compute them with features()")
        out = {"ganleaks": -np.asarray(features["nn_dist"], np.float64)}
        if self.reference is not None:
            if "nn_dist_ref" not in features:
                raise DiffmiaError(f"{self.name}: a reference was given but the features have no nn_dist_ref; "
                                   "recompute the features with the reference")
            out = {"ganleaks_calibrated": out["ganleaks"] + np.asarray(features["nn_dist_ref"], np.float64),
                   **out}
        return out


class MonteCarloSet(_GeneratedSetAttack):
    """Monte-Carlo set attack (Hilprecht, Härterich & Bernau, "Monte Carlo and Reconstruction Membership
    Inference Attacks against Generative Models", PoPETs 2019; a baseline in SecMI). SPEC 3.4, 3.8.

    Threat model: black-box; only ``generate`` is used (``n_generated`` images, shared with GAN-Leaks
    through the same cache when ``n_generated`` and ``seed`` agree).

    Score = the fraction of generated images within an eps-ball (L2 over all pixels in [-1, 1]) of the
    query: a model that memorised a member puts many samples near it. eps is chosen **without labels and
    without the queries**: the ``eps_quantiles`` of the generated set's own nearest-neighbour distances
    (each generated image to its nearest other generated image), so the score of a sample does not depend
    on which other samples are scored with it. The first quantile (default the median, Hilprecht et
    al.'s median heuristic) gives the primary score; ``eps`` (a float) fixes the radius instead.

    Scores: ``mc[q=...]`` per quantile (or ``mc[eps=...]``). Queries per sample: 0 (``n_generated``
    generations in all). Ties are common (many queries have no generated image in the ball): the
    score is then 0 for all of them.
    """

    name = "monte_carlo_set"
    paper = "Hilprecht et al. 2019 (Monte-Carlo set), as compared in Duan et al. 2023 (SecMI)"

    def __init__(self, n_generated: int = 1000, seed: int = 0, eps=None, eps_quantiles=(0.5, 0.1, 0.25, 0.75),
                 cache_dir=None):
        self.n_generated = n_generated
        self.seed = seed
        self.eps = eps
        self.eps_quantiles = eps_quantiles
        self.cache_dir = cache_dir

    def fixed_generations(self) -> int:
        return int(self.n_generated)

    def _radii(self, gen: torch.Tensor) -> dict[str, float]:
        if self.eps is not None:
            if not isinstance(self.eps, (int, float)) or not self.eps > 0:
                raise DiffmiaError(f"{self.name}: eps must be a positive number, got {self.eps!r}")
            return {f"mc[eps={float(self.eps):g}]": float(self.eps)}
        qs = tuple(self.eps_quantiles)
        if not qs or any(not isinstance(q, (int, float)) or not 0 < q <= 1 for q in qs):
            raise DiffmiaError(f"{self.name}: eps_quantiles must be numbers in (0, 1], got {list(qs)}")
        nn = nearest_distances(gen, gen, exclude_self=True)[:, 0]
        return {f"mc[q={q:g}]": float(np.quantile(nn, q)) for q in qs}

    def features(self, target, images, cond=None, seeds=None):
        x, gen = self._queries_and_generated(target, images)
        radii = self._radii(gen)
        q, p = x.flatten(1).double(), gen.flatten(1).double()
        counts = np.zeros((len(x), len(radii)))
        r = torch.tensor(list(radii.values()), dtype=torch.float64)
        for i in range(0, len(q), 512):
            d = torch.cdist(q[i:i + 512], p)                                  # chunk x n_generated
            counts[i:i + 512] = (d.unsqueeze(-1) <= r).sum(1).numpy()
        return {"mc_fraction": counts / len(gen),
                "mc_eps": np.tile(r.numpy(), (len(x), 1))}

    def scores(self, features):
        if "mc_fraction" not in features:
            raise DiffmiaError(f"{self.name}: features lack mc_fraction; compute them with features()")
        frac = np.asarray(features["mc_fraction"], np.float64)
        if self.eps is not None:
            names = [f"mc[eps={float(self.eps):g}]"]
        else:
            names = [f"mc[q={q:g}]" for q in self.eps_quantiles]
        if len(names) != frac.shape[1]:
            raise DiffmiaError(f"{self.name}: features hold {frac.shape[1]} radii, the parameters ask for "
                               f"{len(names)}; score with the parameters the features were computed with")
        return {n: frac[:, j] for j, n in enumerate(names)}
