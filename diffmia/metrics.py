"""Metrics of a membership score: plain functions of ``(y_true, y_score)``, higher score = member, y_true 1
for members. All come from the exact ROC (``roc_curve(drop_intermediate=False)``).

* ``auc``, ``tpr_at_fpr`` (the largest TPR among ROC points with FPR <= alpha, with the achieved FPR and
  a ``resolvable`` flag: with alpha * n_nonmembers < 1 no non-zero FPR fits under alpha);
* ``asr_oracle``: the best accuracy over all thresholds on balanced sets, i.e. max_t (TPR + TNR) / 2.
  It picks the threshold with the evaluation labels: label it "oracle";
* thresholds (``best_threshold``, ``threshold_at_fpr``) and the rates of a fixed threshold
  (``rates_at``, with Clopper-Pearson intervals);
* ``bootstrap_ci``: seeded stratified bootstrap over samples; ``summary``: all of it on one set;
* the empirical-epsilon audit: ``epsilon_lower_bound`` (from counts), ``empirical_epsilon`` (from scores and
  thresholds chosen elsewhere, Bonferroni-corrected over them), ``threshold_max_epsilon`` (a threshold to choose
  on calibration rows).

Where thresholds and variants are chosen (the calibration half) is the evaluation protocol's business:
``diffmia.protocol``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import beta, binomtest
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


def group_rows(y_true, groups) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The rows of each member group and of each non-member group (groups in sorted order); a group holding
    both members and non-members is refused."""
    y_true, groups = np.asarray(y_true).astype(bool), np.asarray(groups)
    if groups.shape != y_true.shape:
        raise DiffmiaError(f"got {len(groups)} group labels for {len(y_true)} samples")
    out = ([], [])
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        if y_true[rows].any() and not y_true[rows].all():
            raise DiffmiaError(f"group {g} holds both members and non-members: a group must be on one side")
        out[0 if y_true[rows[0]] else 1].append(rows)
    return out


def bootstrap_rows(y_true, n_boot: int, seed: int = 0, groups=None):
    """The rows of each of ``n_boot`` seeded, stratified bootstrap resamples (members and non-members drawn
    separately); with ``groups``, whole groups are drawn (a cluster bootstrap)."""
    y_true = np.asarray(y_true).astype(bool)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y_true), np.flatnonzero(~y_true)
    pos_groups, neg_groups = group_rows(y_true, groups) if groups is not None else ([], [])
    for _ in range(n_boot):
        if groups is None:
            yield np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        else:
            yield np.concatenate([gs[k] for gs in (pos_groups, neg_groups) for k in rng.integers(0, len(gs), len(gs))])


def bootstrap_ci(metric, y_true, y_score, n_boot: int = 1000, level: float = 0.95, seed: int = 0, groups=None):
    """Seeded stratified bootstrap interval (members and non-members resampled separately). With ``groups``
    (one label per sample, e.g. the sentence of an utterance), a cluster bootstrap: whole groups are resampled,
    so that correlated samples (renderings of one sentence) do not pass for independent ones."""
    y_true, y_score = _check(y_true, y_score)
    vals = []
    for idx in bootstrap_rows(y_true, n_boot, seed, groups):
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


def summary(y_true, y_score, n_boot: int = 1000, seed: int = 0, groups=None) -> dict:
    """AUC, TPR@1% and @0.1% FPR with bootstrap CIs (a cluster bootstrap over ``groups`` when given), oracle
    ASR, on one set of samples."""
    y_true, y_score = _check(y_true, y_score)
    out = {"n_members": int(y_true.sum()), "n_nonmembers": int((~y_true).sum()),
           "auc": auc(y_true, y_score), "asr_oracle": asr_oracle(y_true, y_score)}
    if n_boot:
        out["auc_ci"] = bootstrap_ci(auc, y_true, y_score, n_boot, seed=seed, groups=groups)
    for alpha, key in ((0.01, "tpr_at_1pct_fpr"), (0.001, "tpr_at_0.1pct_fpr")):
        r = tpr_at_fpr(y_true, y_score, alpha)
        out[key] = r.tpr
        out[key + "_achieved_fpr"] = r.achieved_fpr
        out[key + "_resolvable"] = r.resolvable
        if n_boot and r.resolvable:
            out[key + "_ci"] = bootstrap_ci(_tpr_value(alpha), y_true, y_score, n_boot, seed=seed, groups=groups)
    return out


