"""Attacks beyond the source papers: SimA, noise aggregation, calibrated fusion, reference-model calibration
(refcal) with its reference models, and the extended evaluation split. Each: its formula, separation on the
memorised fixture, chance on the untrained one; fusion never fits on test rows; refcal's references never
hold a candidate."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diffmia import metrics, ops, protocol
from diffmia.attacks import ATTACKS, Fusion, NoiseAggregation, RefCal, SimA
from diffmia.errors import DiffmiaError

REFS = Path(__file__).parent / "fixtures" / "references"
REF_TARGET = Path(__file__).resolve().parent.parent / "targets" / "fmnist-ddpm"


# ----------------------------------------------------------------------------- SimA
def test_sima_is_minus_the_fourth_power_of_the_noise_predicted_on_the_clean_image(memorised_target, eval_set):
    x, _, ids = eval_set
    f = SimA(t=(0, 40)).features(memorised_target, x[:5], seeds=ids[:5])
    for t in (0, 40):
        want = memorised_target.eps(x[:5], t).abs().pow(4).flatten(1).double().sum(1).numpy()
        np.testing.assert_allclose(f[f"r_{t}"], want, rtol=1e-6)
    s = SimA(t=(0, 40)).scores(f)
    assert np.array_equal(s["sima"], -f["r_0"]) and np.array_equal(s["sima[t=40]"], -f["r_40"])
    memorised_target.queries = 0
    SimA(t=40).features(memorised_target, x[:5], seeds=ids[:5])
    assert memorised_target.queries == 5                     # one query per sample and t, no noise


def test_sima_separates_memorised_members_and_is_at_chance_untrained(memorised_target, untrained_target, eval_set):
    x, is_member, ids = eval_set
    mem = SimA(t=40).score(memorised_target, x, seeds=ids)
    assert metrics.auc(is_member, mem) >= 0.95
    assert abs(metrics.auc(is_member, SimA(t=40).score(untrained_target, x, seeds=ids)) - 0.5) < 0.15


# ----------------------------------------------------------------------------- noise aggregation
class ZeroModel:
    """An analytic noise predictor that always predicts 0: the errors are the injected noises themselves."""

    def __init__(self, abar):
        self.alphas_cumprod, self.num_train_timesteps, self.queries = abar, len(abar), 0

    def to_model_space(self, images, seeds=None):
        return images

    def eps(self, x_t, t, cond=None):
        self.queries += x_t.shape[0]
        return torch.zeros_like(x_t)


def test_noise_aggregation_is_the_spread_of_the_k_seeded_injections(memorised_target, eval_set):
    x, _, ids = eval_set
    model = ZeroModel(memorised_target.alphas_cumprod)
    f = NoiseAggregation(t=20, k=3, seed=2).features(model, x[:4], seeds=ids[:4])
    eps = torch.stack([ops.noise("noise_aggregation", x.shape[1:], ids[:4], seed=2, t=20, step=j)
                       for j in range(3)]).flatten(2).double()        # errors = 0 - eps_k
    np.testing.assert_allclose(f["agg_20"], eps.var(0, unbiased=True).mean(1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(f["loss_20"], eps.pow(2).sum(2).mean(0).numpy(), rtol=1e-6)
    assert model.queries == 3 * 4
    s = NoiseAggregation(t=20, k=3, seed=2).scores(f)
    assert np.array_equal(s["noise_aggregation"], -f["agg_20"])
    other = NoiseAggregation(t=20, k=3, seed=3).features(model, x[:4], seeds=ids[:4])
    assert not np.allclose(other["agg_20"], f["agg_20"])             # the seed changes the injections


def test_noise_aggregation_separates_memorised_members_and_is_at_chance_untrained(memorised_target,
                                                                                   untrained_target, eval_set):
    x, is_member, ids = eval_set
    na = NoiseAggregation()
    mem = na.scores(na.features(memorised_target, x, seeds=ids))
    assert metrics.auc(is_member, mem["noise_aggregation"]) >= 0.65
    assert metrics.auc(is_member, mem["noise_aggregation[t=20,mean-loss]"]) >= 0.9
    un = na.scores(na.features(untrained_target, x, seeds=ids))
    assert all(abs(metrics.auc(is_member, s) - 0.5) < 0.15 for s in un.values())


# ----------------------------------------------------------------------------- fusion
class NoiseAttack(ATTACKS["loss"]):
    """A component whose 'scores' are pure noise (keyed by sample id), to test that fusion learns nothing."""

    name = "noise_only"

    def _queries(self, num_train_timesteps):
        return 0

    def _features(self, target, images, cond, seeds, cache):
        rng = np.random.default_rng(list(seeds))
        return {f"n{j}": rng.normal(size=len(seeds)) for j in range(4)}

    def _scores(self, features):
        return {f"noise[{k}]": features[k] for k in features}


def test_fusion_fits_on_calibration_rows_only_and_learns_nothing_from_noise(monkeypatch):
    monkeypatch.setitem(ATTACKS, "noise_only", NoiseAttack)
    n = 2000
    is_member = np.zeros(n, bool)
    is_member[:400] = True
    calib = protocol.calibration_split(is_member, 0.5, seed=0)
    fusion = Fusion(components=("noise_only",))
    feats = fusion.combine({"noise_only": NoiseAttack().features(None, torch.zeros(n, 1, 2, 2), seeds=np.arange(n))})
    seen = []
    real_fit = Fusion._fit

    def spy(self, features, y):
        seen.append(len(next(iter(features.values()))))
        return real_fit(self, features, y)

    monkeypatch.setattr(Fusion, "_fit", spy)
    scores = protocol.attack_scores(fusion, feats, is_member, calib, folds=2, seed=0)
    assert seen[0] == calib.sum() and all(k < calib.sum() for k in seen[1:]) and len(seen) == 3
    for s in scores.values():
        assert abs(metrics.auc(is_member[calib], s[calib]) - 0.5) < 0.06
        assert abs(metrics.auc(is_member[~calib], s[~calib]) - 0.5) < 0.06


def test_fusion_columns_are_the_components_score_variants(memorised_target, eval_set):
    x, is_member, ids = eval_set
    fusion = Fusion(components=("sima", "pia"), component_params={"sima": {"t": (20, 40)}, "pia": {"t": 50}})
    memorised_target.queries = 0
    f = fusion.features(memorised_target, x, seeds=ids)
    assert memorised_target.queries == fusion.queries_per_sample() * len(x) == (2 + 2) * len(x)
    assert sorted(f) == ["pia|pia", "sima|sima", "sima|sima[t=40]"]   # duplicates of the primary dropped
    np.testing.assert_allclose(f["sima|sima[t=40]"], SimA(t=40).score(memorised_target, x, seeds=ids))
    fusion.fit(f, is_member)
    share = fusion.component_weights()
    assert set(share) == {"sima", "pia"} and abs(sum(share.values()) - 1) < 1e-9
    assert metrics.auc(is_member, fusion.scores(f)["fusion"]) >= 0.9


def test_fusion_refuses_learned_or_unknown_components():
    with pytest.raises(DiffmiaError, match="not learned"):
        Fusion(components=("secmi_nns",)).queries_per_sample()
    with pytest.raises(DiffmiaError, match="unknown component"):
        Fusion(components=("nope",)).queries_per_sample()


def test_fusion_in_a_run_reuses_the_components_chunks(tmp_path, chunk_calls):
    """The components ran in the same run: fusion makes no model call of its own, and its reported cost is
    the components' (counted) cost."""
    from diffmia.run import RunConfig, run_attacks

    calls = chunk_calls
    memorised = Path(__file__).parent / "fixtures" / "memorised"
    cfg = RunConfig(target=str(memorised), out=str(tmp_path / "run"), attacks=["sima", "pia", "fusion"],
                    params={"sima": {"t": (20, 40)}, "fusion": {"components": ("sima", "pia")}},
                    n_nonmembers=32, device="cpu", n_boot=50, blind=False, progress=False)
    report = run_attacks(cfg)
    assert sorted(calls) == ["pia", "sima"]                  # one chunk each (64 samples), none for fusion
    r = report["attacks"]["fusion"]
    assert r["queries_per_sample"] == 2 + 2 == r["measured_queries_per_sample"]
    assert set(r["component_weights"]) == {"sima", "pia"}
    assert "## What carries fusion's weight" in (tmp_path / "run" / "report.md").read_text()
    assert r["params"]["component_params"] == {"sima": {"t": (20, 40)}}   # the run's --param was shared
    assert r["auc"] >= 0.9


