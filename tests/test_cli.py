"""The command line end to end (train -> attack -> metrics -> report) and its one-line errors."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from diffmia.cli import main, parse_params
from diffmia.errors import DiffmiaError


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "diffmia", *args], capture_output=True, text=True, timeout=600)


def test_train_then_attack_then_report(tmp_path, capsys):
    tgt, run = tmp_path / "target", tmp_path / "run"
    assert main(["train", "--out", str(tgt), "--steps", "30", "--n-members", "16", "--n-nonmembers", "120",
                 "--channels", "8,16", "--norm-num-groups", "4", "--batch-size", "8", "--sample-grid", "4",
                 "--sample-steps", "4", "--quality-samples", "0", "--device", "cpu", "--quiet"]) == 0
    assert (tgt / "training.json").exists()
    assert main(["attack", "--target", str(tgt), "--attacks", "loss", "--param", "loss.timesteps=50,200",
                 "--out", str(run), "--device", "cpu", "--n-boot", "50", "--chunk-size", "40", "--quiet"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    r = m["attacks"]["loss"]
    for key in ("auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "asr_oracle", "queries_per_sample", "seconds",
                "n_members", "n_nonmembers"):
        assert key in r, key
    assert r["n_members"] == 8 and r["n_nonmembers"] == 60 and r["measured_queries_per_sample"] == 2
    assert r["tpr_at_1pct_fpr"] is None                       # 60 test non-members: not resolvable
    assert set(r["sweep"]) == {"loss", "loss[t=50]", "loss[t=200]"}
    assert (run / "report.md").read_text().startswith("# Membership-inference audit")
    assert (run / "roc.png").exists() and (run / "roc_loglog.png").exists() and (run / "report.html").exists()
    lines = (run / "scores" / "loss.csv").read_text().splitlines()
    assert lines[0].startswith("id,is_member,calibration,loss") and len(lines) == 137
    # the numbers, not only the keys: recomputed from the per-sample CSV with scikit-learn
    rows = list(csv.DictReader(lines))
    test = [row for row in rows if row["calibration"] == "0"]
    y = [int(row["is_member"]) for row in test]
    assert r["auc"] == pytest.approx(roc_auc_score(y, [float(row[r["variant"]]) for row in test]), abs=1e-6)
    assert sum(y) == 8 and len(test) == 68
    # resume: a second run reuses every cached chunk and gives the same scores
    before = (run / "scores" / "loss.csv").read_text()
    chunks = sorted((run / "features").rglob("chunk_*.npz"))
    mtimes = [c.stat().st_mtime_ns for c in chunks]
    assert main(["attack", "--target", str(tgt), "--attacks", "loss", "--param", "loss.timesteps=50,200",
                 "--out", str(run), "--device", "cpu", "--n-boot", "50", "--chunk-size", "40", "--quiet"]) == 0
    assert [c.stat().st_mtime_ns for c in chunks] == mtimes
    assert (run / "scores" / "loss.csv").read_text() == before
    (run / "report.html").unlink()
    assert main(["report", str(run), "--n-boot", "50"]) == 0
    assert (run / "report.html").exists()                    # `diffmia report` rewrites the page too
    assert "loss" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["attack", "--target", "/nonexistent", "--out", "/tmp/x"], "target folder not found"),
    (["attack", "--target", "tests/fixtures/memorised", "--attacks", "nope", "--out", "/tmp/x"], "unknown attack 'nope'"),
    (["attack", "--target", "tests/fixtures/memorised", "--param", "loss.bogus=1", "--out", "/tmp/x"], "no parameter"),
    (["attack", "--target", "tests/fixtures/memorised", "--attacks", "pia", "--param", "pia.p=-1", "--out", "/tmp/x"],
     "pia: p must be a positive number, got -1"),
    (["attack", "--target", "tests/fixtures/memorised", "--split", "/missing.json", "--out", "/tmp/x"], "split file not found"),
    (["train", "--out", "/tmp/x", "--channels", "a,b"], "--channels must be integers"),
    (["report", "/nonexistent"], "not a run folder"),
])
def test_user_mistakes_get_one_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.strip().startswith("diffmia: error:") and message in err
    assert len(err.strip().splitlines()) == 1


def test_real_process_prints_no_traceback():
    r = run_cli("attack", "--target", "/nonexistent", "--out", "/tmp/x")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == "diffmia: error: /nonexistent: target folder not found"


def test_param_parsing():
    assert parse_params(["pia.t=100,200", "loss.seed=3", "secmi.x=none"]) == {
        "pia": {"t": (100, 200)}, "loss": {"seed": 3}, "secmi": {"x": None}}
    with pytest.raises(DiffmiaError, match="ATTACK.NAME=VALUE"):
        parse_params(["t=100"])


def test_list_and_help(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "loss" in out and "timesteps=[200]" in out
    for sub in ("train", "attack", "report", "list", "split", "convert", "demo"):
        with pytest.raises(SystemExit) as e:
            main([sub, "--help"])
        assert e.value.code == 0 and "usage: diffmia" in capsys.readouterr().out


def test_attack_on_the_memorised_fixture_reports_its_leak(tmp_path, capsys):
    """End to end on a model that memorised its members: the run must find the leak (values checked),
    the blind baseline must not, and metrics.json, the CSV and report.md must agree."""
    run = tmp_path / "run"
    assert main(["attack", "--target", "tests/fixtures/memorised", "--attacks", "pia,loss", "--param",
                 "loss.timesteps=100", "--n-nonmembers", "64", "--out", str(run), "--device", "cpu",
                 "--n-boot", "100", "--quiet"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert (m["n_members"], m["n_nonmembers"]) == (32, 64) and list(m["attacks"]) == ["pia", "loss", "blind"]
    pia, loss, blind = (m["attacks"][k] for k in ("pia", "loss", "blind"))
    assert (pia["n_members"], pia["n_nonmembers"]) == (16, 32)               # the test half
    assert pia["auc"] >= 0.85 and loss["auc"] >= 0.85                       # measured 0.97 / 0.96
    assert pia["auc_ci"][0] > 0.5 and pia["auc_ci"][0] <= pia["auc"] <= pia["auc_ci"][1]
    assert abs(blind["auc"] - 0.5) < 0.3 and blind["auc"] < pia["auc"]
    assert pia["measured_queries_per_sample"] == pia["queries_per_sample"] == 2
    assert loss["measured_queries_per_sample"] == loss["queries_per_sample"] == 1
    assert pia["tpr_at_1pct_fpr"] is None and not pia["tpr_at_1pct_fpr_resolvable"]   # 32 test non-members
    assert 0.5 < pia["calibrated"]["balanced_accuracy"] <= 1 and m["shift"]["p_value"] > 0.01
    with open(run / "scores" / "pia.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["calibration"] == "0"]
    y = np.array([int(r["is_member"]) for r in rows])
    s = np.array([float(r["pia"]) for r in rows])
    assert pia["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    report = (run / "report.md").read_text()
    assert f"| pia | white-box | pia | {pia['auc']:.3f}" in report
    assert "pia" in capsys.readouterr().out


def test_multiprocess_scoring_matches_single_process(tmp_path):
    from diffmia.run import RunConfig, run_attacks
    from diffmia.scores import Scores

    kw = dict(target="tests/fixtures/memorised", attacks=["pia"], device="cpu", chunk_size=16, n_boot=1,
              blind=False, progress=False, n_nonmembers=32)
    run_attacks(RunConfig(out=str(tmp_path / "one"), **kw))
    run_attacks(RunConfig(out=str(tmp_path / "two"), workers=2, **kw))
    a, b = (Scores.load(tmp_path / d / "scores" / "pia.npz") for d in ("one", "two"))
    assert np.array_equal(a.ids, b.ids)
    # each worker runs its own torch threads: equal up to the summation order of floats
    assert np.allclose(a.primary, b.primary, rtol=1e-4)
