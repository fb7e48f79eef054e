"""Reference-model calibration (``refcal``): offline LiRA for diffusion models (beyond the papers).

Paper: Carlini, Chien, Nasr, Song, Terzis & Tramer, "Membership Inference Attacks From First Principles"
(IEEE S&P 2022), offline variant, as Carlini et al. 2023 ("Extracting Training Data from Diffusion
Models") apply it to diffusion models. Threat model: white-box query access to the target, plus the
auditor's own reference models: K models trained with the target's recipe on data that holds none of the
candidates (``diffmia train-references``), so every candidate is "out" for all of them.

Why it helps: a per-sample statistic s(x) (a loss, PIA's or SimA's error) mixes membership with how hard x
is for *any* model of that kind (a plain image has a small error everywhere). The reference models measure
that difficulty per sample; the target's deviation from it is membership. For each score variant v of the
``base`` attack (higher = member):

* (L1) s_v(x) on the target and s_v^k(x) on reference k = 1..K (same noise: the base attack's noise is keyed
  by the sample id, so every model sees the same draw);
* (L2) phi = g(s): negated errors (all s <= 0) are compared on a log scale, g(s) = -log(-s), where their
  spread across models is close to Gaussian (LiRA compares logits for the same reason); other scores as is;
* (L3) offline LiRA with a fixed (global) variance: the one-sided likelihood ratio is monotone in
  phi_target - mean_k phi_k, which is the score ``refcal[v]``;
* (L4) ``refcal[v,per-sample]``: (phi_target - mu) / sigma_x with the per-sample standard deviation over the
  K references (K >= 2; the LiRA paper prefers the global variance when K is small).

Nothing is fitted on labels. Queries per sample to the target: the base attack's; each reference model
answers the same number (the auditor's own compute, not the target's).
"""

from __future__ import annotations

import numpy as np

from ..errors import DiffmiaError
from .base import Attack, Param, one_of, optional
from .fusion import COMPONENT_PARAMS

BASES = ("sima", "pia", "loss", "noise_aggregation", "pian")
SEP = "|"


def _refs_ok(v) -> bool:
    return isinstance(v, str) and v != ""


class RefCal(Attack):
    """Reference-model calibration, offline LiRA (Carlini et al. 2022). White-box + reference models.

    Arguments: ``references`` (required: a ``diffmia train-references`` folder, or one reference target
    folder), ``base`` (default "sima": the per-sample statistic that is calibrated; one of sima, pia, loss,
    noise_aggregation, pian), ``component_params`` (``{base: {param: value}}``; in a run, the run's
    ``--param`` of the base attack fills it), ``weights`` ("ema" or "raw" reference weights, default
    "ema"). Score = g(s_target) - mean_k g(s_reference_k) (higher = member). Queries: the base attack's.
    """

    name = "refcal"
    paper = ("Carlini et al. 2022, Membership Inference Attacks From First Principles (LiRA, offline, fixed "
             "variance); reference models trained with the target's recipe")
    threat_model = "white-box"
    _parameter_constraints = {
        "references": optional(Param("a folder of reference models (diffmia train-references --out DIR)", _refs_ok)),
        "base": one_of(*BASES),
        "component_params": COMPONENT_PARAMS,
        "weights": one_of("ema", "raw")}

    def __init__(self, references: str | None = None, base: str = "sima", component_params=None,
                 weights: str = "ema"):
        self.references = references
        self.base = base
        self.component_params = component_params
        self.weights = weights

    def component_attacks(self) -> dict[str, Attack]:
        from .fusion import build_components

        return build_components([self.base], self.component_params, self.name)

    def _base(self) -> Attack:
        return self.component_attacks()[self.base]

    def _queries(self, num_train_timesteps):
        return self._base().queries_per_sample(num_train_timesteps)

    def reference_folders(self):
        """The finished reference models (a one-line error when none were given or none is finished)."""
        from ..references import finished_references

        if self.references is None:
            raise DiffmiaError(f"{self.name} needs reference models: train them with diffmia train-references "
                               "--target T --k K --out DIR, then pass --param refcal.references=DIR")
        return finished_references(self.references)

    def _features(self, target, images, cond, seeds, cache):
        from ..features import load_target

        folders = self.reference_folders()
        base = self._base()
        out = {f"target{SEP}{v}": s for v, s in base.scores(base.features(target, images, cond, seeds, cache)).items()}
        device = str(getattr(target, "device", "auto"))
        for i, folder in enumerate(folders):
            key = ("refcal", str(folder), self.weights, device)
            if key not in cache:
                cache[key] = load_target(str(folder), "model", self.weights, device,
                                         getattr(target, "batch_size", 256))
            ref = cache[key]
            want, have = getattr(target, "model_shape", None), getattr(ref, "model_shape", None)
            if want is not None and have is not None and tuple(want) != tuple(have):
                raise DiffmiaError(f"{folder}: this reference model works on {tuple(have)} inputs, the target on "
                                   f"{tuple(want)}; train references with the target's recipe (diffmia train-references)")
            for v, s in base.scores(base.features(ref, images, cond, seeds, cache)).items():
                out[f"ref{i}{SEP}{v}"] = s
        return out

    def _scores(self, features):
        variants = [k.split(SEP, 1)[1] for k in features if k.startswith(f"target{SEP}")]
        k = len({c.split(SEP, 1)[0] for c in features} - {"target"})
        if not variants or k == 0:
            raise DiffmiaError(f"{self.name}: features hold no target or no reference scores")
        out = {}
        for v in variants:
            s_t = np.asarray(features[f"target{SEP}{v}"], dtype=np.float64)              # (L1)
            s_r = np.stack([np.asarray(features[f"ref{i}{SEP}{v}"], dtype=np.float64) for i in range(k)])
            g = _log_scale if (s_t <= 0).all() and (s_r <= 0).all() else (lambda s: s)  # (L2)
            phi_t, phi_r = g(s_t), g(s_r)
            mu = phi_r.mean(0)
            diff = phi_t - mu                                                            # (L3)
            if not out:
                out[self.name] = diff
            out[f"{self.name}[{v}]"] = diff
            if k >= 2:
                sd = phi_r.std(0, ddof=1)
                floor = 1e-3 * float(np.sqrt(np.mean(sd ** 2))) + 1e-12
                out[f"{self.name}[{v},per-sample]"] = diff / np.maximum(sd, floor)        # (L4)
        return out


def _log_scale(s):
    return -np.log(np.maximum(-s, 1e-300))