# ----------------------------------------------------------------------------- refcal
def test_refcal_is_the_targets_log_error_minus_the_references_mean(memorised_target, eval_set):
    from diffmia.references import finished_references

    x, _, ids = eval_set
    rc = RefCal(references=str(REFS), base="sima", component_params={"sima": {"t": 40}})
    memorised_target.queries = 0
    f = rc.features(memorised_target, x[:6], seeds=ids[:6], cache={})
    assert memorised_target.queries == 6                     # only the base attack's queries hit the target
    refs = finished_references(REFS)
    assert len(refs) == 2
    from diffmia.targets import DiffusersTarget

    r = [SimA(t=40).score(DiffusersTarget.from_pretrained(p, device="cpu"), x[:6], seeds=ids[:6]) for p in refs]
    t = SimA(t=40).score(memorised_target, x[:6], seeds=ids[:6])
    want = -np.log(-t) + np.mean([np.log(-v) for v in r], axis=0)
    np.testing.assert_allclose(rc.scores(f)["refcal"], want, rtol=1e-6)
    sd = np.std([-np.log(-v) for v in r], axis=0, ddof=1)
    np.testing.assert_allclose(rc.scores(f)["refcal[sima,per-sample]"], want / sd, rtol=1e-6)


def test_refcal_separates_memorised_members_and_is_at_chance_untrained(memorised_target, untrained_target,
                                                                        eval_set):
    x, is_member, ids = eval_set
    rc = RefCal(references=str(REFS), base="sima", component_params={"sima": {"t": 40}})
    assert not rc.learned
    assert metrics.auc(is_member, rc.score(memorised_target, x, seeds=ids)) >= 0.95
    assert abs(metrics.auc(is_member, rc.score(untrained_target, x, seeds=ids)) - 0.5) < 0.15


