"""The evaluation protocol: what may see which rows, in one place.

1. ``calibration_split``: the evaluation members and non-members are each split into a calibration half
   and a test half (seeded, stratified).
2. ``attack_scores``: every score variant of an attack for every row. A learned attack is fitted on the
   calibration rows only; its test rows are scored by that fit, its calibration rows **out of fold**
   (cross-fitting: each calibration fold by a fit on the other folds), so nothing chosen on calibration
   scores sees an in-sample fit.
3. ``evaluate``: the headline variant (highest calibration AUC) and the decision thresholds are chosen
   on the calibration rows only; headline numbers are measured on the test rows. Scores are never
   re-oriented: a variant that ranks members low reports an AUC below 0.5. It also bounds epsilon from below
   (``empirical_epsilon``: thresholds from the calibration rows, rates and Clopper-Pearson bounds on the
   test rows); ``audit_delta`` and ``dp_audit_warnings`` compare it with a DP-trained target's accountant.
4. ``shift_check``/``shift_distance``: is the member/non-member split itself shifted? (the blind
   baseline's AUC and an MMD test on the images).

The metrics themselves (exact ROC, TPR at FPR, bootstrap and Clopper-Pearson intervals) are plain
functions in ``metrics.py``.
"""

from __future__ import annotations

import numpy as np

from . import metrics
from .errors import DiffmiaError


def calibration_split(is_member, frac: float = 0.5, seed: int = 0, groups=None) -> np.ndarray:
    """Boolean mask of the calibration rows: ``frac`` of the members and of the non-members (seeded). With
    ``groups`` (one label per row, e.g. an utterance's sentence), ``frac`` of each side's groups, whole: no
    group has rows in both halves, so nothing learned or chosen on calibration rows has seen a test row's
    near-copy."""
    is_member = np.asarray(is_member).astype(bool)
    rng = np.random.default_rng(seed)
    calib = np.zeros(len(is_member), bool)
    if groups is not None:
        for side in metrics.group_rows(is_member, groups):
            for k in rng.permutation(len(side))[:int(round(frac * len(side)))]:
                calib[side[k]] = True
    else:
        for grp in (np.flatnonzero(is_member), np.flatnonzero(~is_member)):
            k = int(round(frac * len(grp)))
            calib[rng.permutation(grp)[:k]] = True
    if not (calib & is_member).any() or not (calib & ~is_member).any() \
            or not (~calib & is_member).any() or not (~calib & ~is_member).any():
        n_groups = "" if groups is None else " in {} and {} groups, each kept whole".format(
            *(len(side) for side in metrics.group_rows(is_member, groups)))
        raise DiffmiaError("too few members or non-members to split into calibration and test halves "
                           f"({int(is_member.sum())} members, {int((~is_member).sum())} non-members{n_groups})")
    return calib


def attack_scores(attack, features: dict, is_member: np.ndarray, calib: np.ndarray, folds: int = 2,
                  seed: int = 0, groups=None) -> dict[str, np.ndarray]:
    """Every score variant of ``attack`` for every row, never scoring a row with a fit that saw it.

    Query-only attacks: ``attack.scores(features)``. Learned attacks: test rows are scored by the attack
    fitted on all calibration rows; calibration rows are cross-fitted (``folds`` stratified folds of the
    calibration rows, drawn with ``seed + 1``: fit on the other folds, score the held-out one), so that
    choosing a variant or a threshold on calibration scores is not fooled by in-sample fit (an unpruned
    decision tree is perfect on its own training rows). With ``groups``, folds hold whole groups.
    """
    if not attack.learned:
        return attack.scores(features)
    rows = lambda m: {k: v[m] for k, v in features.items()}  # noqa: E731
    attack.fit(rows(calib), is_member[calib])
    full = attack.scores(features)
    out = {k: np.array(v, dtype=np.float64, copy=True) for k, v in full.items()}
    rng = np.random.default_rng(seed + 1)
    fold = np.full(len(is_member), -1)
    if groups is not None:
        for side in metrics.group_rows(is_member[calib], np.asarray(groups)[calib]):
            for f, k in enumerate(rng.permutation(len(side))):
                fold[np.flatnonzero(calib)[side[k]]] = f % folds
    else:
        for grp in (np.flatnonzero(calib & is_member), np.flatnonzero(calib & ~is_member)):
            fold[rng.permutation(grp)] = np.arange(len(grp)) % folds
    for f in range(folds):
        train_rows, held = calib & (fold != f), fold == f
        if not held.any() or is_member[train_rows].all() or not is_member[train_rows].any():
            raise DiffmiaError(f"{attack.name}: too few calibration samples for {folds}-fold cross-fitting")
        clone = type(attack)(**attack.get_params()).fit(rows(train_rows), is_member[train_rows])
        part = clone.scores(rows(held))
        for k in out:
            out[k][held] = part[k]
    return out


