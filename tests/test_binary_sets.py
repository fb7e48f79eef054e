"""CIFAR-10/100 and STL-10 from their binary versions (tiny archives built here in the real layout), and
split files written in the SecMI/PIA format."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from diffmia.cli import main
from diffmia.data import MembershipSplit, load_dataset, to_model_input
from diffmia.errors import DataError


def _tar(path, files: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def _cifar_records(images: np.ndarray, labels: np.ndarray, coarse: bool = False) -> bytes:
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)          # R, G, B planes
    head = [labels[:, None] // 10] if coarse else []
    return np.concatenate(head + [labels[:, None], planes], 1).astype(np.uint8).tobytes()


@pytest.fixture
def cifar10(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 12)
    files = {f"cifar-10-batches-bin/data_batch_{i}.bin": _cifar_records(imgs[2 * (i - 1):2 * i], labels[2 * (i - 1):2 * i])
             for i in range(1, 6)}
    files["cifar-10-batches-bin/test_batch.bin"] = _cifar_records(imgs[10:], labels[10:])
    return _tar(tmp_path / "cifar-10-binary.tar.gz", files), imgs, labels


def test_cifar10_binary_archive_and_folder(cifar10, tmp_path):
    path, imgs, labels = cifar10
    train = load_dataset("cifar10", str(path))
    assert train.name == "cifar10-train" and train.images.shape == (10, 32, 32, 3)
    np.testing.assert_array_equal(train.images, imgs[:10])                 # batches 1..5 in order
    np.testing.assert_array_equal(train.labels, labels[:10])
    np.testing.assert_array_equal(train.ids, np.arange(10))
    test = load_dataset("cifar10:test", str(path))
    np.testing.assert_array_equal(test.images, imgs[10:])
    with tarfile.open(path) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    folder = load_dataset("cifar10", str(tmp_path / "x" / "cifar-10-batches-bin"))
    np.testing.assert_array_equal(folder.images, imgs[:10])
    assert to_model_input(train.images).shape == (10, 3, 32, 32)


def test_cifar100_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    fine = np.array([3, 97, 50, 0, 12])
    path = _tar(tmp_path / "cifar-100-binary.tar.gz",
                {"cifar-100-binary/train.bin": _cifar_records(imgs, fine, coarse=True),
                 "cifar-100-binary/test.bin": _cifar_records(imgs[:1], fine[:1], coarse=True)})
    d = load_dataset("cifar100", str(path))
    np.testing.assert_array_equal(d.images, imgs)
    np.testing.assert_array_equal(d.labels, fine)


def test_stl10_column_major_and_resized(tmp_path):
    rng = np.random.default_rng(2)
    imgs = rng.integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    imgs[0, :, :48] = 255                                     # left half white: orientation is checked
    stored = imgs.transpose(0, 3, 2, 1).tobytes()             # channel, then column by column
    unl = rng.integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)
    path = _tar(tmp_path / "stl10_binary.tar.gz", {
        "stl10_binary/train_X.bin": stored, "stl10_binary/train_y.bin": bytes([1, 10, 4]),
        "stl10_binary/unlabeled_X.bin": unl.transpose(0, 3, 2, 1).tobytes()})
    train = load_dataset("stl10:train", str(path))
    np.testing.assert_array_equal(train.images, imgs)
    np.testing.assert_array_equal(train.labels, [0, 9, 3])
    both = load_dataset("stl10:train+unlabeled", str(path))
    assert len(both) == 5 and (both.labels[3:] == -1).all()
    np.testing.assert_array_equal(load_dataset("stl10", str(path)).images, unl)   # default: SecMI's STL10-U
    x = to_model_input(train.images, 32)                      # 96 -> 32 like the papers' Resize(32)
    assert x.shape == (3, 3, 32, 32) and x[0, :, :, :15].min() == 1.0 and x.min() >= -1


def test_wrong_or_missing_files_say_what_is_wrong(cifar10, tmp_path):
    path, _, _ = cifar10
    with pytest.raises(DataError, match="cifar-100-binary/train.bin is not in this archive"):
        load_dataset("cifar100", str(path))
    with pytest.raises(DataError, match="pass the path of cifar-10-binary.tar.gz"):
        load_dataset("cifar10")
    with pytest.raises(DataError, match="not found"):
        load_dataset("cifar10", str(tmp_path / "nope.tar.gz"))
    py = _tar(tmp_path / "cifar-10-python.tar.gz", {"cifar-10-batches-py/data_batch_1": b"x"})
    with pytest.raises(DataError, match="Python \\(pickle\\) version"):
        load_dataset("cifar10", str(py))
    (tmp_path / "notatar.tar.gz").write_bytes(b"plain bytes")
    with pytest.raises(DataError, match="not a tar archive"):
        load_dataset("cifar10", str(tmp_path / "notatar.tar.gz"))
    bad = _tar(tmp_path / "cifar-10-binary-bad.tar.gz",
               {f"cifar-10-batches-bin/data_batch_{i}.bin": b"\x00" * 3000 for i in range(1, 6)})
    with pytest.raises(DataError, match="not a whole number of 3073-byte records"):
        load_dataset("cifar10", str(bad))
    with pytest.raises(DataError, match="subset must be one of"):
        load_dataset("cifar10:val", str(path))


def test_split_written_in_secmi_format(cifar10, tmp_path, capsys):
    path, _, _ = cifar10
    out = tmp_path / "CIFAR10_train_ratio0.5.npz"
    assert main(["split", "--data", "cifar10", "--data-root", str(path), "--n-members", "5", "--format", "secmi",
                 "--out", str(out)]) == 0
    with np.load(out, allow_pickle=False) as z:
        assert sorted(z.files) == ["mia_eval_idxs", "mia_train_idxs"]
        mem, non = z["mia_train_idxs"], z["mia_eval_idxs"]
    assert len(mem) == len(non) == 5 and not set(mem) & set(non)
    back = MembershipSplit.load(out)
    np.testing.assert_array_equal(back.members, mem)
    assert main(["split", "--data", "cifar10", "--data-root", str(path), "--n-members", "5", "--format", "secmi",
                 "--out", str(tmp_path / "s.json")]) == 2
    assert "has another suffix" in capsys.readouterr().err
