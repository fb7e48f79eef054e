"""The source papers' data sets from their *binary* distributions (never the Python-pickle versions):

* CIFAR-10, ``cifar-10-binary.tar.gz`` (or its extracted ``cifar-10-batches-bin/``): records of 1 label
  byte + 3072 bytes (R, G, B planes of 32 x 32); ``train`` = data_batch_1..5 (50,000 images, in the order
  torchvision uses, so SecMI/PIA split indices apply), ``test`` = test_batch (10,000);
* CIFAR-100, ``cifar-100-binary.tar.gz`` (``cifar-100-binary/``): 1 coarse + 1 fine label byte + 3072 bytes;
  ``train.bin`` (50,000), ``test.bin`` (10,000); labels are the fine ones;
* STL-10, ``stl10_binary.tar.gz`` (``stl10_binary/``): ``*_X.bin`` hold N x 3 x 96 x 96 bytes stored column
  by column, ``*_y.bin`` labels 1..10; subsets ``train`` (5,000), ``test`` (8,000), ``unlabeled`` (100,000,
  SecMI's "STL10-U") and ``train+unlabeled`` (torchvision's order: train first).

Sample ids are positions in the subset, as in torchvision, which is what the released split files index.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np

from ..errors import DataError
from .datasets import Dataset

LAYOUTS = {
    "cifar10": ("cifar-10-binary.tar.gz", "cifar-10-batches-bin",
                {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}),
    "cifar100": ("cifar-100-binary.tar.gz", "cifar-100-binary", {"train": ["train.bin"], "test": ["test.bin"]}),
    "stl10": ("stl10_binary.tar.gz", "stl10_binary",
              {"train": ["train_X.bin"], "test": ["test_X.bin"], "unlabeled": ["unlabeled_X.bin"],
               "train+unlabeled": ["train_X.bin", "unlabeled_X.bin"]}),
}
PICKLED = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}


class _Source:
    """Files of one data set, from a .tar.gz archive or an extracted folder."""

    def __init__(self, name: str, root: str | os.PathLike | None):
        archive, folder, _ = LAYOUTS[name]
        if root is None:
            raise DataError(f"{name}: pass the path of {archive} (or of its extracted {folder}/ folder) "
                            "with --data-root")
        self.name, self.root, self.folder = name, Path(root), folder
        if not self.root.exists():
            raise DataError(f"{self.root}: not found; {name} needs {archive} (the binary version)")
        if self.root.name in PICKLED.values() or (self.root.is_dir() and (self.root / "data_batch_1").exists()):
            raise DataError(f"{self.root}: this is the Python (pickle) version of {name}; diffmia reads only "
                            f"the binary version, {archive}")
        self.tar = None
        if self.root.is_file():
            try:
                self.tar = tarfile.open(self.root, "r:*")
            except (tarfile.TarError, OSError) as e:
                raise DataError(f"{self.root}: not a tar archive ({e}); {name} needs {archive}") from None
            self.members = {m.name: m for m in self.tar.getmembers() if m.isfile()}

    def read(self, file: str) -> bytes:
        rel = f"{self.folder}/{file}"
        if self.tar is not None:
            if rel not in self.members:
                raise DataError(f"{self.root}: {rel} is not in this archive; is it {LAYOUTS[self.name][0]} "
                                f"(the binary version of {self.name})?")
            return self.tar.extractfile(self.members[rel]).read()
        for path in (self.root / file, self.root / rel):
            if path.is_file():
                return path.read_bytes()
        raise DataError(f"{self.root}: {file} missing (expected {self.root / rel} or {self.root / file})")


def _records(blob: bytes, n_labels: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    rec = n_labels + 3072
    if len(blob) % rec:
        raise DataError(f"{where}: {len(blob)} bytes is not a whole number of {rec}-byte records; "
                        "a wrong or truncated file")
    a = np.frombuffer(blob, np.uint8).reshape(-1, rec)
    return a[:, n_labels:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), a[:, n_labels - 1].astype(np.int64)


def load_cifar(name: str = "cifar10", root=None, subset: str = "train") -> Dataset:
    """CIFAR-10 or CIFAR-100 (fine labels) from the binary version; ``root`` is the archive or folder."""
    files = LAYOUTS[name][2].get(subset)
    if files is None:
        raise DataError(f"{name} subset must be one of {sorted(LAYOUTS[name][2])}, got {subset!r}")
    src = _Source(name, root)
    parts = [_records(src.read(f), 1 if name == "cifar10" else 2, f"{src.root}:{f}") for f in files]
    return Dataset(images=np.concatenate([p[0] for p in parts]), labels=np.concatenate([p[1] for p in parts]),
                   name=f"{name}-{subset}")


def load_stl10(root=None, subset: str = "unlabeled") -> Dataset:
    """STL-10 from the binary version (96 x 96 RGB; ``to_model_input`` resizes it to the model's size)."""
    files = LAYOUTS["stl10"][2].get(subset)
    if files is None:
        raise DataError(f"stl10 subset must be one of {sorted(LAYOUTS['stl10'][2])}, got {subset!r}")
    src = _Source("stl10", root)
    images, labels = [], []
    for f in files:
        blob = src.read(f)
        if len(blob) % (3 * 96 * 96):
            raise DataError(f"{src.root}:{f}: {len(blob)} bytes is not a whole number of 3 x 96 x 96 images")
        images.append(np.frombuffer(blob, np.uint8).reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1))  # column-major
        y = f.replace("_X.bin", "_y.bin")
        labels.append(np.frombuffer(src.read(y), np.uint8).astype(np.int64) - 1 if "unlabeled" not in f
                      else np.full(len(images[-1]), -1, np.int64))
    return Dataset(images=np.ascontiguousarray(np.concatenate(images)), labels=np.concatenate(labels),
                   name=f"stl10-{subset}")