def test_refcal_without_references_is_a_one_line_error(tmp_path):
    from diffmia.cli import main

    with pytest.raises(DiffmiaError, match="diffmia train-references"):
        RefCal().features(None, torch.zeros(1, 1, 32, 32))
    with pytest.raises(DiffmiaError, match="no finished reference model"):
        RefCal(references=str(tmp_path)).reference_folders()
    memorised = Path(__file__).parent / "fixtures" / "memorised"
    assert main(["attack", "--target", str(memorised), "--attacks", "refcal", "--out", str(tmp_path / "r"),
                 "--quiet"]) == 2
    assert not (tmp_path / "r" / "features").exists()       # refused before any work


# ----------------------------------------------------------------------------- reference models
def test_committed_reference_fixtures_follow_the_targets_recipe_without_its_candidates():
    from diffmia.data import MembershipSplit

    memorised = Path(__file__).parent / "fixtures" / "memorised"
    recipe = json.loads((memorised / "training.json").read_text())["config"]
    candidates = MembershipSplit.load(memorised / "split.json").ids
    record = json.loads((REFS / "references.json").read_text())
    assert record["k"] == 2 and record["excluded_candidates"]["n"] == len(candidates)
    for i in range(2):
        ref = REFS / f"ref-{i}"
        cfg = json.loads((ref / "training.json").read_text())["config"]
        same = {k for k in recipe if k not in ("split", "seed", "split_seed", "sample_grid", "device", "threads")}
        assert {k: cfg[k] for k in same} == {k: recipe[k] for k in same}
        assert cfg["seed"] == recipe["seed"] + 1000 + i
        split = MembershipSplit.load(ref / "split.json")
        assert len(split.members) == 32 and not np.intersect1d(split.ids, candidates).size


def test_train_references_resumes_and_keeps_candidates_out(tmp_path, fmnist):
    """A pool of 64 images: the target's split and an extended split hold 40 of them, so a reference model
    (8 members + 16 held-out images) can only be drawn from the other 24: any candidate that leaked in would
    show."""
    from diffmia.data import MembershipSplit
    from diffmia.references import extend_split, finished_references, train_references
    from diffmia.data import load_dataset
    from diffmia.train import TrainConfig, train

    pool = tmp_path / "pool.npz"
    np.savez(pool, images=fmnist.images[:64])
    cfg = TrainConfig(data=str(pool), steps=4, n_members=8, n_nonmembers=8, channels=(8, 16), norm_num_groups=4,
                      batch_size=4, warmup_steps=1, checkpoint_every=2, sample_grid=0, device="cpu", threads=1)
    target = train(cfg, tmp_path / "t", progress=False)
    extend_split(MembershipSplit.load(target / "split.json"), load_dataset(str(pool)), 32).save(target / "split_more.json")
    train_references(target, 2, tmp_path / "refs", device="cpu", progress=False, max_steps_this_run=5)
    assert len(list((tmp_path / "refs").glob("ref-*/training.json"))) == 1     # stopped inside ref-1
    train_references(target, 2, tmp_path / "refs", device="cpu", progress=False)
    refs = finished_references(tmp_path / "refs")
    assert [p.name for p in refs] == ["ref-0", "ref-1"]
    cand = MembershipSplit.load(target / "split_more.json").ids
    assert len(cand) == 40
    used = [MembershipSplit.load(p / "split.json") for p in refs]
    for u in used:
        assert len(u.members) == 8 and not np.intersect1d(u.ids, cand).size
    assert not np.array_equal(np.sort(used[0].members), np.sort(used[1].members))   # different draws
    extend_split(MembershipSplit.load(target / "split.json"), load_dataset(str(pool)), 50).save(target / "split_all.json")
    with pytest.raises(DiffmiaError, match="has 6 images outside the target's candidates; a reference model needs 24"):
        train_references(target, 1, tmp_path / "refs2", device="cpu", progress=False)


