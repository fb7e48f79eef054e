"""The empirical-epsilon audit: a 95% lower bound on epsilon from a membership test's rates, thresholds chosen
on the calibration half, rates and Clopper-Pearson bounds on the test half (metrics.empirical_epsilon via
protocol.evaluate), delta from a DP target's training.json, and the warning when a bound beats the accountant."""

import json
import math
import shutil

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import binom

from diffmia import metrics, protocol
from diffmia.run import RunConfig, rerun_report, run_attacks


def cp_by_hand(k, n, a):
    """One-sided Clopper-Pearson bounds from the binomial tails: the lower p with P(X >= k) = a, the upper one
    with P(X <= k) = a."""
    lo = 0.0 if k == 0 else brentq(lambda p: binom.sf(k - 1, n, p) - a, 1e-12, 1 - 1e-12)
    hi = 1.0 if k == n else brentq(lambda p: binom.cdf(k, n, p) - a, 1e-12, 1 - 1e-12)
    return lo, hi


def best_possible(n_pos, n_neg, k_thresholds, delta=metrics.DEFAULT_DELTA):
    """The bound of a perfect test (every member flagged, no non-member) with K thresholds (Bonferroni)."""
    a = 0.05 / (2 * k_thresholds)
    tpr_lo, fpr_hi = a ** (1 / n_pos), 1 - a ** (1 / n_neg)
    return max(math.log((tpr_lo - delta) / fpr_hi), math.log((1 - fpr_hi - delta) / (1 - tpr_lo)))


def halves(n_per_class, seed=0):
    y = np.r_[np.ones(n_per_class, bool), np.zeros(n_per_class, bool)]
    return y, protocol.calibration_split(y, 0.5, seed)


def test_formula_matches_a_hand_computation():
    a = 0.025                                          # 95% split over the two one-sided bounds
    lo, _ = cp_by_hand(45, 50, a)
    _, hi = cp_by_hand(2, 50, a)
    expected = math.log((lo - 1e-5) / hi)              # the TPR/FPR inequality wins here
    assert expected > math.log((1 - hi - 1e-5) / (1 - lo))
    assert metrics.epsilon_lower_bound(45, 50, 2, 50) == pytest.approx(expected, rel=1e-7)
    assert expected == pytest.approx(1.7407, abs=1e-4)
    # all members flagged, half of the non-members: the TNR/FNR inequality wins
    lo, _ = cp_by_hand(50, 50, a)
    _, hi = cp_by_hand(25, 50, a)
    expected = math.log((1 - hi - 1e-5) / (1 - lo))
    assert expected > math.log((lo - 1e-5) / hi)
    assert metrics.epsilon_lower_bound(50, 50, 25, 50) == pytest.approx(expected, rel=1e-7)
    assert metrics.epsilon_lower_bound(5, 50, 5, 50) == 0      # both logs negative: no evidence, 0
    # the same counts from scores: one threshold is tested at 95%, two distinct ones at 97.5% each
    y = np.r_[np.ones(50, bool), np.zeros(50, bool)]
    s = np.r_[np.ones(45), np.zeros(5), np.ones(2), np.zeros(48)]
    one = metrics.empirical_epsilon(y, s, {"t": 0.5})
    assert one["lower_bound"] == pytest.approx(metrics.epsilon_lower_bound(45, 50, 2, 50), rel=1e-12)
    assert (one["tpr"], one["fpr"], one["inequality"], one["n_thresholds"]) == (0.9, 0.04, "tpr/fpr", 1)
    two = metrics.empirical_epsilon(y, s, {"t": 0.5, "u": 2.0, "never": np.inf})   # inf flags nobody: not counted
    assert two["n_thresholds"] == 2 and two["threshold_rule"] == "t" and two["candidates"]["u"] == 0
    assert two["lower_bound"] == pytest.approx(metrics.epsilon_lower_bound(45, 50, 2, 50, confidence=0.975))


def test_delta_above_the_tpr_lower_bound_gives_zero():
    # 5% of 1000 members flagged, none of 10000 non-members: a strong bound when delta is 0 ...
    assert metrics.epsilon_lower_bound(50, 1000, 0, 10000, delta=0) > 4
    lo, _ = cp_by_hand(50, 1000, 0.025)
    assert lo < 0.05
    # ... and none when delta exceeds TPR_lo (the TNR/FNR side gives nothing either)
    assert metrics.epsilon_lower_bound(50, 1000, 0, 10000, delta=0.05) == 0


