"""The shipped reference target: complete record, verifiable split, reproducible scores, real signal."""

import json
from pathlib import Path

import numpy as np

from diffmia import metrics
from diffmia.attacks import ATTACKS
from diffmia.data import MembershipSplit, to_model_input
from diffmia.targets import DiffusersTarget

REF = Path(__file__).resolve().parent.parent / "targets" / "fmnist-ddpm"


def _subset(fmnist, n):
    split = MembershipSplit.load(REF / "split.json")
    assert len(split.members) == 256 and len(split.nonmembers) == 2048
    data, is_member = split.limit(n, n).select(fmnist)       # verifies every image's SHA-256
    return to_model_input(data.images), is_member, data.ids


def test_reference_target_record():
    rec = json.loads((REF / "training.json").read_text())
    assert rec["command"].startswith("diffmia train --out targets/fmnist-ddpm")
    assert rec["steps"] == rec["config"]["steps"] and rec["wall_seconds"] > 0
    assert rec["hardware"]["device"] and rec["versions"]["diffusers"]
    assert (REF / "samples.png").stat().st_size > 1000
    assert not list(REF.rglob("*.bin")) and list((REF / "unet").glob("*.safetensors"))


def test_same_seed_same_scores_on_reference_target(fmnist):
    x, _, ids = _subset(fmnist, 16)
    runs = []
    for _ in range(2):
        target = DiffusersTarget.from_pretrained(REF, device="cpu")      # a fresh load each time
        runs.append([ATTACKS[name]().score(target, x, seeds=ids) for name in ("loss", "secmi", "pia")])
    for a, b in zip(*runs):
        assert np.array_equal(a, b)


def test_reference_target_leaks_under_pia(fmnist):
    x, is_member, ids = _subset(fmnist, 128)
    target = DiffusersTarget.from_pretrained(REF, device="cpu")
    s = ATTACKS["pia"](t=100).score(target, x, seeds=ids)
    assert metrics.auc(is_member, s) > 0.65