# ----------------------------------------------------------------------------- the extended split
def test_extend_split_keeps_members_and_old_nonmembers(fmnist):
    from diffmia.data import MembershipSplit
    from diffmia.references import extend_split

    split = MembershipSplit.random(fmnist, 10, 20, seed=3)
    ext = extend_split(split, fmnist, 500, seed=0)
    assert np.array_equal(ext.members, split.members) and np.array_equal(ext.nonmembers[:20], split.nonmembers)
    assert len(ext.nonmembers) == 500 and len(np.unique(ext.ids)) == 510
    assert np.array_equal(ext.nonmembers, extend_split(split, fmnist, 500, seed=0).nonmembers)
    with pytest.raises(DiffmiaError, match="only 59970 images outside the split"):
        extend_split(split, fmnist, 60_000)
    with pytest.raises(DiffmiaError, match="already has 20"):
        extend_split(split, fmnist, 5)


def test_the_reference_targets_extended_split_resolves_low_fpr(fmnist):
    from diffmia.data import MembershipSplit

    old = MembershipSplit.load(REF_TARGET / "split.json")
    ext = MembershipSplit.load(REF_TARGET / "split_16k.json")
    assert np.array_equal(ext.members, old.members) and np.array_equal(ext.nonmembers[:2048], old.nonmembers)
    assert len(ext.nonmembers) == 16384                      # test half: 8,192 -> 0.1% FPR = 8 false positives
    ext.select(fmnist)                                       # every image matches its recorded SHA-256


def test_cli_extend_split_and_train_references_refusals(tmp_path, sd_dir, capsys):
    from diffmia.cli import main
    from diffmia.data import MembershipSplit

    memorised = Path(__file__).parent / "fixtures" / "memorised"
    out = tmp_path / "more.json"
    assert main(["split", "--extend", str(memorised / "split.json"), "--n-nonmembers", "200", "--out", str(out)]) == 0
    ext = MembershipSplit.load(out)
    assert len(ext.members) == 32 and len(ext.nonmembers) == 200
    assert main(["split", "--extend", str(memorised / "split.json"), "--out", str(out)]) == 2
    assert "--extend needs --n-nonmembers" in capsys.readouterr().err
    assert main(["train-references", "--target", str(sd_dir), "--k", "1", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("diffmia: error:") and err.count("\n") == 1
    assert main(["train-references", "--target", str(memorised), "--k", "0", "--out", str(tmp_path / "r")]) == 2
    assert "--k must be a positive number" in capsys.readouterr().err


def test_refcal_refuses_reference_models_of_another_shape(tmp_path, memorised_target, eval_set):
    import shutil

    x, _, ids = eval_set
    ref = tmp_path / "ref-0"
    shutil.copytree(REFS / "ref-0", ref, ignore=shutil.ignore_patterns("checkpoint*"))
    cfg = json.loads((ref / "unet" / "config.json").read_text())
    cfg["sample_size"] = 16                                    # a model made for 16 x 16 images
    (ref / "unet" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DiffmiaError, match=r"works on \(1, 16, 16\) inputs, the target on \(1, 32, 32\)"):
        RefCal(references=str(tmp_path), component_params={"sima": {"t": 20}}).features(
            memorised_target, x[:2], seeds=ids[:2], cache={})


def test_demo_adds_refcal_only_when_reference_models_are_there(tmp_path, monkeypatch, capsys):
    import shutil

    from diffmia import demo
    from diffmia.targets import TargetFolder

    monkeypatch.setattr(demo, "DEMO_REFERENCES", tmp_path)
    folder = TargetFolder(REF_TARGET)
    attacks, params = demo.demo_attacks(folder, str(REF_TARGET))
    assert "refcal" not in attacks and {"sima", "noise_aggregation", "fusion"} <= set(attacks)
    assert "refcal left out" in capsys.readouterr().out
    shutil.copytree(REFS / "ref-0", tmp_path / "fmnist-ddpm" / "ref-0", ignore=shutil.ignore_patterns("checkpoint*"))
    attacks, params = demo.demo_attacks(folder, str(REF_TARGET))
    assert attacks[-1] == "refcal" and params["refcal"] == {"references": str(tmp_path / "fmnist-ddpm")}