def test_perfectly_separated_scores_reach_what_clopper_pearson_allows():
    y, calib = halves(2000)                           # 1000 members and 1000 non-members in each half
    ev = protocol.evaluate({"s": y.astype(float)}, y, calib, n_boot=0)
    e = ev["empirical_epsilon"]
    # both calibrated rules pick threshold 1, the calibration-bound rule 0.5 (midway): two distinct thresholds
    assert e["n_thresholds"] == 2 and (e["tpr"], e["fpr"]) == (1.0, 0.0) and e["delta"] == 1e-5
    assert e["lower_bound"] == pytest.approx(best_possible(1000, 1000, 2), rel=1e-9)
    assert e["lower_bound"] > 5
    # continuous, well-separated scores: the calibration-bound rule places its threshold midway in the gap
    # between the calibration groups (the balanced-accuracy one sits on the lowest calibration member), so it
    # flags every test member and no test non-member
    rng = np.random.default_rng(0)
    s = np.where(y, rng.normal(20, 1, len(y)), rng.normal(0, 1, len(y)))
    gap = (s[calib & ~y].max(), s[calib & y].min())
    assert metrics.threshold_max_epsilon(y[calib], s[calib]) == pytest.approx(sum(gap) / 2)
    e = protocol.evaluate({"s": s}, y, calib, n_boot=0)["empirical_epsilon"]
    assert e["candidates"]["max_bound_on_calibration"] == e["lower_bound"] and (e["tpr"], e["fpr"]) == (1.0, 0.0)
    assert e["n_thresholds"] == 3
    assert e["lower_bound"] == pytest.approx(best_possible(1000, 1000, 3), rel=1e-9)


def test_random_scores_give_no_bound_in_at_least_95_percent_of_seeds():
    y, _ = halves(100)
    bounds = []
    for seed in range(200):
        calib = protocol.calibration_split(y, 0.5, seed)
        s = np.random.default_rng(seed).normal(size=len(y))
        bounds.append(protocol.evaluate({"s": s}, y, calib, n_boot=0)["empirical_epsilon"]["lower_bound"])
    assert min(bounds) == 0                           # never negative: no evidence is a bound of 0
    assert sum(b > 0 for b in bounds) <= 10           # at most 5% of 200 (measured: 0; CP is conservative)


def test_thresholds_come_from_the_calibration_rows_only():
    y, calib = halves(100)
    rng = np.random.default_rng(1)
    s = np.where(y, rng.normal(1, 1, len(y)), rng.normal(0, 1, len(y)))
    e = protocol.evaluate({"s": s}, y, calib, n_boot=0)["empirical_epsilon"]
    other_test = s.copy()
    other_test[~calib] = rng.normal(size=(~calib).sum())          # new test rows: the same thresholds
    f = protocol.evaluate({"s": other_test}, y, calib, n_boot=0)["empirical_epsilon"]
    assert f["thresholds"] == e["thresholds"] and list(e["thresholds"]) == list(protocol.EPSILON_RULES)
    other_calib = s.copy()
    other_calib[calib] = rng.normal(size=calib.sum())             # new calibration rows: other thresholds
    g = protocol.evaluate({"s": other_calib}, y, calib, n_boot=0)["empirical_epsilon"]
    assert all(g["thresholds"][k] != e["thresholds"][k] for k in e["thresholds"])


def test_warning_only_when_a_bound_exceeds_the_accountant():
    rep = {"dp": {"epsilon": 1.0, "delta": 1e-6},
           "attacks": {"pia": {"empirical_epsilon": {"lower_bound": 1.2, "delta": 1e-6}},
                       "loss": {"empirical_epsilon": {"lower_bound": 0.9, "delta": 1e-6}}}}
    w = protocol.dp_audit_warnings(rep)
    assert len(w) == 1 and "pia" in w[0] and "a bug in training or accounting" in w[0]
    rep["dp"]["epsilon"] = 1.2
    assert protocol.dp_audit_warnings(rep) == []                  # equal is allowed
    assert protocol.dp_audit_warnings({**rep, "dp": None}) == []  # no DP record, nothing to compare
    assert protocol.audit_delta({"epsilon": 1.0, "delta": 1e-6})[0] == 1e-6
    assert protocol.audit_delta(None)[0] == protocol.audit_delta({"epsilon": 1.0})[0] == metrics.DEFAULT_DELTA


# ----------------------------------------------------------------------------- real runs
# The fixture split has 32 members and 96 non-members: all of them, so the test half has 16 members and 48
# non-members. With 16 / 16 (the usual --n-nonmembers 32) even a perfect attack could show at most
# best_possible(16, 16, 3) = 1.05 with three thresholds; with 16 / 48 it can show 2.06 (2.17 with two).
# SIMA at t=20 (one query per sample; the timestep its default sweep picks on calibration) separates the
# fixture's test half perfectly, so its bound is that maximum; PIA (AUC 0.965, TPR 1 at FPR 4/48) shows 1.18.
KW = dict(attacks=["sima"], params={"sima": {"t": 20}}, device="cpu", n_boot=1, blind=False, progress=False)


