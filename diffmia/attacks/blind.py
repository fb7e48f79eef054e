"""Blind baseline: how far membership can be guessed without the model.

A member/non-member split drawn at random from one distribution leaves nothing to learn from the images
alone, so the blind baseline stays at chance; when it does not, the split is shifted (e.g. members and
non-members from different sources or classes), and attack numbers on it overstate the leak (Das et al.,
"Blind Baselines Beat Membership Inference Attacks for Foundation Models", 2024). The shift test that
goes with it (MMD between member and non-member images) is part of the evaluation protocol
(``diffmia.protocol.shift_distance``).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import DiffmiaError
from .base import Attack, integer, number


def image_features(images: torch.Tensor, pool: int = 8) -> np.ndarray:
    """What the blind baseline sees of an image: its pixels average-pooled to ``pool`` x ``pool`` (per
    channel) and simple statistics per channel: mean, std, the 10/50/90% quantiles, the fraction of
    near-background pixels (< -0.9), and the mean absolute horizontal and vertical gradients."""
    x = images.float()
    pooled = torch.nn.functional.adaptive_avg_pool2d(x, (pool, pool)).flatten(1)
    flat = x.flatten(2)                                                   # N x C x HW
    q = torch.quantile(flat, torch.tensor([0.1, 0.5, 0.9]), dim=2).permute(1, 2, 0).flatten(1)
    stats = [flat.mean(2), flat.std(2), q, (flat < -0.9).float().mean(2),
             (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(2).mean(2),
             (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(2).mean(2)]
    return torch.cat([pooled] + stats, dim=1).double().numpy()


class BlindBaseline(Attack):
    """Blind baseline (Das et al. 2024). Threat model: no access: it **never queries the target**
    (``features`` ignores it; the runner passes None).

    Features come from the images alone (:func:`image_features`: 8 x 8 average-pooled pixels and simple
    per-channel statistics). A scikit-learn logistic regression on standardised features (L2 penalty,
    inverse strength ``C``, default 0.1 because calibration sets are small) is fit on calibration rows
    (``fit(features, is_member)``). Score = P(member). On an IID split its AUC is near 0.5; a clearly
    higher AUC reveals a distribution shift between members and non-members, which any attack would
    also pick up. Queries per sample: 0.
    """

    name = "blind"
    paper = "Das, Zhang & Tramèr 2024 (blind baselines)"
    threat_model = "no access"
    access = "none"
    learned = True
    _parameter_constraints = {"C": number(0, strict=True), "pool": integer(1)}

    def __init__(self, C: float = 0.1, pool: int = 8):
        self.C = C
        self.pool = pool

    def _queries(self, num_train_timesteps):
        return 0

    def _features(self, target, images, cond, seeds, cache):
        return {"image_features": image_features(images, int(self.pool))}       # the target is never used

    def _fit(self, features, is_member):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        x = self._x(features)
        y = np.asarray(is_member).astype(bool)
        if len(y) != len(x):
            raise DiffmiaError(f"blind: {len(y)} labels for {len(x)} feature rows")
        if y.all() or not y.any():
            raise DiffmiaError("blind: the calibration rows need both members and non-members")
        self.model_ = make_pipeline(StandardScaler(), LogisticRegression(C=float(self.C), max_iter=5000)).fit(x, y)

    def _x(self, features) -> np.ndarray:
        if "image_features" not in features:
            raise DiffmiaError("blind: features lack image_features; compute them with features()")
        return np.asarray(features["image_features"], np.float64)

    def _scores(self, features):
        m = self.model_
        return {"blind": m.predict_proba(self._x(features))[:, list(m.classes_).index(True)]}
