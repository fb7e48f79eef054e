"""Data and split mistakes end in one line that names the file and what is wrong with it."""

import gzip
import json
import struct

import numpy as np
import pytest

from diffmia.cli import main
from diffmia.data import MembershipSplit
from diffmia.errors import SplitError

RNG = np.random.default_rng(0)


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("diffmia: error: "), err
    return err


def _idx(path, arr):
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes())


@pytest.fixture
def pool(tmp_path):
    """An .npz pool of 20 distinct images."""
    path = tmp_path / "pool.npz"
    np.savez(path, images=RNG.integers(0, 256, (20, 8, 8), dtype=np.uint8))
    return path


# ----------------------------------------------------------------------------- data files
@pytest.mark.parametrize("present, missing", [("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                                              ("train-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz")])
def test_fashion_mnist_names_the_one_missing_file(tmp_path, capsys, present, missing):
    _idx(tmp_path / present, np.zeros((4, 28, 28) if "images" in present else (4,), np.uint8))
    err = _error(capsys, ["split", "--data", "fashion-mnist", "--data-root", str(tmp_path), "--n-members", "1",
                          "--out", str(tmp_path / "s.json")])
    kind = "labels" if "labels" in missing else "images"
    assert f"{kind} file missing: {tmp_path / missing}" in err and f"its {present} is there" in err


def test_fashion_mnist_labels_file_that_holds_images(tmp_path, capsys):
    _idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((4, 28, 28), np.uint8))
    _idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros((4, 28, 28), np.uint8))
    err = _error(capsys, ["split", "--data-root", str(tmp_path), "--n-members", "1", "--out", str(tmp_path / "s.json")])
    assert "train-labels-idx1-ubyte.gz: not a labels file" in err


@pytest.mark.parametrize("extra, says", [({"labels": np.arange(19)}, "'labels' must hold one value per image: 20 images"),
                                         ({"ids": np.arange(20) + 0.5}, "'ids' must be integers, got float64 values (first: 0.5)"),
                                         ({"ids": np.arange(20) - 1}, "id -1 is negative"),
                                         ({"ids": np.arange(20) // 2}, "some ids are listed twice")])
def test_npz_labels_and_ids_must_fit_the_images(tmp_path, capsys, extra, says):
    np.savez(tmp_path / "d.npz", images=np.zeros((20, 8, 8), np.uint8), **extra)
    err = _error(capsys, ["split", "--data", str(tmp_path / "d.npz"), "--n-members", "2",
                          "--out", str(tmp_path / "s.json")])
    assert f"{tmp_path / 'd.npz'}: {says}" in err


def test_npz_without_labels_is_accepted(tmp_path, pool, capsys):
    assert main(["split", "--data", str(pool), "--n-members", "4", "--out", str(tmp_path / "s.json")]) == 0


# ----------------------------------------------------------------------------- split files
def _split_file(tmp_path, pool, change):
    """A split of 4 + 4 images of ``pool`` with the fields ``change(split dict)`` returns replaced."""
    assert main(["split", "--data", str(pool), "--n-members", "4", "--n-nonmembers", "4",
                 "--out", str(tmp_path / "good.json")]) == 0
    d = json.loads((tmp_path / "good.json").read_text())
    d.update(change(d))
    (tmp_path / "bad.json").write_text(json.dumps(d))
    return tmp_path / "bad.json"


def _extend(tmp_path, pool, split):
    return ["split", "--data", str(pool), "--extend", str(split), "--n-nonmembers", "8", "--out", str(tmp_path / "x.json")]


def test_hash_list_of_the_wrong_length(tmp_path, pool, capsys):
    bad = _split_file(tmp_path, pool, lambda d: {"member_sha256": d["member_sha256"][:3]})
    err = _error(capsys, _extend(tmp_path, pool, bad))
    assert f"{bad}: the split lists 3 member SHA-256 hashes for 4 member ids" in err


@pytest.mark.parametrize("value, shown", [(1.5, "1.5"), ("a", '"a"'), (True, "true"), (None, "null"), ([1], "[1]")])
def test_non_integer_ids_are_refused_naming_the_first(tmp_path, pool, capsys, value, shown):
    bad = _split_file(tmp_path, pool, lambda d: {"nonmembers": d["nonmembers"][:2] + [value, "b"] + d["nonmembers"][2:]})
    err = _error(capsys, _extend(tmp_path, pool, bad))
    assert f"{bad}: non-member id {shown} is not an integer" in err


def test_whole_numbers_written_as_floats_are_ids():
    s = MembershipSplit(np.array([0.0, 1.0]), [2.0, 3])
    assert s.members.dtype == np.int64 and s.nonmembers.tolist() == [2, 3]


def test_negative_ids_are_refused(tmp_path, pool, capsys):
    bad = _split_file(tmp_path, pool, lambda d: {"members": [-3] + d["members"][1:]})
    assert f"{bad}: member id -3 is negative" in _error(capsys, _extend(tmp_path, pool, bad))
    np.savez(tmp_path / "s.npz", mia_train_idxs=np.array([0, 1.5]), mia_eval_idxs=np.array([2, 3]))
    assert "s.npz: member id 1.5 is not an integer" in _error(capsys, _extend(tmp_path, pool, tmp_path / "s.npz"))
    np.savez(tmp_path / "s.npz", mia_train_idxs=np.array([0, 1]), mia_eval_idxs=np.array([2, -1]))
    assert "s.npz: non-member id -1 is negative" in _error(capsys, _extend(tmp_path, pool, tmp_path / "s.npz"))


# ----------------------------------------------------------------------------- limit
def test_limit_refuses_negative_zero_and_too_many():
    s = MembershipSplit([0, 1, 2, 3], [4, 5, 6])
    assert (s.limit(2, None).members == [0, 1]).all() and (s.limit(4, 3).nonmembers == [4, 5, 6]).all()
    for n_mem, n_non, says in ((5, None, "cannot use 5 members: the split has 4 members"),
                               (-1, None, "cannot use -1 members: the split has 4 members"),
                               (0, None, "cannot use 0 members"),
                               (None, 4, "cannot use 4 non-members: the split has 3 non-members"),
                               (None, -2, "cannot use -2 non-members: the split has 3 non-members")):
        with pytest.raises(SplitError, match=says):
            s.limit(n_mem, n_non)


def test_attack_with_more_members_than_the_split(tmp_path, memorised_dir, capsys):
    err = _error(capsys, ["attack", "--target", str(memorised_dir), "--n-members", "50", "--out", str(tmp_path / "r"),
                          "--device", "cpu", "--quiet"])
    assert "split.json: cannot use 50 members: the split has 32 members (and 96 non-members)" in err
    assert not (tmp_path / "r" / "run.json").exists()


def test_demo_sizes_are_caps_on_a_smaller_split(tmp_path, memorised_dir, monkeypatch):
    """The demo asks for 256 + 512 samples; a target whose split is smaller is used whole, not refused."""
    from diffmia import run

    seen = {}

    def fake_run(cfg, command=None):
        seen["sizes"] = (cfg.n_members, cfg.n_nonmembers)
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "run_attacks", fake_run)
    assert main(["demo", "--target", str(memorised_dir), "--no-sd", "--out", str(tmp_path / "d")]) == 130
    assert seen["sizes"] == (32, 96)
