"""The shipped text-to-image reference target (targets/fmnist-sd): complete record and size, loads in plain
diffusers, reproducible scores, real signal, and the caption ablation: the true caption separates members
better than the empty one (the direction SecMI-LDM and CLiD report)."""

import csv
from pathlib import Path

import numpy as np
import pytest

from diffmia import metrics
from diffmia.attacks import ATTACKS
from diffmia.data import MembershipSplit, to_model_input
from diffmia.protocol import calibration_split
from diffmia.targets import TargetFolder
from diffmia.targets.stable_diffusion import LatentDiffusersTarget

SD = TargetFolder(Path(__file__).resolve().parent.parent / "targets" / "fmnist-sd")


@pytest.fixture(scope="module")
def subset(fmnist):
    """128 members and 128 non-members of the target's split, with their captions."""
    split = MembershipSplit.load(SD.split_path)
    assert len(split.members) == 1024 and len(split.nonmembers) == 2048
    data, is_member = split.limit(128, 128).select(fmnist)       # verifies every image's SHA-256
    with open(SD.captions_csv) as f:
        caps = {int(r["id"]): r["caption"] for r in csv.DictReader(f)}
    return to_model_input(data.images), is_member, data.ids, [caps[int(i)] for i in data.ids]


@pytest.fixture(scope="module")
def target():
    return LatentDiffusersTarget.from_pretrained(SD.path, device="cpu")


def test_record_size_and_plain_diffusers():
    from diffusers import StableDiffusionPipeline

    rec = SD.training_record()
    assert rec["command"].startswith("diffmia train-sd --out targets/fmnist-sd")
    assert rec["steps"] == rec["config"]["steps"] and rec["n_members"] == 1024 and rec["wall_seconds"] > 0
    size = sum(p.stat().st_size for p in SD.path.rglob("*") if p.is_file() and "checkpoint" not in str(p))
    assert size <= 25 * 2 ** 20, f"{size / 2 ** 20:.1f} MB"
    assert SD.samples_png.stat().st_size > 1000 and not list(SD.path.rglob("*.bin"))
    pipe = StableDiffusionPipeline.from_pretrained(SD.path)
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size


def test_same_seed_same_scores(subset):
    x, _, ids, caps = subset
    runs = []
    for _ in range(2):
        t = LatentDiffusersTarget.from_pretrained(SD.path, device="cpu")      # a fresh load each time
        runs.append([ATTACKS[n]().features(t, x[:16], cond=caps[:16], seeds=ids[:16]) for n in ("loss", "pia")])
    for a, b in zip(*runs):
        assert all(np.array_equal(a[k], b[k]) for k in a)


def _auc(target, name, x, is_member, ids, prompts, calib):
    atk = ATTACKS[name]()
    f = atk.features(target, x, cond=prompts, seeds=ids)
    if atk.learned:
        atk.fit({k: v[calib] for k, v in f.items()}, is_member[calib])
        s = next(iter(atk.scores({k: v[~calib] for k, v in f.items()}).values()))
        return metrics.auc(is_member[~calib], s)
    return metrics.auc(is_member, next(iter(atk.scores(f).values())))


def test_signal_and_caption_ablation(subset, target):
    """Measured on these 128 + 128 samples (CLiD: fit on one half, AUC on the other 64 + 64): PIA 0.903 with the
    captions vs 0.844 with the empty prompt, loss 0.799 vs 0.734, CLiD 0.655."""
    x, is_member, ids, caps = subset
    calib = calibration_split(is_member, 0.5, 0)
    res = {(n, c): _auc(target, n, x, is_member, ids, p, calib)
           for n in ("pia", "loss", "clid") for c, p in (("caption", caps), ("empty", [""] * len(caps)))
           if not (n == "clid" and c == "empty")}
    print("fmnist-sd AUCs", {k: round(v, 3) for k, v in res.items()})
    assert res["pia", "caption"] >= PIA_MIN
    assert res["loss", "caption"] > res["loss", "empty"] and res["pia", "caption"] > res["pia", "empty"]
    assert res["clid", "caption"] >= CLID_MIN


def test_clid_at_chance_on_an_untrained_model(sd_dir, fmnist):
    """The random tiny SD folder knows nothing of its 'members': CLiD stays near chance."""
    split = MembershipSplit.load(TargetFolder(sd_dir).split_path)
    data, is_member = split.select(fmnist)
    with open(TargetFolder(sd_dir).captions_csv) as f:
        caps = {int(r["id"]): r["caption"] for r in csv.DictReader(f)}
    t = LatentDiffusersTarget.from_pretrained(sd_dir, device="cpu")
    calib = calibration_split(is_member, 0.5, 0)
    a = _auc(t, "clid", to_model_input(data.images), is_member, data.ids, [caps[int(i)] for i in data.ids], calib)
    assert abs(a - 0.5) <= 0.4                      # 6 + 6 test rows: the null AUC has sd 0.17


PIA_MIN, CLID_MIN = 0.85, 0.58
