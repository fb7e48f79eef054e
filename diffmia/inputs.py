"""The run's inputs: the split's samples, their prompts (text-conditioned targets) and the images as the
target takes them (channels, size, [-1, 1])."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .config import RunConfig
from .data import MembershipSplit, load_dataset, to_model_input
from .data.captions import CONDITIONS, captions_for, load_captions
from .errors import DataError, DiffmiaError, SplitError
from .targets import TargetFolder
from .targets.vpsde import ONE_D_CLASSES


def prepare_data(cfg: RunConfig):
    folder = TargetFolder(cfg.target)
    if folder.is_vpsde and folder.unet_config(cfg.weights).get("_class_name") in ONE_D_CLASSES:
        raise DiffmiaError(f"{cfg.target}: a 1-D (waveform) target takes audio, not images; attack it with "
                           f"diffmia attack-audio --target {cfg.target} --corpus CORPUS")
    split_path = cfg.split or str(folder.split_path)
    split = MembershipSplit.load(split_path)
    try:
        split = split.limit(cfg.n_members, cfg.n_nonmembers)
    except SplitError as e:
        raise SplitError(f"{split_path}: {e} (--n-members, --n-nonmembers)") from None
    data = load_dataset(cfg.data, cfg.data_root)
    sub, is_member = split.select(data)
    return sub, is_member, split_path


def prompts_for(cfg: RunConfig, folder: TargetFolder, data) -> tuple[str | None, np.ndarray | None]:
    """(condition, one prompt per sample) for a text-conditioned target; (None, None) for a pixel one."""
    if not folder.is_latent:
        if cfg.condition is not None or cfg.captions or cfg.replacement_captions or cfg.guidance_scale != 1.0:
            raise DiffmiaError(f"{cfg.target}: --condition, --captions and --guidance-scale apply to text-conditioned "
                               "(latent) targets only")
        return None, None
    condition = cfg.condition or "caption"
    if condition not in CONDITIONS:
        raise DiffmiaError(f"--condition must be one of {CONDITIONS}, got {condition!r}")
    if condition == "empty":
        return condition, np.array([""] * len(data.ids), dtype=object)
    given = cfg.captions if condition == "caption" else cfg.replacement_captions
    path = Path(given) if given else (folder.captions_csv if condition == "caption" else folder.replacement_captions_csv)
    if condition == "caption" and given is None and not path.exists() and data.captions is not None:
        return condition, np.array(data.captions, dtype=object)       # an image folder's own captions
    flag = "--captions" if condition == "caption" else "--replacement-captions"
    if not path.exists():
        raise DiffmiaError(f"condition {condition!r}: {path} not found; pass a captions file (id,caption) with {flag}")
    return condition, np.array(captions_for(data, load_captions(path), str(path)), dtype=object)


def model_input(data, folder: TargetFolder, cfg: RunConfig) -> np.ndarray:
    """The images as the target takes them ([-1, 1], its channels and size). Images with other channels are
    refused unless ``cfg.convert`` says how to change them (torchvision: ITU-R 601 luminance, or grey x 3)."""
    images, want = data.images, folder.image_channels(cfg.weights)
    have = images.shape[-1]
    if want is not None and have != want:
        if (cfg.convert, have, want) not in (("grey", 3, 1), ("rgb", 1, 3)):
            fix = {1: "grey", 3: "rgb"}.get(want)
            raise DataError(f"the images are {'x'.join(map(str, images.shape[1:]))} (H x W x channels: {have} "
                            f"channel{'s' * (have != 1)}), the target {cfg.target} takes {want}-channel images"
                            + (f"; pass --convert {fix} to convert them" if fix and have in (1, 3) else ""))
        from torchvision.transforms.v2 import functional as F

        u8 = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        u8 = F.rgb_to_grayscale(u8) if want == 1 else F.grayscale_to_rgb(u8)
        images = u8.permute(0, 2, 3, 1).numpy()
    return to_model_input(images, folder.image_size(cfg.weights)).numpy()