def choose_variant(variants: dict[str, np.ndarray], is_member, calib) -> tuple[str, dict[str, float]]:
    """The variant with the highest AUC on the calibration rows (the first one on ties), and every
    variant's calibration AUC."""
    calib_auc = {k: metrics.auc(is_member[calib], v[calib]) for k, v in variants.items()}
    chosen = max(calib_auc, key=calib_auc.get) if len(variants) > 1 else next(iter(variants))
    return chosen, calib_auc


# the thresholds of the empirical-epsilon audit, all chosen on the calibration rows
EPSILON_RULES = {"calibrated": "best balanced accuracy on calibration",
                 "calibrated_at_1pct_fpr": "FPR <= 1% on calibration",
                 "max_bound_on_calibration": "largest epsilon bound on calibration"}


def evaluate(variants: dict[str, np.ndarray], is_member, calib: np.ndarray, n_boot: int = 1000,
             seed: int = 0, delta: float = metrics.DEFAULT_DELTA, groups=None) -> dict:
    """The calibration/test protocol for one attack.

    The headline variant and the thresholds are chosen on the calibration rows only (highest
    calibration AUC; scores are never flipped); headline numbers are measured on the test rows.
    ``sweep`` lists every variant's AUC and TPR@1%FPR on all rows: selecting from it is oracle selection.
    ``empirical_epsilon``: a 95% lower bound on the epsilon of (epsilon, ``delta``)-DP that the test rows
    show, over three thresholds chosen on the calibration rows (EPSILON_RULES; Bonferroni over them).
    ``groups``: the bootstrap CIs resample whole groups (``metrics.bootstrap_ci``); the calibrated decisions and
    the epsilon bound, whose Clopper-Pearson intervals assume independent rows, use one seeded row per test group
    (``one_row_per_group``; their count is ``independent_test_rows``).
    """
    is_member = np.asarray(is_member).astype(bool)
    calib = np.asarray(calib).astype(bool)
    test = ~calib
    chosen, calib_auc = choose_variant(variants, is_member, calib)
    s = variants[chosen]
    out = {"variant": chosen, "calibration_auc": calib_auc[chosen]}
    out.update(metrics.summary(is_member[test], s[test], n_boot, seed,
                               groups=None if groups is None else np.asarray(groups)[test]))
    # Clopper-Pearson intervals need independent rows: with groups, one row of each test group
    ind = test if groups is None else test & one_row_per_group(is_member, groups)
    if groups is not None:
        out["independent_test_rows"] = {"members": int((ind & is_member).sum()), "nonmembers": int((ind & ~is_member).sum())}
    thr = metrics.best_threshold(is_member[calib], s[calib])
    out["calibrated"] = metrics.rates_at(is_member[ind], s[ind], thr)
    thr1 = metrics.threshold_at_fpr(is_member[calib], s[calib], 0.01)
    out["calibrated_at_1pct_fpr"] = metrics.rates_at(is_member[ind], s[ind], thr1)
    thr_eps = metrics.threshold_max_epsilon(is_member[calib], s[calib], delta)
    out["empirical_epsilon"] = metrics.empirical_epsilon(
        is_member[ind], s[ind], dict(zip(EPSILON_RULES, (thr, thr1, thr_eps))), delta)
    if len(variants) > 1:
        out["sweep"] = {k: {"auc": metrics.auc(is_member, v), "tpr_at_1pct_fpr": metrics.tpr_at_fpr(is_member, v, 0.01).tpr,
                            "calibration_auc": calib_auc[k]} for k, v in variants.items()}
        out["sweep_note"] = "every variant on all samples: choosing the best here is oracle selection"
    return out


