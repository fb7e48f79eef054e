"""Metrics of a membership score: plain functions of ``(y_true, y_score)``, higher score = member, y_true 1
for members. All come from the exact ROC (``roc_curve(drop_intermediate=False)``).

* ``auc``, ``tpr_at_fpr`` (the largest TPR among ROC points with FPR <= alpha, with the achieved FPR and
  a ``resolvable`` flag: with alpha * n_nonmembers < 1 no non-zero FPR fits under alpha);
* ``asr_oracle``: the best accuracy over all thresholds on balanced sets, i.e. max_t (TPR + TNR) / 2.
  It picks the threshold with the evaluation labels: label it "oracle";
* thresholds (``best_threshold``, ``threshold_at_fpr``) and the rates of a fixed threshold
  (``rates_at``, with Clopper-Pearson intervals);
* ``bootstrap_ci``: seeded stratified bootstrap over samples; ``summary``: all of it on one set.

Where thresholds and variants are chosen (the calibration half) is the evaluation protocol's business:
``diffmia.protocol``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import roc_auc_score, roc_curve

from .errors import DiffmiaError


def _check(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true).astype(bool).ravel()
    y_score = np.asarray(y_score, dtype=np.float64).ravel()
    if y_true.shape != y_score.shape:
        raise DiffmiaError(f"{len(y_true)} labels but {len(y_score)} scores")
    if y_true.all() or not y_true.any():
        raise DiffmiaError("metrics need both members and non-members")
    if not np.isfinite(y_score).all():
        raise DiffmiaError(f"{int((~np.isfinite(y_score)).sum())} scores are NaN or infinite")
    return y_true, y_score


def roc(y_true, y_score):
    """Exact ROC: (fpr, tpr, thresholds), every threshold kept."""
    y_true, y_score = _check(y_true, y_score)
    return roc_curve(y_true, y_score, drop_intermediate=False)


def auc(y_true, y_score) -> float:
    y_true, y_score = _check(y_true, y_score)
    return float(roc_auc_score(y_true, y_score))


@dataclass
class TprAtFpr:
    tpr: float | None        # None when not resolvable
    achieved_fpr: float
    alpha: float
    n_nonmembers: int
    resolvable: bool

    def __str__(self) -> str:
        return f"{self.tpr:.3f}" if self.resolvable else "n/r"


def tpr_at_fpr(y_true, y_score, alpha: float = 0.01) -> TprAtFpr:
    """Largest TPR among exact ROC points whose FPR <= alpha."""
    y_true, y_score = _check(y_true, y_score)
    n_neg = int((~y_true).sum())
    fpr, tpr, _ = roc_curve(y_true, y_score, drop_intermediate=False)
    ok = fpr <= alpha + 1e-12
    i = int(np.argmax(np.where(ok, tpr, -1.0)))
    resolvable = alpha * n_neg >= 1
    return TprAtFpr(float(tpr[i]) if resolvable else None, float(fpr[i]), alpha, n_neg, resolvable)


def asr_oracle(y_true, y_score) -> float:
    """Best balanced accuracy over all thresholds (the papers' ASR; uses the labels: oracle)."""
    y_true, y_score = _check(y_true, y_score)
    fpr, tpr, _ = roc_curve(y_true, y_score, drop_intermediate=False)
    return float(np.max((tpr + 1 - fpr) / 2))


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="exact")
    return (float(ci.low), float(ci.high))


def best_threshold(y_true, y_score) -> float:
    """Threshold maximising balanced accuracy (predict member when score >= threshold)."""
    fpr, tpr, thr = roc(y_true, y_score)
    return float(thr[int(np.argmax(tpr - fpr))])


def threshold_at_fpr(y_true, y_score, alpha: float) -> float:
    """The lowest threshold whose FPR on these data stays <= alpha."""
    fpr, tpr, thr = roc(y_true, y_score)
    ok = np.flatnonzero(fpr <= alpha + 1e-12)
    return float(thr[ok[-1]])


def rates_at(y_true, y_score, threshold: float) -> dict:
    """Accuracy (balanced), TPR, FPR of ``score >= threshold``, with Clopper-Pearson 95% intervals."""
    y_true, y_score = _check(y_true, y_score)
    pred = y_score >= threshold
    tp, fp = int((pred & y_true).sum()), int((pred & ~y_true).sum())
    n_pos, n_neg = int(y_true.sum()), int((~y_true).sum())
    tpr, fpr = tp / n_pos, fp / n_neg
    return {"threshold": float(threshold), "balanced_accuracy": (tpr + 1 - fpr) / 2,
            "tpr": tpr, "tpr_ci": clopper_pearson(tp, n_pos),
            "fpr": fpr, "fpr_ci": clopper_pearson(fp, n_neg)}


def bootstrap_ci(metric, y_true, y_score, n_boot: int = 1000, level: float = 0.95, seed: int = 0):
    """Seeded stratified bootstrap interval (members and non-members resampled separately)."""
    y_true, y_score = _check(y_true, y_score)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y_true), np.flatnonzero(~y_true)
    vals = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        v = metric(y_true[idx], y_score[idx])
        if v is not None:
            vals.append(v)
    if not vals:
        return (None, None)
    lo, hi = np.quantile(vals, [(1 - level) / 2, (1 + level) / 2])
    return (float(lo), float(hi))


def _tpr_value(alpha):
    def f(y, s):
        return tpr_at_fpr(y, s, alpha).tpr
    return f


def summary(y_true, y_score, n_boot: int = 1000, seed: int = 0) -> dict:
    """AUC, TPR@1% and @0.1% FPR with bootstrap CIs, oracle ASR, on one set of samples."""
    y_true, y_score = _check(y_true, y_score)
    out = {"n_members": int(y_true.sum()), "n_nonmembers": int((~y_true).sum()),
           "auc": auc(y_true, y_score), "asr_oracle": asr_oracle(y_true, y_score)}
    if n_boot:
        out["auc_ci"] = bootstrap_ci(auc, y_true, y_score, n_boot, seed=seed)
    for alpha, key in ((0.01, "tpr_at_1pct_fpr"), (0.001, "tpr_at_0.1pct_fpr")):
        r = tpr_at_fpr(y_true, y_score, alpha)
        out[key] = r.tpr
        out[key + "_achieved_fpr"] = r.achieved_fpr
        out[key + "_resolvable"] = r.resolvable
        if n_boot and r.resolvable:
            out[key + "_ci"] = bootstrap_ci(_tpr_value(alpha), y_true, y_score, n_boot, seed=seed)
    return out


def fmt(x, nd: int = 3) -> str:
    if x is None:
        return "n/r"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    return f"{x:.{nd}f}"
