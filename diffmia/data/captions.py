"""Captions: the text condition of each sample for text-to-image targets.

* ``load_captions(path)``: a captions file, CSV/TSV with a header ``id,caption`` (or ``file,caption``) or a
  JSON object {id or file name: caption};
* ``captions_for(data, table)``: the caption of every sample of a Dataset, by id (or file name);
* ``fashion_mnist_captions(images, labels, style)``: captions computed from Fashion-MNIST images, so that
  captions differ within a class: the class name plus attributes measured on the image (brightness of the
  garment, its width, how much of the frame it fills), e.g. "a photo of a dark, wide ankle boot". The
  ``replacement`` style describes the same image in other words with other measurements (height and
  contrast), standing in for "captions written by another captioning model".
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ..errors import DataError
from .datasets import FASHION_MNIST_CLASSES, Dataset

CONDITIONS = ("caption", "empty", "replacement")


def load_captions(path) -> dict[str, str]:
    """{key: caption} from a CSV/TSV (header id,caption or file,caption) or JSON file; keys are strings."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: captions file not found")
    if path.suffix == ".json":
        try:
            table = json.loads(path.read_text())
        except ValueError as e:
            raise DataError(f"{path}: not JSON ({e})") from None
        if not isinstance(table, dict):
            raise DataError(f"{path}: expected a JSON object {{id or file name: caption}}")
        return {str(k): str(v) for k, v in table.items()}
    with open(path, newline="") as f:
        sample = f.read(4096)
        f.seek(0)
        reader = csv.DictReader(f, delimiter="\t" if "\t" in sample.splitlines()[0] else ",")
        cols = reader.fieldnames or []
        key = "id" if "id" in cols else "file" if "file" in cols else None
        if key is None or "caption" not in cols:
            raise DataError(f"{path}: expected a header 'id,caption' (or 'file,caption'), got {cols}")
        return {row[key]: row["caption"] for row in reader}


def captions_for(data: Dataset, table: dict[str, str], source: str = "captions") -> list[str]:
    """The caption of each sample of ``data``, looked up by id (or by file name for image folders)."""
    keys = [str(int(i)) for i in data.ids]
    if data.files is not None and not all(k in table for k in keys):
        keys = list(data.files)
    missing = [k for k in keys if k not in table]
    if missing:
        raise DataError(f"{source}: no caption for {len(missing)} of {len(keys)} samples (first: {missing[0]!r})")
    return [table[k] for k in keys]


def fashion_mnist_captions(images: np.ndarray, labels: np.ndarray, style: str = "caption") -> list[str]:
    """Captions of uint8 Fashion-MNIST images (N x H x W [x 1]) from their class and measured attributes."""
    x = np.asarray(images, np.float64).reshape(len(images), images.shape[1], images.shape[2]) / 255.0
    fg = x > 0.1                                                      # the garment's pixels
    n_fg = np.maximum(fg.sum((1, 2)), 1)
    brightness = (x * fg).sum((1, 2)) / n_fg                          # mean intensity of the garment
    cols, rows = fg.any(1), fg.any(2)
    width = cols.sum(1) / x.shape[2]
    height = rows.sum(1) / x.shape[1]
    fill = fg.mean((1, 2))
    contrast = np.array([im[m].std() if m.any() else 0.0 for im, m in zip(x, fg)])
    out = []
    for i in range(len(x)):
        name = FASHION_MNIST_CLASSES[int(labels[i])].lower().replace("t-shirt/top", "t-shirt")
        if style == "caption":
            tone = "dark" if brightness[i] < 0.35 else "light" if brightness[i] > 0.6 else "grey"
            size = "narrow" if width[i] < 0.6 else "wide" if width[i] > 0.85 else "medium"
            full = ", filled" if fill[i] > 0.55 else ", sparse" if fill[i] < 0.3 else ""
            out.append(f"a photo of a {tone}, {size}{full} {name}")
        elif style == "replacement":
            tall = "tall" if height[i] > 0.9 else "short" if height[i] < 0.6 else "mid-height"
            texture = "patterned" if contrast[i] > 0.19 else "plain"
            out.append(f"{texture} {name}, {tall}, on black")
        else:
            raise DataError(f"unknown caption style {style!r}: 'caption' or 'replacement'")
    return out
