"""GAN-Leaks, black-box (Chen et al., CCS 2020): the nearest generated sample. On diffusion models this is
the black-box attack of Zhu et al., "Data Forensics in Diffusion Models" (arXiv 2302.07801), and a
baseline in SecMI.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import DiffmiaError
from ..targets.api import api_view
from ._generated import GeneratedSetAttack, nearest_distances
from .base import anything, one_of


class GANLeaks(GeneratedSetAttack):
    """GAN-Leaks black-box attack = the Data Forensics black-box attack.

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

    The set is kept in the caller's ``cache`` between ``features`` calls (the runner scores chunk by
    chunk) and on disk, both only for APIs with a fingerprint (``identity()``); an API without one is
    asked again for every call. A reference folder is loaded once per ``cache``.

    Scores: ``ganleaks`` (= -d_target), and with a reference ``ganleaks_calibrated`` first.
    Queries per sample: 0 (``n_generated`` generations in all, twice with a reference).
    """

    name = "ganleaks"
    paper = "Chen et al. 2020 (GAN-Leaks); Data Forensics in Diffusion Models, Zhu et al. 2023 (arXiv 2302.07801), black-box"
    _parameter_constraints = {**GeneratedSetAttack._parameter_constraints, "reference": anything(),
                              "reference_weights": one_of("ema", "raw"), "reference_device": anything()}

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

    def _reference_api(self, cache: dict):
        ref = self.reference
        if isinstance(ref, (str, os.PathLike)):
            key = ("reference_api", str(ref), self.reference_weights, self.reference_device)
            if key not in cache:
                from ..targets.diffusers_api import DiffusersAPI

                cache[key] = DiffusersAPI.from_pretrained(ref, weights=self.reference_weights,
                                                          device=self.reference_device)
            ref = cache[key]
        return api_view(ref, f"{self.name} (reference)", needs=self.api_calls)

    def _features(self, target, images, cond, seeds, cache):
        api = api_view(target, self.name, needs=self.api_calls)
        ref = self._reference_api(cache) if self.reference is not None else None
        out = {"nn_dist": np.empty(len(images))}
        if ref is not None:
            out["nn_dist_ref"] = np.empty(len(images))
        for prompt, rows, gen in self._sets(api, images, cond, cache):
            out["nn_dist"][rows] = nearest_distances(images[rows], gen)[:, 0]      # d_target: nearest generated
            if ref is not None:
                rgen = self._generated(ref, cache, prompt)
                if rgen.shape[1:] != images.shape[1:]:
                    raise DiffmiaError(f"{self.name}: the reference generates {tuple(rgen.shape[1:])} images, "
                                       f"the queries are {tuple(images.shape[1:])}")
                out["nn_dist_ref"][rows] = nearest_distances(images[rows], rgen)[:, 0]   # d_reference
        return out

    def _scores(self, features):
        if "nn_dist" not in features:
            raise DiffmiaError(f"{self.name}: features lack nn_dist; compute them with features()")
        out = {"ganleaks": -np.asarray(features["nn_dist"], np.float64)}           # score = -d_target
        if self.reference is not None:
            if "nn_dist_ref" not in features:
                raise DiffmiaError(f"{self.name}: a reference was given but the features have no nn_dist_ref; "
                                   "recompute the features with the reference")
            # calibrated: score = -(d_target - d_reference)
            out = {"ganleaks_calibrated": out["ganleaks"] + np.asarray(features["nn_dist_ref"], np.float64),
                   **out}
        return out