DP_WARNING = "DP audit:"


def audit_delta(dp: dict | None) -> tuple[float, str]:
    """The delta of the empirical-epsilon audit and where it comes from: the ``dp`` entry of the target's
    training record (training.json) when the target was trained with DP, else ``metrics.DEFAULT_DELTA``."""
    d = dp.get("delta") if isinstance(dp, dict) else None
    if isinstance(d, (int, float)) and not isinstance(d, bool) and 0 <= d < 1:
        return float(d), "the target's DP training record (training.json dp.delta)"
    why = "its DP record has no valid delta" if isinstance(dp, dict) else "the target has no DP training record"
    return metrics.DEFAULT_DELTA, f"default ({why})"


def dp_audit_warnings(report: dict) -> list[str]:
    """A warning per attack whose empirical-epsilon lower bound exceeds the epsilon the DP accountant claims
    (report["dp"]["epsilon"]): the audit found more leakage than the guarantee allows."""
    claimed = (report.get("dp") or {}).get("epsilon")
    if not isinstance(claimed, (int, float)):
        return []
    out = []
    for name, r in report["attacks"].items():
        e = r.get("empirical_epsilon") or {}
        if e.get("lower_bound", 0) > claimed:
            out.append(f"{DP_WARNING} {name}'s empirical epsilon lower bound {e['lower_bound']:.3f} (95%, delta "
                       f"{e['delta']:.3g}) exceeds the accountant's epsilon {claimed:.3g}: the audit found more "
                       "leakage than the DP guarantee allows: a bug in training or accounting"
                       + (" (or members and non-members differ in distribution)" if name == "blind" else "") + ".")
    return out


def one_row_per_group(is_member, groups, seed: int = 0) -> np.ndarray:
    """Boolean mask with one seeded row of each group: the rows a test that assumes independent draws may use
    (the renderings of one sentence are one draw of the sentence, not several)."""
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(groups), bool)
    for side in metrics.group_rows(is_member, groups):
        for rows in side:
            keep[rows[rng.integers(len(rows))]] = True
    return keep


def shift_check(images: np.ndarray, is_member: np.ndarray, results: dict, groups=None) -> dict:
    """Warnings when the blind baseline finds a shift or an attack does not beat it, and the MMD shift
    test on the images (``shift_distance``, which never queries the model: it runs without the blind
    baseline too). With ``groups``, the test takes one seeded row of each group, since its permutation
    p-value needs independent rows (eight renderings of one sentence are not eight draws)."""
    warnings = []
    b = results.get("blind")
    lo = (b.get("auc_ci") or (None, None))[0] if b else None
    if lo is not None and lo > 0.5:
        warnings.append(f"The blind baseline (never queries the target) reaches AUC {b['auc']:.3f} "
                        f"(95% CI low {lo:.3f} > 0.5): members and non-members differ in distribution, so "
                        "attack numbers on this split overstate the leak.")
    for name, r in results.items() if b else ():
        if name != "blind" and r["auc"] <= b["auc"]:
            warnings.append(f"{name}: AUC {r['auc']:.3f} does not beat the blind baseline ({b['auc']:.3f}).")
    flat = images.reshape(len(images), -1)
    if groups is not None:
        keep = one_row_per_group(is_member, groups)
        flat, is_member = flat[keep], np.asarray(is_member, bool)[keep]
    shift = shift_distance(flat[is_member], flat[~is_member])
    if groups is not None:
        shift["one_row_per_group"] = True
    return {"warnings": warnings, "shift": shift}


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
