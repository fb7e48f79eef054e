"""Data sets: readers (Fashion-MNIST IDX, image folders, .npz) and preprocessing.

Pixel conventions (the only place they change):
  * a ``Dataset`` holds raw images as ``uint8`` arrays, N x H x W x C (C = 1 for grey);
  * ``to_model_input`` turns them into float32 tensors N x C x H' x W' in [-1, 1], padding
    28 x 28 images to 32 x 32 with the background value (-1).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, SplitError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_ENV = "DIFFMIA_FASHION_MNIST"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class Dataset:
    """A pool of candidate images. ``ids`` are stable sample identifiers (indices into the source)."""

    images: np.ndarray  # uint8, N x H x W x C
    name: str
    ids: np.ndarray = None  # int64, N
    labels: np.ndarray | None = None
    captions: list[str] | None = None
    files: list[str] | None = None

    def __post_init__(self):
        if self.images.ndim == 3:
            self.images = self.images[..., None]
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise DataError(
                f"{self.name}: images must be uint8 N x H x W (x C), got {self.images.dtype} "
                f"with shape {self.images.shape}")
        if len(self.images) == 0:
            raise DataError(f"{self.name}: the data set is empty")
        if self.ids is None:
            self.ids = np.arange(len(self.images), dtype=np.int64)
        for what, v in (("labels", self.labels), ("ids", self.ids), ("captions", self.captions),
                        ("file names", self.files)):
            if v is not None and len(v) != len(self.images):
                raise DataError(f"{self.name}: {len(v)} {what} for {len(self.images)} images; one per image is needed")
        self.ids = np.asarray(self.ids, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, ids) -> "Dataset":
        """The samples whose ids are ``ids``, in that order."""
        ids = np.asarray(ids, dtype=np.int64)
        pos = {int(i): p for p, i in enumerate(self.ids)}
        missing = [int(i) for i in ids if int(i) not in pos]
        if missing:
            raise SplitError(
                f"{self.name}: {len(missing)} ids are not in the data (first: {missing[:5]}); "
                "is the split made for another data set?")
        rows = np.array([pos[int(i)] for i in ids], dtype=np.int64)
        return Dataset(
            images=self.images[rows], name=self.name, ids=ids,
            labels=None if self.labels is None else self.labels[rows],
            captions=None if self.captions is None else [self.captions[r] for r in rows],
            files=None if self.files is None else [self.files[r] for r in rows])

    def sha256(self) -> list[str]:
        """SHA-256 of each image's raw bytes (uint8, H x W x C, C-order)."""
        return [hashlib.sha256(np.ascontiguousarray(im).tobytes()).hexdigest() for im in self.images]


# ----------------------------------------------------------------------------- readers
def fashion_mnist_dir(root: str | os.PathLike | None = None) -> Path:
    return Path(root or os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR)