@pytest.fixture(scope="module")
def memorised_run(tmp_path_factory, memorised_dir):
    out = tmp_path_factory.mktemp("eps-memorised")
    return out, run_attacks(RunConfig(target=str(memorised_dir), out=str(out), **KW))


def test_memorised_target_gives_a_bound_well_above_one(memorised_run):
    out, report = memorised_run
    e = report["attacks"]["sima"]["empirical_epsilon"]
    assert (e["n_members"], e["n_nonmembers"]) == (16, 48)
    assert best_possible(16, 48, 3) == pytest.approx(2.06, abs=0.01) and best_possible(16, 16, 3) < 1.1
    # both calibrated rules give the same threshold here: two distinct thresholds, 97.5% each
    assert (e["tpr"], e["fpr"], e["n_thresholds"]) == (1.0, 0.0, 2)
    assert e["lower_bound"] == pytest.approx(best_possible(16, 48, 2), rel=1e-9) and e["lower_bound"] > 2
    assert e["delta"] == 1e-5 and "no DP training record" in report["epsilon_audit"]["delta_source"]
    assert "dp" not in report and report["warnings"] == []
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert "## Empirical epsilon (a lower bound)" in md and f"| sima | {e['lower_bound']:.2f} |" in md
    assert f"<td>sima</td><td>{e['lower_bound']:.2f}</td>" in page and "accountant" not in page


def test_untrained_target_gives_no_bound(tmp_path, memorised_dir):
    import torch
    from diffusers import UNet2DModel

    target = tmp_path / "untrained"
    shutil.copytree(memorised_dir, target)
    torch.manual_seed(0)
    UNet2DModel.from_config(UNet2DModel.load_config(memorised_dir / "unet")).save_pretrained(target / "unet")
    report = run_attacks(RunConfig(target=str(target), out=str(tmp_path / "run"), **KW))
    e = report["attacks"]["sima"]["empirical_epsilon"]
    assert e["n_nonmembers"] == 48 and e["lower_bound"] == 0 and e["candidates"] == dict.fromkeys(e["candidates"], 0)


def test_dp_target_whose_bound_beats_its_accountant_is_flagged_at_the_top(memorised_run, tmp_path, memorised_dir):
    first, _ = memorised_run
    target, out = tmp_path / "dp-target", tmp_path / "run"
    shutil.copytree(memorised_dir, target)
    record = json.loads((target / "training.json").read_text())
    record["dp"] = {"epsilon": 0.5, "delta": 1e-6, "noise_multiplier": 1.1}
    (target / "training.json").write_text(json.dumps(record))
    shutil.copytree(first / "features", out / "features")      # the same weights: cached queries are reused
    report = run_attacks(RunConfig(target=str(target), out=str(out), **KW))
    e = report["attacks"]["sima"]["empirical_epsilon"]
    assert report["dp"] == record["dp"] and e["delta"] == 1e-6 and e["lower_bound"] > 0.5
    assert e["lower_bound"] == pytest.approx(best_possible(16, 48, 2, delta=1e-6), rel=1e-9)   # the record's delta
    assert "training.json" in report["epsilon_audit"]["delta_source"]
    (w,) = report["warnings"]
    assert w.startswith("DP audit: sima") and "a bug in training or accounting" in w and "0.5" in w
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert md.index("**Warning:** DP audit: sima") < md.index("| attack |")          # at the top
    assert page.index("<b>Warning:</b> DP audit: sima") < page.index("<h2>Attacks</h2>")
    assert "accountant claims epsilon = 0.5 at delta = 1e-06" in md and "<th>accountant epsilon</th>" in page
    # recomputing the report from the scores keeps one warning, with the run's delta
    again = rerun_report(out, n_boot=1)
    assert again["warnings"] == [w] and again["attacks"]["sima"]["empirical_epsilon"] == e


def test_every_attack_on_the_dp_fixture_stays_below_its_recorded_epsilon(tmp_path, dp_dir, memorised_run):
    """The acceptance check of DP training and the audit together: the committed DP-SGD fixture (epsilon ~1, same
    members and recipe as the memorised one) gives every attack a bound below its accountant's epsilon, where
    the same attack on the memorised fixture shows more than 2 (memorised_run)."""
    record = json.loads((dp_dir / "training.json").read_text())["dp"]
    attacks = ["sima", "pia", "loss", "secmi"]
    report = run_attacks(RunConfig(target=str(dp_dir), out=str(tmp_path / "run"), **{**KW, "attacks": attacks}))
    assert report["dp"]["epsilon"] == record["epsilon"] < 1.0 and report["warnings"] == []
    for a in attacks:
        e = report["attacks"][a]["empirical_epsilon"]
        assert e["delta"] == record["delta"] and e["n_nonmembers"] == 48
        assert e["lower_bound"] < record["epsilon"], a
    assert memorised_run[1]["attacks"]["sima"]["empirical_epsilon"]["lower_bound"] > 2
