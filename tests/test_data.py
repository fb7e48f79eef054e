"""Readers, preprocessing and membership splits."""

import json

import numpy as np
import pytest
from PIL import Image

from diffmia.data import (Dataset, MembershipSplit, from_model_output, load_dataset, load_fashion_mnist,
                          load_image_folder, load_npz, to_model_input)
from diffmia.errors import DataError, SplitError


def test_fashion_mnist_real_files(fmnist):
    assert fmnist.images.shape == (60000, 28, 28, 1) and fmnist.images.dtype == np.uint8
    assert set(np.unique(fmnist.labels)) == set(range(10))
    test = load_fashion_mnist(subset="test")
    assert len(test) == 10000


def test_fashion_mnist_missing_folder_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFMIA_FASHION_MNIST", str(tmp_path))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist()


def test_corrupt_idx_file(tmp_path):
    import gzip

    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        with gzip.open(tmp_path / name, "wb") as f:
            f.write(b"\x00\x00\x0d\x01garbage")
    with pytest.raises(DataError, match="unsigned-byte IDX"):
        load_fashion_mnist(tmp_path)


def test_preprocessing_pads_with_background_and_scales():
    im = np.full((2, 28, 28, 1), 255, np.uint8)
    x = to_model_input(im, 32)
    assert x.shape == (2, 1, 32, 32)
    assert x[:, :, 2:30, 2:30].eq(1).all() and x[:, :, :2].eq(-1).all() and x[:, :, :, 30:].eq(-1).all()
    back = from_model_output(x, crop=(28, 28))
    assert (back == im).all()


def test_split_seeded_disjoint_and_roundtrip(fmnist, tmp_path):
    s = MembershipSplit.random(fmnist, 100, 150, seed=3)
    assert len(s.members) == 100 and len(s.nonmembers) == 150
    assert not set(s.members) & set(s.nonmembers)
    assert (s.members == MembershipSplit.random(fmnist, 100, 150, seed=3).members).all()
    s.save(tmp_path / "s.json")
    t = MembershipSplit.load(tmp_path / "s.json")
    assert (t.members == s.members).all() and t.member_sha256 == s.member_sha256
    sub, is_member = t.select(fmnist)
    assert is_member.sum() == 100 and (sub.ids[:100] == s.members).all()
    s.save(tmp_path / "s.npz")                       # the SecMI / PIA format
    with np.load(tmp_path / "s.npz") as z:
        assert (z["mia_train_idxs"] == s.members).all() and (z["mia_eval_idxs"] == s.nonmembers).all()
    u = MembershipSplit.load(tmp_path / "s.npz")
    assert (u.nonmembers == s.nonmembers).all()


def test_split_overlap_and_hash_errors(fmnist, tmp_path):
    with pytest.raises(SplitError, match="both members and non-members"):
        MembershipSplit([1, 2, 3], [3, 4])
    imgs = np.zeros((4, 28, 28), np.uint8)
    imgs[1] = 7
    dup = Dataset(imgs, "dup")                      # ids 0, 2, 3 hold identical bytes
    with pytest.raises(SplitError, match="byte-identical"):
        MembershipSplit.for_data(dup, [0, 1], [2])
    s = MembershipSplit.random(fmnist, 10, 10, seed=0)
    d = s.to_dict()
    d["member_sha256"][0] = "0" * 64
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(SplitError, match="differ from the split's SHA-256"):
        MembershipSplit.load(tmp_path / "bad.json").select(fmnist)
    with pytest.raises(SplitError, match="not found"):
        MembershipSplit.load(tmp_path / "missing.json")
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(SplitError, match="not a diffmia split"):
        MembershipSplit.load(tmp_path / "junk.json")
    with pytest.raises(SplitError, match="cannot draw"):
        MembershipSplit.random(fmnist, 60000, 1)


def test_image_folder_with_captions_and_npz(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / f"im{i}.png")
    (tmp_path / "caps.txt").write_text("im0.png\ta shoe\nim1.png\ta bag\nim2.png\ta coat\n")
    d = load_image_folder(tmp_path, captions=tmp_path / "caps.txt")
    assert d.images.shape == (3, 8, 8, 1) and d.captions[1] == "a bag" and d.images[2].max() == 80
    np.savez(tmp_path / "arr.npz", images=d.images[..., 0])
    assert load_npz(tmp_path / "arr.npz").images.shape == (3, 8, 8, 1)
    assert len(load_dataset(str(tmp_path))) == 3
    np.savez(tmp_path / "float.npz", images=np.zeros((2, 8, 8), np.float32))
    with pytest.raises(DataError, match="uint8"):
        load_npz(tmp_path / "float.npz")
    with pytest.raises(DataError, match="unknown data"):
        load_dataset("imagenet")
    (tmp_path / "caps2.txt").write_text("im0.png\tx\n")
    with pytest.raises(DataError, match="no caption for 2 images"):
        load_image_folder(tmp_path, captions=tmp_path / "caps2.txt")