def _read_idx(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read IDX file ({e})") from None
    if len(data) < 4:
        raise DataError(f"{path}: not an IDX file (too short)")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise DataError(f"{path}: header says shape {shape} but holds {arr.size} values")
    return arr.reshape(shape)


def load_fashion_mnist(root: str | os.PathLike | None = None, subset: str = "train") -> Dataset:
    """Fashion-MNIST from its IDX ``.gz`` files.

    ``root`` defaults to ``$DIFFMIA_FASHION_MNIST`` or ``/usr/share/datasets/fashion-mnist``
    (Debian package ``dataset-fashion-mnist``).
    """
    if subset not in _FMNIST_FILES:
        raise DataError(f"Fashion-MNIST subset must be 'train' or 'test', got {subset!r}")
    folder = fashion_mnist_dir(root)
    img_file, lbl_file = (folder / f for f in _FMNIST_FILES[subset])
    if not img_file.exists() and not lbl_file.exists():
        raise DataError(
            f"Fashion-MNIST not found: {img_file} is missing. Install it with "
            "'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu), or download the four "
            f"IDX .gz files into a folder and pass it with --data-root or ${FASHION_MNIST_ENV}.")
    for missing, other, kind in ((lbl_file, img_file, "labels"), (img_file, lbl_file, "images")):
        if not missing.exists():
            raise DataError(f"Fashion-MNIST {subset} {kind} file missing: {missing} (its {other.name} is there); "
                            f"put {missing.name} beside it (package dataset-fashion-mnist holds all four IDX files)")
    images, labels = _read_idx(img_file), _read_idx(lbl_file)
    if labels.ndim != 1:
        raise DataError(f"{lbl_file}: not a labels file (an IDX array of shape {labels.shape}, expected one label "
                        "per image)")
    if images.ndim != 3 or len(images) != len(labels):
        raise DataError(f"{img_file}: expected N x 28 x 28 images matching {len(labels)} labels, "
                        f"got shape {images.shape}")
    return Dataset(images=images.copy(), labels=labels.astype(np.int64),
                   name=f"fashion-mnist-{subset}")


def load_image_folder(folder: str | os.PathLike, captions: str | os.PathLike | None = None,
                      mode: str | None = None) -> Dataset:
    """All images of a folder (sorted by file name). ``captions``: a JSON {file name: caption}
    or a text file with one ``file<TAB>caption`` per line. ``mode``: 'L' or 'RGB' (default: the
    first image's)."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    arrays = []
    for p in files:
        try:
            with Image.open(p) as im:
                if mode is None:
                    mode = "L" if im.mode in ("L", "1", "I;16", "I") else "RGB"
                arrays.append(np.asarray(im.convert(mode), dtype=np.uint8))
        except OSError as e:
            raise DataError(f"{p}: cannot read image ({e})") from None
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise DataError(f"{folder}: images differ in size {sorted(shapes)[:3]}; resize them to one size")
    caps = None
    if captions is not None:
        caps = _read_captions(Path(captions), [p.name for p in files])
    return Dataset(images=np.stack(arrays), name=folder.name, captions=caps,
                   files=[p.name for p in files])


def _read_captions(path: Path, names: list[str]) -> list[str]:
    if not path.exists():
        raise DataError(f"{path}: captions file not found")
    if path.suffix == ".json":
        table = json.loads(path.read_text())
    else:
        table = {}
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                if "\t" not in line:
                    raise DataError(f"{path}:{n}: expected 'file<TAB>caption'")
                k, v = line.split("\t", 1)
                table[k] = v
    missing = [n for n in names if n not in table]
    if missing:
        raise DataError(f"{path}: no caption for {len(missing)} images (first: {missing[0]})")
    return [table[n] for n in names]


def load_npz(path: str | os.PathLike, key: str = "images") -> Dataset:
    """Images from an ``.npz`` array (uint8 N x H x W (x C) or N x C x H x W). Optional keys
    ``labels`` and ``ids``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    with np.load(path, allow_pickle=False) as z:
        if key not in z:
            raise DataError(f"{path}: no array named {key!r} (has {sorted(z.files)})")
        images = z[key]
        labels = z["labels"] if "labels" in z else None
        ids = z["ids"] if "ids" in z else None
    for what, v in (("labels", labels), ("ids", ids)):
        if v is not None and (v.ndim != 1 or len(v) != len(images)):
            raise DataError(f"{path}: {what!r} must hold one value per image: {len(images)} images, {what} of "
                            f"shape {v.shape}")
    if ids is not None and ids.dtype.kind not in "iu":
        raise DataError(f"{path}: 'ids' must be integers, got {ids.dtype} values (first: {ids.tolist()[0]})")
    if ids is not None and (ids < 0).any():
        raise DataError(f"{path}: id {ids[ids < 0][0]} is negative (ids must be 0 or more)")
    if ids is not None and len(np.unique(ids)) != len(ids):
        raise DataError(f"{path}: some ids are listed twice; each image needs its own id")
    if images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3):
        images = images.transpose(0, 2, 3, 1)
    if images.dtype != np.uint8:
        raise DataError(f"{path}: images must be uint8 (0..255), got {images.dtype}")
    return Dataset(images=images, name=path.stem, labels=labels, ids=ids)


def load_dataset(spec: str, root: str | None = None) -> Dataset:
    """``fashion-mnist[:train|test]``, ``cifar10[:train|test]``, ``cifar100[:train|test]``,
    ``stl10[:unlabeled|train|test|train+unlabeled]`` (``root``: the binary archive or its folder), a folder
    of images, or an ``.npz`` file."""
    name, _, sub = spec.partition(":")
    if name == "fashion-mnist":
        return load_fashion_mnist(root, sub or "train")
    if name in ("cifar10", "cifar100", "stl10"):
        from .binary_sets import load_cifar, load_stl10

        return load_stl10(root, sub or "unlabeled") if name == "stl10" else load_cifar(name, root, sub or "train")
    p = Path(spec)
    if p.is_dir():
        return load_image_folder(p)
    if p.suffix == ".npz":
        return load_npz(p)
    raise DataError(f"unknown data {spec!r}: use 'fashion-mnist[:train|test]', 'cifar10', 'cifar100', 'stl10' "
                    "(with --data-root), a folder of images or an .npz file")


# ----------------------------------------------------------------------------- preprocessing
def to_model_input(images: np.ndarray, size: int | None = 32):
    """uint8 N x H x W x C -> float32 torch tensor N x C x size x size in [-1, 1].

    Images smaller than ``size`` are padded symmetrically with the background value (-1, i.e.
    black, as Fashion-MNIST's background); square images larger than ``size`` are resized to it
    (bilinear with antialiasing, torchvision's ``Resize``, as the papers do for STL-10); ``size=None``
    keeps the size."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if size is not None:
        h, w = x.shape[-2:]
        if (h > size or w > size) and h == w:
            from torchvision.transforms.v2 import functional as F

            u8 = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
            return (F.resize(u8, [size, size], antialias=True).float() / 127.5 - 1.0).contiguous()
        if h > size or w > size:
            raise DataError(f"images are {h}x{w}, larger than the model size {size}x{size} and not square")
        if (h, w) != (size, size):
            top, left = (size - h) // 2, (size - w) // 2
            x = torch.nn.functional.pad(x, (left, size - w - left, top, size - h - top), value=-1.0)
    return x.contiguous()


def from_model_output(x, crop: tuple[int, int] | None = None) -> np.ndarray:
    """float tensor N x C x H x W in [-1, 1] -> uint8 N x H x W x C (optionally centre-cropped)."""
    import torch

    x = x.detach().float().cpu()
    if crop is not None and tuple(x.shape[-2:]) != tuple(crop):
        h, w = x.shape[-2:]
        top, left = (h - crop[0]) // 2, (w - crop[1]) // 2
        x = x[..., top:top + crop[0], left:left + crop[1]]
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()
