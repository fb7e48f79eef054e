"""Known answers for the metrics, and agreement with scikit-learn."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from diffmia import metrics, protocol
from diffmia.errors import DiffmiaError


def test_auc_known_answers():
    assert metrics.auc([1, 1, 0, 0], [0.9, 0.8, 0.7, 0.1]) == 1.0
    assert metrics.auc([1, 1, 0, 0], [0.9, 0.1, 0.8, 0.2]) == 0.5
    assert metrics.auc([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == 0.0   # never flipped
    assert metrics.auc([1, 0], [0.5, 0.5]) == 0.5                     # ties count half


def test_auc_agrees_with_sklearn():
    rng = np.random.default_rng(0)
    y = rng.random(500) < 0.3
    s = rng.normal(size=500) + y
    assert metrics.auc(y, s) == pytest.approx(roc_auc_score(y, s))


def test_tpr_at_fpr_exact_and_achieved_fpr():
    # 100 non-members with scores 0..99; 10 members: 5 above every non-member, one between the top two
    # non-members (98.5: reached at FPR exactly 1%), 4 below all
    neg = np.arange(100.0)
    pos = np.array([200, 201, 202, 203, 204, 98.5, -2, -3, -4, -5.0])
    y = np.r_[np.zeros(100), np.ones(10)]
    s = np.r_[neg, pos]
    r = metrics.tpr_at_fpr(y, s, 0.01)
    assert r.resolvable and r.tpr == 0.6 and r.achieved_fpr == 0.01 and r.n_nonmembers == 100
    # alpha * n_nonmembers < 1: only FPR 0 fits: reported "not resolvable", not as a number
    r0 = metrics.tpr_at_fpr(y, s, 0.0099)
    assert not r0.resolvable and r0.tpr is None and r0.achieved_fpr == 0.0


def test_tpr_at_fpr_not_resolvable_with_few_nonmembers():
    y = np.r_[np.ones(50), np.zeros(50)]
    s = np.r_[np.ones(50), np.zeros(50)]
    r = metrics.tpr_at_fpr(y, s, 0.01)
    assert not r.resolvable and r.tpr is None and str(r) == "n/r"
    assert metrics.summary(y, s, n_boot=0)["tpr_at_1pct_fpr"] is None


def test_asr_oracle_is_best_balanced_accuracy():
    y = [1, 1, 1, 0, 0, 0]
    s = [0.9, 0.8, 0.3, 0.7, 0.2, 0.1]
    # threshold 0.8: TPR 2/3, FPR 0 -> 0.8333; threshold 0.3: TPR 1, FPR 1/3 -> 0.8333
    assert metrics.asr_oracle(y, s) == pytest.approx(5 / 6)


def test_calibration_split_is_stratified_and_seeded():
    y = np.r_[np.ones(40, bool), np.zeros(60, bool)]
    c = protocol.calibration_split(y, 0.5, seed=3)
    assert c[y].sum() == 20 and c[~y].sum() == 30
    assert (c == protocol.calibration_split(y, 0.5, seed=3)).all()
    assert not (c == protocol.calibration_split(y, 0.5, seed=4)).all()
    with pytest.raises(DiffmiaError, match="too few"):
        protocol.calibration_split(np.array([1, 0, 0], bool))


def test_clopper_pearson_known_value():
    lo, hi = metrics.clopper_pearson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 10), rel=1e-6)


def test_bootstrap_ci_seeded_and_contains_point():
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(100), np.zeros(100)]
    s = rng.normal(size=200) + y
    a = metrics.bootstrap_ci(metrics.auc, y, s, n_boot=200, seed=7)
    assert a == metrics.bootstrap_ci(metrics.auc, y, s, n_boot=200, seed=7)
    assert a[0] < metrics.auc(y, s) < a[1]


def test_evaluate_chooses_variant_on_calibration_only():
    rng = np.random.default_rng(2)
    y = np.r_[np.ones(200, bool), np.zeros(200, bool)]
    calib = protocol.calibration_split(y, 0.5, 0)
    good = y + rng.normal(size=400)
    # 'leaky' is informative only on the test half: an honest protocol must not pick it
    leaky = np.where(calib, rng.normal(size=400), 5.0 * y)
    ev = protocol.evaluate({"good": good, "leaky": leaky}, y, calib, n_boot=50)
    assert ev["variant"] == "good"
    assert ev["n_members"] == 100 and ev["n_nonmembers"] == 100
    assert ev["sweep"]["leaky"]["auc"] > ev["sweep"]["good"]["auc"] - 0.3  # the sweep shows it, labelled oracle
    assert "oracle" in ev["sweep_note"]


def test_bad_metric_inputs():
    with pytest.raises(DiffmiaError, match="both members and non-members"):
        metrics.auc([1, 1], [0.1, 0.2])
    with pytest.raises(DiffmiaError, match="NaN"):
        metrics.auc([1, 0], [np.nan, 0.2])
    with pytest.raises(DiffmiaError, match="labels"):
        metrics.auc([1, 0, 1], [0.1, 0.2])
