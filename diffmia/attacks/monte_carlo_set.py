"""Monte-Carlo set attack (Hilprecht, Härterich & Bernau, "Monte Carlo and Reconstruction Membership
Inference Attacks against Generative Models", PoPETs 2019): how many generated samples fall near the query.
A baseline in SecMI's comparison table.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import DiffmiaError
from ..targets.api import api_view
from ._generated import GeneratedSetAttack, nearest_distances
from .base import number, optional, sequence


class MonteCarloSet(GeneratedSetAttack):
    """Monte-Carlo set attack (Hilprecht, Härterich & Bernau, "Monte Carlo and Reconstruction Membership
    Inference Attacks against Generative Models", PoPETs 2019; a baseline in SecMI).

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
    _parameter_constraints = {**GeneratedSetAttack._parameter_constraints, "eps": optional(number(0, strict=True)),
                              "eps_quantiles": sequence(number(0, 1, strict=True))}

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
            return {f"mc[eps={float(self.eps):g}]": float(self.eps)}
        qs = tuple(self.eps_quantiles)
        nn = nearest_distances(gen, gen, exclude_self=True)[:, 0]
        return {f"mc[q={q:g}]": float(np.quantile(nn, q)) for q in qs}

    def _features(self, target, images, cond, seeds, cache):
        api = api_view(target, self.name, needs=self.api_calls)
        n_radii = 1 if self.eps is not None else len(self.eps_quantiles)
        frac, eps = np.zeros((len(images), n_radii)), np.zeros((len(images), n_radii))
        for _, rows, gen in self._sets(api, images, cond, cache):
            r = torch.tensor(list(self._radii(gen).values()), dtype=torch.float64)
            q, p = images[rows].flatten(1).double(), gen.flatten(1).double()
            for i in range(0, len(q), 512):
                d = torch.cdist(q[i:i + 512], p)                              # chunk x n_generated
                frac[rows[i:i + 512]] = (d.unsqueeze(-1) <= r).sum(1).numpy() / len(gen)
            eps[rows] = r.numpy()
        return {"mc_fraction": frac, "mc_eps": eps}

    def _scores(self, features):
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
