"""The evaluation protocol's promises, each tested so that a one-line regression trips it.

README, "Evaluation protocol": variants and thresholds are chosen on calibration rows only; learned
attacks fit on calibration rows only and their calibration scores are out of fold; scores are never
re-oriented by the labels; bootstrap resamples keep the class counts; TPR at FPR comes from the exact
ROC. Properties of the runner are checked with spy attacks run through ``run_attacks`` (registered in
the plain-dict registry for the test), so they hold for the real pipeline, not a copy of it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from diffmia import metrics, protocol
from diffmia.attacks import ATTACKS
from diffmia.attacks.base import Attack
from diffmia.data import MembershipSplit
from diffmia.run import RunConfig, run_attacks
from diffmia.scores import Scores

N_NON = 40                      # the fixture split's 32 members + its first 40 non-members


class Spy(Attack):
    """Never queries a target; its features are the sample ids, so fit and scores can be inspected."""

    paper = "test spy"
    threat_model = "no access"
    access = "none"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def _queries(self, num_train_timesteps):
        return 0

    def _features(self, target, images, cond, seeds, cache):
        return {"id": np.asarray(seeds, np.int64)}


class Memoriser(Spy):
    """A learned attack that remembers the label of every row it was fitted on: 1 / 0 for a member /
    non-member it saw, 0.5 for a row it never saw. In-sample scores would be perfect."""

    name = "spy_memoriser"
    learned = True
    fits: list[set] = []

    def _fit(self, features, is_member):
        Memoriser.fits.append(set(features["id"].tolist()))
        self.table_ = dict(zip(features["id"].tolist(), np.asarray(is_member, float).tolist()))

    def _scores(self, features):
        return {"memo": np.array([self.table_.get(i, 0.5) for i in features["id"].tolist()])}


class Chooser(Spy):
    """Two variants whose quality differs between the calibration and the test rows (``truth`` maps an
    id to (is_member, is_calibration), set by the test). ``test_good`` (listed first) is perfect on the
    test rows and noise on calibration rows; ``calib_good`` is nearly perfect on calibration rows and
    reversed on test rows. An honest protocol picks ``calib_good`` and reports AUC < 0.5 for it."""

    name = "spy_chooser"
    truth: dict = {}

    def _scores(self, features):
        rng = np.random.default_rng(self.seed)
        ids = features["id"].tolist()
        m = np.array([self.truth[i][0] for i in ids], float)
        c = np.array([self.truth[i][1] for i in ids], bool)
        noise = rng.normal(size=len(ids))
        return {"test_good": np.where(c, noise, m + 0.1 * noise),
                "calib_good": np.where(c, m + 0.1 * noise, -m + 0.1 * noise)}


@pytest.fixture
def spies(monkeypatch):
    for cls in (Memoriser, Chooser):
        monkeypatch.setitem(ATTACKS, cls.name, cls)
    Memoriser.fits = []


def _run(tmp_path, memorised_dir, attacks, **kw):
    cfg = RunConfig(target=str(memorised_dir), out=str(tmp_path / "run"), attacks=attacks, n_nonmembers=N_NON,
                    n_boot=1, blind=False, progress=False, **kw)
    report = run_attacks(cfg)
    return report, {a: Scores.load(tmp_path / "run" / "scores" / f"{a}.npz") for a in attacks}


def _expected_calibration(memorised_dir, seed=0):
    split = MembershipSplit.load(memorised_dir / "split.json").limit(None, N_NON)
    calib = protocol.calibration_split(split.is_member, 0.5, seed)
    return split.ids, split.is_member, calib


def test_learned_attacks_fit_on_calibration_rows_only_and_score_them_out_of_fold(spies, tmp_path, memorised_dir):
    report, sc = _run(tmp_path, memorised_dir, ["spy_memoriser"])
    s = sc["spy_memoriser"]
    calib_ids = set(s.ids[s.calibration].tolist())
    test_ids = set(s.ids[~s.calibration].tolist())
    assert len(calib_ids) == 36 and len(test_ids) == 36
    # the final fit sees exactly the calibration rows; the 2 cross-fits each see a part of them
    assert Memoriser.fits[0] == calib_ids
    assert len(Memoriser.fits) == 3
    assert all(f < calib_ids for f in Memoriser.fits[1:])
    assert set.union(*Memoriser.fits[1:]) == calib_ids              # every calibration row is fitted once...
    assert not Memoriser.fits[1] & Memoriser.fits[2]                 # ...in one fold only
    assert not any(f & test_ids for f in Memoriser.fits)             # never a test row
    # out-of-fold: every row is scored by a fit that never saw it (in-sample would give 0 / 1)
    np.testing.assert_array_equal(s.variants["memo"], 0.5)
    r = report["attacks"]["spy_memoriser"]
    assert r["calibration_auc"] == 0.5 and r["auc"] == 0.5


def test_variant_and_thresholds_are_chosen_on_calibration_rows_and_never_flipped(spies, tmp_path, memorised_dir):
    ids, is_member, calib = _expected_calibration(memorised_dir)
    Chooser.truth = {int(i): (bool(m), bool(c)) for i, m, c in zip(ids, is_member, calib)}
    report, sc = _run(tmp_path, memorised_dir, ["spy_chooser"])
    s = sc["spy_chooser"]
    np.testing.assert_array_equal(s.calibration, calib)             # the runner's split is the seeded one
    r = report["attacks"]["spy_chooser"]
    assert r["variant"] == "calib_good"                              # not the first, not the best on test/all
    assert r["sweep"]["test_good"]["auc"] > r["sweep"]["calib_good"]["auc"]
    v = s.variants["calib_good"]
    # headline numbers on the test rows only, with the score as the attack defines it: reversed -> AUC 0
    assert r["auc"] == metrics.auc(is_member[~calib], v[~calib]) == 0.0
    assert r["n_members"] + r["n_nonmembers"] == int((~calib).sum())
    # thresholds from the calibration rows, applied to the test rows
    thr = metrics.best_threshold(is_member[calib], v[calib])
    assert r["calibrated"]["threshold"] == thr
    want = metrics.rates_at(is_member[~calib], v[~calib], thr)
    assert json.loads(json.dumps(r["calibrated"])) == json.loads(json.dumps(want))
    thr1 = metrics.threshold_at_fpr(is_member[calib], v[calib], 0.01)
    assert r["calibrated_at_1pct_fpr"]["threshold"] == thr1
    assert r["calibrated"]["tpr"] == 0.0                             # the reversed test half is not rescued


def test_evaluate_keeps_an_anticorrelated_score_below_chance():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(100, bool), np.zeros(100, bool)]
    calib = protocol.calibration_split(y, 0.5, 0)
    anti = -y.astype(float) + 0.5 * rng.normal(size=200)
    ev = protocol.evaluate({"anti": anti}, y, calib, n_boot=20)
    assert ev["auc"] < 0.2 and ev["auc"] == pytest.approx(1 - metrics.auc(y[~calib], -anti[~calib]))
    assert ev["auc_ci"][1] < 0.5 and ev["asr_oracle"] >= 0.5


def test_bootstrap_resamples_keep_class_counts():
    y = np.r_[np.ones(7), np.zeros(23)]
    s = np.arange(30.0)
    seen = []

    def spy_metric(yb, sb):
        seen.append((int(yb.sum()), len(yb)))
        return float(sb.mean())

    lo, hi = metrics.bootstrap_ci(spy_metric, y, s, n_boot=200, seed=1)
    assert len(seen) == 200 and set(seen) == {(7, 30)}
    assert lo < s.mean() < hi


def test_tpr_at_fpr_exact_between_roc_points():
    # 150 non-members: alpha = 1% allows 1.5 false positives, i.e. one. Members: 3 above every
    # non-member, 2 between the top two non-members, 1 between the 2nd and 3rd, 4 far below.
    neg = np.arange(150.0)
    pos = np.array([300, 301, 302, 148.5, 148.6, 147.5, -1, -2, -3, -4.0])
    y = np.r_[np.zeros(150), np.ones(10)]
    s = np.r_[neg, pos]
    r = metrics.tpr_at_fpr(y, s, 0.01)
    assert r.tpr == 0.5 and r.achieved_fpr == pytest.approx(1 / 150)   # no interpolation towards 0.6
    assert metrics.tpr_at_fpr(y, s, 1 / 150).tpr == 0.5                # FPR == alpha counts (<=, not <)
    assert metrics.tpr_at_fpr(y, s, 2 / 150).tpr == 0.6


def test_tpr_at_fpr_with_tied_scores():
    # 200 non-members (alpha = 0.5% allows one false positive); a member tied with the 2nd-highest
    # non-member only counts together with that non-member's false positive
    neg = np.arange(200.0)
    pos = np.array([300.0, 198.0, 50.0, 10.0])
    y = np.r_[np.zeros(200), np.ones(4)]
    s = np.r_[neg, pos]
    assert metrics.tpr_at_fpr(y, s, 0.005).tpr == 0.25
    assert metrics.tpr_at_fpr(y, s, 0.01).tpr == 0.5
    assert metrics.auc([1, 0, 0], [1.0, 1.0, 0.0]) == 0.75                 # a tie counts half


def _clustered(seed=0):
    """24 member groups of one row, 12 non-member groups of 8 rows each (a sentence's renderings), scores per group."""
    rng = np.random.default_rng(seed)
    groups = np.r_[np.arange(24), np.repeat(np.arange(24, 36), 8)]
    is_member = np.r_[np.ones(24, bool), np.zeros(96, bool)]
    score = rng.normal(size=36)[groups] + 0.01 * rng.normal(size=len(groups)) + 0.5 * is_member
    return groups, is_member, score


def test_grouped_calibration_split_keeps_each_group_on_one_side_and_ungrouped_is_unchanged():
    groups, is_member, _ = _clustered()
    calib = protocol.calibration_split(is_member, 0.5, seed=3, groups=groups)
    for g in np.unique(groups):
        assert len(set(calib[groups == g])) == 1                 # never split across the halves
    assert (calib & is_member).sum() == 12 and (calib & ~is_member).sum() == 6 * 8   # half of each side's groups
    assert not np.array_equal(calib, protocol.calibration_split(is_member, 0.5, seed=4, groups=groups))
    plain = protocol.calibration_split(is_member, 0.5, seed=3)    # without groups: row by row, as before
    assert any(len(set(plain[groups == g])) == 2 for g in range(24, 36))
    mixed = groups.copy()
    mixed[0] = 30                                                 # a member in a non-member group
    with pytest.raises(Exception, match="both members and non-members"):
        protocol.calibration_split(is_member, 0.5, groups=mixed)


def test_cluster_bootstrap_counts_a_groups_rows_once_and_cross_fitting_folds_hold_whole_groups():
    groups, is_member, score = _clustered()
    rows = metrics.bootstrap_ci(metrics.auc, is_member, score, 400, seed=1)
    clusters = metrics.bootstrap_ci(metrics.auc, is_member, score, 400, seed=1, groups=groups)
    # 12 non-member groups, not 96 independent rows: the honest interval is wider, as wide as with one row per group
    one = np.r_[np.arange(24), 24 + 8 * np.arange(12)]
    dedup = metrics.bootstrap_ci(metrics.auc, is_member[one], score[one], 400, seed=1)
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(clusters) > 1.25 * width(rows)
    assert width(clusters) == pytest.approx(width(dedup), rel=0.2)
    summary = metrics.summary(is_member, score, 400, seed=1, groups=groups)
    assert summary["auc_ci"] == pytest.approx(clusters)

    class Memo(Attack):                   # a learned attack that remembers each group's label from its fit rows
        name, learned = "memo", True

        def __init__(self):
            pass

        def _queries(self, T):
            return 0

        def _fit(self, f, y):
            self.seen_ = dict(zip(f["g"].tolist(), np.asarray(y, float).tolist()))

        def _scores(self, f):
            return {"memo": np.array([self.seen_.get(g, 0.5) for g in f["g"].tolist()])}

    calib = protocol.calibration_split(is_member, 0.5, seed=0, groups=groups)
    feats = {"g": groups.astype(float)}
    out = protocol.attack_scores(Memo(), feats, is_member, calib, seed=0, groups=groups)["memo"]
    assert np.all(out == 0.5)             # no row was scored by a fit that saw its group (in or out of fold)
    leaky = protocol.attack_scores(Memo(), feats, is_member, calib, seed=0)["memo"]
    assert np.any(leaky[calib & ~is_member] == 0)               # row-wise folds let a sentence's copies leak


def test_epsilon_bound_and_calibrated_rates_count_one_row_per_group():
    """Clopper-Pearson intervals assume independent rows: eight copies of a non-member are one draw. A perfect
    separation on 6 test non-member groups of 8 rows proves far less than on 48 independent rows."""
    groups, is_member, _ = _clustered()
    score = np.where(is_member, 1.0, 0.0) + 0.01 * np.arange(len(groups)) / len(groups)
    calib = protocol.calibration_split(is_member, 0.5, seed=0, groups=groups)
    grouped = protocol.evaluate({"s": score}, is_member, calib, n_boot=50, groups=groups)
    rows = protocol.evaluate({"s": score}, is_member, calib, n_boot=50)
    assert grouped["independent_test_rows"] == {"members": 12, "nonmembers": 6}
    assert grouped["calibrated"]["fpr_ci"][1] == pytest.approx(metrics.clopper_pearson(0, 6)[1])
    assert grouped["empirical_epsilon"]["lower_bound"] < rows["empirical_epsilon"]["lower_bound"] - 1
    keep = ~calib & protocol.one_row_per_group(is_member, groups)
    alone = metrics.empirical_epsilon(is_member[keep], score[keep], {"t": 0.5})
    assert grouped["empirical_epsilon"]["lower_bound"] == pytest.approx(alone["lower_bound"], abs=0.3)