# ----------------------------------------------------------------------------- empirical epsilon
# An (eps, delta)-DP training algorithm bounds every membership test: TPR <= e^eps FPR + delta and
# TNR <= e^eps FNR + delta (Kairouz et al. 2015; used for auditing by Jagielski et al. 2020, Nasr et al. 2021).
# Measured rates with one-sided Clopper-Pearson bounds turn this into a lower bound on eps.
DEFAULT_DELTA = 1e-5


def cp_lower(k, n, alpha):
    """One-sided Clopper-Pearson lower bound (level 1 - alpha) on a binomial rate; 0 when k == 0."""
    k, n = np.asarray(k, np.float64), np.asarray(n, np.float64)
    return np.where(k > 0, beta.ppf(alpha, np.maximum(k, 1), n - k + 1), 0.0)


def cp_upper(k, n, alpha):
    """One-sided Clopper-Pearson upper bound (level 1 - alpha) on a binomial rate; 1 when k == n."""
    k, n = np.asarray(k, np.float64), np.asarray(n, np.float64)
    return np.where(k < n, beta.ppf(1 - alpha, k + 1, np.maximum(n - k, 1)), 1.0)


def _bounds(tp, n_pos, fp, n_neg, delta, confidence):
    """(eps lower bound, which inequality, TPR lower bound, FPR upper bound), vectorised over counts.

    The miss probability 1 - confidence is split evenly between the two one-sided bounds (TPR from below,
    FPR from above); TNR_lo = 1 - FPR_hi and FNR_hi = 1 - TPR_lo hold on the same events, so both
    inequalities are used at no extra cost."""
    a = (1 - confidence) / 2
    tpr_lo, fpr_hi = cp_lower(tp, n_pos, a), cp_upper(fp, n_neg, a)
    with np.errstate(divide="ignore", invalid="ignore"):
        e1 = np.where(tpr_lo > delta, np.log((tpr_lo - delta) / fpr_hi), 0.0)
        e2 = np.where(1 - fpr_hi > delta, np.log((1 - fpr_hi - delta) / (1 - tpr_lo)), 0.0)
    eps = np.maximum(0.0, np.maximum(e1, e2))
    return eps, np.where(e2 > e1 + 1e-12, "tnr/fnr", "tpr/fpr"), tpr_lo, fpr_hi


def _check_eps_args(delta, confidence) -> None:
    if not (isinstance(delta, (int, float)) and 0 <= delta < 1 and 0 < confidence < 1):
        raise DiffmiaError(f"epsilon bound: need 0 <= delta < 1 and 0 < confidence < 1, got delta {delta!r}, "
                           f"confidence {confidence!r}")


def epsilon_lower_bound(tp: int, n_pos: int, fp: int, n_neg: int, delta: float = DEFAULT_DELTA,
                        confidence: float = 0.95) -> float:
    """A lower bound on epsilon, valid with probability >= ``confidence``, from one fixed threshold's counts:
    ``tp`` of ``n_pos`` members and ``fp`` of ``n_neg`` non-members flagged.

    eps_lb = max(0, ln((TPR_lo - delta) / FPR_hi), ln((TNR_lo - delta) / FNR_hi)) with one-sided
    Clopper-Pearson bounds at level 1 - (1 - confidence)/2 each (TNR_lo = 1 - FPR_hi, FNR_hi = 1 - TPR_lo);
    a term whose numerator is <= 0 gives nothing. The threshold must not have been chosen on these rows."""
    if not (0 <= tp <= n_pos and 0 <= fp <= n_neg and n_pos > 0 and n_neg > 0):
        raise DiffmiaError(f"epsilon_lower_bound: counts out of range (tp {tp}/{n_pos}, fp {fp}/{n_neg})")
    _check_eps_args(delta, confidence)
    return float(_bounds(tp, n_pos, fp, n_neg, delta, confidence)[0])


