"""Sample quality (diffmia/quality.py): the shipped feature network, the unbiased KID, and the KID of generated
images ordering real < blurred < noise and memorised < untrained, deterministically."""

import json

import numpy as np
import pytest
import torch

from diffmia import quality, quality_train
from diffmia.data import to_model_input

MAX_BYTES = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def test_set():
    from diffmia.data import load_fashion_mnist

    return load_fashion_mnist(subset="test")


@pytest.fixture(scope="module")
def real_features(test_set):
    """Features of test images 0-999 and 1000-1999 (two disjoint real samples)."""
    f = quality.features(to_model_input(test_set.images[:2000]))
    return f[:1000], f[1000:]


def test_shipped_weights_match_their_record():
    path = quality.FEATURES_FILE
    rec = json.loads(quality.record_path(path).read_text())
    assert quality.file_sha256(path) == rec["sha256"] and path.stat().st_size == rec["bytes"] <= MAX_BYTES
    assert rec["test_accuracy"] >= 0.9 and rec["command"].startswith("diffmia train-features")
    assert rec["trained_on"].startswith("fashion-mnist:train") and rec["seconds"] > 0


def test_feature_network_classifies_real_test_images(test_set):
    net = quality.load_feature_net()
    sub = test_set.subset(test_set.ids[-200:])
    assert not net.training and quality_train.accuracy(net, sub) >= 0.8
    assert quality.features(to_model_input(sub.images[:3]), net).shape == (3, 128)


def test_kid_is_the_unbiased_mmd2_with_the_cubic_kernel():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 4)), rng.normal(0.5, 1.0, size=(6, 4))

    def k(a, b):
        return (a @ b / 4 + 1) ** 3

    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m ** 2
    assert quality.mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)
    mean, std = quality.kid(x, y, subsets=3, subset_size=6)          # every subset is the whole set, shuffled
    assert mean == pytest.approx(xx + yy - 2 * xy, rel=1e-12) and std == pytest.approx(0, abs=1e-12)
    mean, std = quality.kid(x, y, subsets=10, subset_size=4)
    assert std > 0 and mean != pytest.approx(xx + yy - 2 * xy)


def test_kid_orders_real_blurred_and_noise(real_features, test_set):
    from torchvision.transforms.v2.functional import gaussian_blur

    a, b = real_features
    other = to_model_input(test_set.images[1000:2000])
    blurred = quality.features(gaussian_blur(other, kernel_size=[5, 5], sigma=[1.0, 1.0]))
    noise = quality.features(torch.rand(1000, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    kid_real, std_real = quality.kid(a, b, subsets=20, subset_size=500)
    kid_blur, _ = quality.kid(a, blurred, subsets=20, subset_size=500)
    kid_noise, _ = quality.kid(a, noise, subsets=20, subset_size=500)
    assert abs(kid_real) < 3 * std_real < kid_blur / 10         # measured: 0.16 +- 1.0, blurred 56, noise 157
    assert 2 * kid_blur < kid_noise
    assert quality.frechet_distance(a, b) < quality.frechet_distance(a, blurred) < quality.frechet_distance(a, noise)


def test_memorised_target_generates_better_images_than_an_untrained_one(memorised_target, untrained_target,
                                                                     memorised_dir):
    from diffmia.targets import TargetFolder

    sched = TargetFolder(memorised_dir).scheduler_config()
    kw = dict(n=64, steps=10, seed=0, device="cpu", subsets=20)
    mem = quality.quality_of_unet(memorised_target.unet, sched, **kw)
    untrained = quality.quality_of_unet(untrained_target.unet, sched, **kw)
    assert mem["n"] == 64 and mem["kid_subset_size"] == 64 and mem["n_reference"] == 10000
    # measured with generation seeds 0-3 (and untrained inits 0-3): memorised 94-107, untrained 150-221, each
    # +- 12-19 over reference subsets (the same subsets for both: the gap is steadier than either)
    assert untrained["kid_mean"] - mem["kid_mean"] > 2 * max(mem["kid_std"], untrained["kid_std"])
    assert mem["kid_mean"] < 0.75 * untrained["kid_mean"]


def test_sample_quality_is_seeded(memorised_dir):
    kw = dict(n=16, steps=4, device="cpu", subsets=5)
    a, b = (quality.sample_quality(memorised_dir, seed=0, **kw) for _ in range(2))
    c = quality.sample_quality(memorised_dir, seed=1, **kw)
    same = ("kid_mean", "kid_std", "fid_style")
    assert {k: a[k] for k in same} == {k: b[k] for k in same}
    assert a["kid_mean"] != c["kid_mean"]
    assert a["feature_network_sha256"] == quality.file_sha256(quality.FEATURES_FILE) and a["steps"] == 4


def test_generated_images_and_reference_set(untrained_target, memorised_dir):
    from diffmia.targets import TargetFolder

    x = quality.generate(untrained_target.unet, TargetFolder(memorised_dir).scheduler_config(), n=3, steps=2)
    assert x.shape == (3, 1, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert len(quality.reference_features(exclude_ids=np.arange(100, 150))) == 10000 - 50
    with pytest.raises(Exception, match="1 x 32 x 32"):
        quality.quality_of_images(torch.zeros(4, 3, 32, 32))


def test_training_record_and_summary_hold_the_quality(tmp_path, capsys):
    from diffmia.cli import main

    args = ["--steps", "2", "--n-members", "8", "--n-nonmembers", "8", "--channels", "8,16", "--norm-num-groups",
            "4", "--batch-size", "4", "--warmup-steps", "1", "--sample-grid", "0", "--device", "cpu", "--threads",
            "1", "--quiet"]
    assert main(["train", "--out", str(tmp_path / "q"), "--quality-samples", "8", *args]) == 0
    q = json.loads((tmp_path / "q" / "training.json").read_text())["quality"]
    assert q["n"] == 8 and q["steps"] == quality.QUALITY_STEPS and q["kid_mean"] > 0
    assert f"KID {q['kid_mean']:.4f}" in capsys.readouterr().out
    assert main(["train", "--out", str(tmp_path / "off"), "--quality-samples", "0", *args]) == 0
    assert json.loads((tmp_path / "off" / "training.json").read_text())["quality"] is None
    assert "KID" not in capsys.readouterr().out
    assert main(["train", "--out", str(tmp_path / "bad"), "--quality-samples", "1", *args]) == 2
