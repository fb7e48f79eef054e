"""Blind baseline and shift diagnostic (SPEC 4): how far membership can be guessed without the model.

A member/non-member split drawn at random from one distribution leaves nothing to learn from the images
alone, so the blind baseline stays at chance; when it does not, the split is shifted (e.g. members and
non-members from different sources or classes), and attack numbers on it overstate the leak (Das et al.,
"Blind Baselines Beat Membership Inference Attacks for Foundation Models", 2024).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import DiffmiaError
from .base import Attack, check_images


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
    """Blind baseline (SPEC 4; Das et al. 2024). Threat model: no access: it **never queries the target**
    (``features`` ignores it; the runner passes None).

    Features come from the images alone (:func:`image_features`: 8 x 8 average-pooled pixels and simple
    per-channel statistics). A scikit-learn logistic regression on standardised features (L2 penalty,
    inverse strength ``C``, default 0.1 because calibration sets are small) is fit on calibration rows
    (``fit(features, is_member)``). Score = P(member). On an IID split its AUC is near 0.5; a clearly
    higher AUC reveals a distribution shift between members and non-members, which any attack would
    also pick up. Queries per sample: 0.
    """

    name = "blind"
    paper = "Das, Zhang & Tramèr 2024 (blind baselines); SPEC 4"
    threat_model = "no access"
    access = "none"
    learned = True

    def __init__(self, C: float = 0.1, pool: int = 8):
        self.C = C
        self.pool = pool

    def queries_per_sample(self) -> int:
        return 0

    def features(self, target, images, cond=None, seeds=None):
        if isinstance(self.pool, bool) or not isinstance(self.pool, (int, np.integer)) or self.pool < 1:
            raise DiffmiaError(f"blind: pool must be a positive integer, got {self.pool!r}")
        return {"image_features": image_features(check_images(images, self.name), int(self.pool))}

    def fit(self, features, is_member):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if not isinstance(self.C, (int, float)) or not self.C > 0:
            raise DiffmiaError(f"blind: C must be a positive number, got {self.C!r}")
        x = self._x(features)
        y = np.asarray(is_member).astype(bool)
        if len(y) != len(x):
            raise DiffmiaError(f"blind: {len(y)} labels for {len(x)} feature rows")
        if y.all() or not y.any():
            raise DiffmiaError("blind: the calibration rows need both members and non-members")
        self.model_ = make_pipeline(StandardScaler(), LogisticRegression(C=float(self.C), max_iter=5000)).fit(x, y)
        self.fitted_ = True
        return self

    def _x(self, features) -> np.ndarray:
        if "image_features" not in features:
            raise DiffmiaError("blind: features lack image_features; compute them with features()")
        return np.asarray(features["image_features"], np.float64)

    def scores(self, features):
        if not getattr(self, "fitted_", False):
            raise DiffmiaError("blind is a learned attack: call fit(features, is_member) on calibration rows first")
        m = self.model_
        return {"blind": m.predict_proba(self._x(features))[:, list(m.classes_).index(True)]}


def shift_distance(features_members, features_nonmembers, n_permutations: int = 200, max_per_group: int = 1000,
                   seed: int = 0) -> dict:
    """How different the member and non-member distributions are: the squared maximum mean discrepancy
    (MMD^2, unbiased estimator; Gretton et al., JMLR 2012) with a Gaussian kernel whose bandwidth is the
    median pairwise distance of the pooled rows (median heuristic), and its permutation p-value.

    Inputs: arrays with one row per sample (e.g. flattened images or :func:`image_features`); at most
    ``max_per_group`` rows of each group are used (a seeded subsample). Returns a JSON-ready dict:
    ``{"statistic": "mmd2_rbf", "mmd2", "p_value", "bandwidth", "n_members", "n_nonmembers",
    "n_permutations"}``. MMD^2 is about 0 (it can be slightly negative) without shift; p_value is the
    fraction of label permutations with an MMD^2 at least as large (with the +1 correction).
    """
    a = np.asarray(features_members, np.float64)
    b = np.asarray(features_nonmembers, np.float64)
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    if len(a) < 2 or len(b) < 2:
        raise DiffmiaError(f"shift_distance needs at least 2 rows per group, got {len(a)} and {len(b)}")
    if a.shape[1] != b.shape[1]:
        raise DiffmiaError(f"shift_distance: feature widths differ ({a.shape[1]} vs {b.shape[1]})")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise DiffmiaError("shift_distance: features contain NaN or infinite values")
    rng = np.random.default_rng(seed)
    if len(a) > max_per_group:
        a = a[rng.choice(len(a), max_per_group, replace=False)]
    if len(b) > max_per_group:
        b = b[rng.choice(len(b), max_per_group, replace=False)]
    z = np.concatenate([a, b])
    sq = (z * z).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0)
    off = d2[~np.eye(len(z), dtype=bool)]
    bw = float(np.sqrt(np.median(off))) if np.median(off) > 0 else 1.0
    k = np.exp(-d2 / (2 * bw * bw))
    n, m = len(a), len(b)

    def mmd2(idx_a, idx_b) -> float:
        kaa = k[np.ix_(idx_a, idx_a)]
        kbb = k[np.ix_(idx_b, idx_b)]
        kab = k[np.ix_(idx_a, idx_b)]
        return float((kaa.sum() - np.trace(kaa)) / (n * (n - 1)) + (kbb.sum() - np.trace(kbb)) / (m * (m - 1))
                     - 2 * kab.mean())

    idx = np.arange(n + m)
    stat = mmd2(idx[:n], idx[n:])
    null = []
    for _ in range(int(n_permutations)):
        p = rng.permutation(n + m)
        null.append(mmd2(p[:n], p[n:]))
    p_value = (1 + sum(v >= stat for v in null)) / (1 + len(null))
    return {"statistic": "mmd2_rbf", "mmd2": stat, "p_value": float(p_value), "bandwidth": bw,
            "n_members": n, "n_nonmembers": m, "n_permutations": int(n_permutations)}