def empirical_epsilon(y_true, y_score, thresholds: dict, delta: float = DEFAULT_DELTA,
                      confidence: float = 0.95) -> dict:
    """The largest epsilon lower bound over ``thresholds`` ({rule name: threshold}, chosen on other rows),
    predicting member when ``score >= threshold``, measured on these rows.

    Bonferroni over the K distinct finite thresholds (an infinite one flags nobody and can show nothing):
    each is tested at level 1 - (1 - confidence)/K, so the reported maximum holds with probability
    >= ``confidence``. Returns a JSON-ready dict: lower_bound, delta, confidence, threshold_rule (the rule
    whose threshold gave it; the first on ties), threshold, tpr, fpr (its rates here), tpr_lower, fpr_upper,
    inequality ("tpr/fpr" or "tnr/fnr"), n_thresholds, per_threshold_confidence, n_members, n_nonmembers,
    ``thresholds`` {rule: threshold} and ``candidates`` {rule: its bound}."""
    y_true, y_score = _check(y_true, y_score)
    if not thresholds:
        raise DiffmiaError("empirical_epsilon needs at least one threshold")
    _check_eps_args(delta, confidence)
    n_pos, n_neg = int(y_true.sum()), int((~y_true).sum())
    distinct = {float(t) for t in thresholds.values() if np.isfinite(t)}
    level = 1 - (1 - confidence) / max(len(distinct), 1)
    cand, best = {}, None
    for rule, t in thresholds.items():
        pred = y_score >= float(t)
        tp, fp = int((pred & y_true).sum()), int((pred & ~y_true).sum())
        eps, side, tpr_lo, fpr_hi = _bounds(tp, n_pos, fp, n_neg, delta, level)
        cand[rule] = float(eps)
        if best is None or eps > best["lower_bound"]:
            best = {"lower_bound": float(eps), "threshold_rule": rule, "threshold": float(t), "tpr": tp / n_pos,
                    "fpr": fp / n_neg, "tpr_lower": float(tpr_lo), "fpr_upper": float(fpr_hi),
                    "inequality": str(side)}
    return {**best, "delta": float(delta), "confidence": float(confidence), "n_thresholds": len(distinct),
            "per_threshold_confidence": level, "n_members": n_pos, "n_nonmembers": n_neg,
            "thresholds": {k: float(t) for k, t in thresholds.items()}, "candidates": cand}


def threshold_max_epsilon(y_true, y_score, delta: float = DEFAULT_DELTA, confidence: float = 0.95) -> float:
    """The threshold with the largest epsilon lower bound on these rows (meant for the calibration rows: the
    bound must then be measured on others), placed midway between the score it starts at and the next lower
    score, so that it does not sit on one row's score."""
    y_true, y_score = _check(y_true, y_score)
    _check_eps_args(delta, confidence)
    fpr, tpr, thr = roc_curve(y_true, y_score, drop_intermediate=False)
    n_pos, n_neg = int(y_true.sum()), int((~y_true).sum())
    eps = _bounds(np.rint(tpr * n_pos), n_pos, np.rint(fpr * n_neg), n_neg, delta, confidence)[0]
    i = int(np.argmax(eps))
    if i == 0 or i == len(thr) - 1:        # predict nothing (inf) or everything (the lowest score)
        return float(thr[i])
    return float((thr[i] + thr[i + 1]) / 2)


def fmt(x, nd: int = 3) -> str:
    if x is None:
        return "n/r"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    return f"{x:.{nd}f}"
