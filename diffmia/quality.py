"""Sample quality without downloads: KID on the features of a small Fashion-MNIST classifier.

A defence that lowers membership leakage usually also lowers the quality of what the model generates; this module
gives the second number. It generates ``n`` images with a target's UNet (DDIM, seeded), embeds them and held-out
real Fashion-MNIST *test* images with :class:`FeatureNet` (the 128-d penultimate layer of a compact CNN that
diffmia trains once: ``diffmia train-features``; its weights ship in ``diffmia/assets/``), and reports

* **KID** (kernel inception distance, Bińkowski et al. 2018, "Demystifying MMD GANs"): the unbiased estimator of
  MMD² with the cubic polynomial kernel k(x, y) = (x·y/d + 1)³, averaged over ``subsets`` random subsets of
  ``subset_size`` images from each side (mean and standard deviation over the subsets). Lower is better; two
  samples of the same distribution give 0 in expectation, *whatever n*: the estimator is unbiased, so KIDs of
  targets measured with few samples (256 in a training record) compare fairly with each other and with larger
  runs. It can come out slightly negative.
* ``fid_style``: the Fréchet distance between Gaussians fitted to the same features ("FID-style on our FMNIST
  features, not comparable with published FID", which uses Inception-v3 on ImageNet). It is biased: its
  expected value grows as n shrinks (by roughly tr(Σ)/n), so compare it only at equal n; prefer the KID.

Neither number is comparable with published Inception-based FID/KID: the features are our own network's.

The feature network is trained on the Fashion-MNIST *train* set (60,000 images): the test set is kept for what must
not have been seen by it, the reference images of the KID and the network's accuracy. The targets' members are
drawn from the train set, so a memorising target's copies are images the classifier was trained on; the gap this
could cause is measured in the weights' record (``member_gap``: KID of 2,000 train images vs 8,000 test images,
0.03 +- 0.65, beside that of the other 2,000 test images, -0.08 +- 0.66: none to see, while blurring real images
with a Gaussian of sigma 1 gives 56 and uniform noise 157).
"""

from __future__ import annotations

import functools
import hashlib
import time
from pathlib import Path

import numpy as np
import torch

from .errors import DiffmiaError

ASSETS = Path(__file__).resolve().parent / "assets"
FEATURES_FILE = ASSETS / "fmnist_features.safetensors"
TRAIN_COMMAND = "diffmia train-features --threads 1"
QUALITY_STEPS = 50          # DDIM steps of the KID in a training record


class FeatureNet(torch.nn.Module):
    """Compact Fashion-MNIST classifier on the targets' model space (1 x 32 x 32 in [-1, 1]): three blocks of
    conv3x3 - BatchNorm - ReLU - maxpool2 (32 -> 4 pixels), a ``dim``-wide ReLU layer (the features) and 10
    logits."""

    def __init__(self, widths=(16, 32, 64), dim: int = 128, classes: int = 10):
        super().__init__()
        layers, c = [], 1
        for w in widths:
            layers += [torch.nn.Conv2d(c, w, 3, padding=1, bias=False), torch.nn.BatchNorm2d(w),
                       torch.nn.ReLU(inplace=True), torch.nn.MaxPool2d(2)]
            c = w
        self.conv = torch.nn.Sequential(*layers)
        self.fc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(c * 4 * 4, dim), torch.nn.ReLU(inplace=True))
        self.head = torch.nn.Linear(dim, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def file_sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def record_path(weights) -> Path:
    return Path(weights).with_suffix(".json")


@functools.lru_cache(maxsize=4)
def _load(path: str, device: str) -> FeatureNet:
    from safetensors.torch import load_file

    if not Path(path).exists():
        raise DiffmiaError(f"{path}: the feature network's weights are missing; make them with '{TRAIN_COMMAND}'")
    net = FeatureNet()
    net.load_state_dict(load_file(path))
    return net.to(device).eval().requires_grad_(False)


def load_feature_net(path=FEATURES_FILE, device="cpu") -> FeatureNet:
    """The trained :class:`FeatureNet` (eval mode, cached per path and device)."""
    return _load(str(path), str(device))


@torch.inference_mode()
def features(images: torch.Tensor, net: FeatureNet | None = None, batch_size: int = 500) -> np.ndarray:
    """Penultimate features (N x 128, float64) of images N x 1 x 32 x 32 in [-1, 1]."""
    net = net or load_feature_net()
    device = next(net.parameters()).device
    out = [net.features(images[i:i + batch_size].to(device, torch.float32)).double().cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy()


# ----------------------------------------------------------------------------- the distances
def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x·y/d + 1)³ for every row pair (KID's kernel)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² of two samples with the polynomial kernel: the within-sample means leave out the diagonal
    (k(x_i, x_i)), the cross term averages all m·n pairs."""
    m, n = len(x), len(y)
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2.0 * kxy.mean())


def kid(real: np.ndarray, fake: np.ndarray, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """KID (mean, std over ``subsets``): unbiased MMD² between ``subset_size`` rows drawn without replacement
    from each feature matrix (fewer when a side has fewer rows), seeded."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    s = min(subset_size, len(real), len(fake))
    if s < 2:
        raise DiffmiaError(f"KID needs at least 2 images on each side, got {len(real)} and {len(fake)}")
    rng = np.random.default_rng(seed)
    vals = [mmd2_unbiased(real[rng.choice(len(real), s, replace=False)], fake[rng.choice(len(fake), s, replace=False)])
            for _ in range(subsets)]
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if subsets > 1 else 0.0


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance of Gaussians fitted to two feature sets (FID's formula; biased for small n)."""
    import warnings

    from scipy.linalg import LinAlgWarning, sqrtm

    mu1, mu2 = real.mean(0), fake.mean(0)
    c1, c2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    with warnings.catch_warnings():     # singular: the ReLU features have units that never fire
        warnings.simplefilter("ignore", LinAlgWarning)
        root = sqrtm(c1 @ c2)
        if not np.isfinite(root).all():  # as pytorch-fid: regularise a singular product
            eye = np.eye(len(c1)) * 1e-6
            root = sqrtm((c1 + eye) @ (c2 + eye))
    root = root.real if np.iscomplexobj(root) else root
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2.0 * root))


# ----------------------------------------------------------------------------- reference set and samples
@functools.lru_cache(maxsize=4)
def _test_features(root: str, weights: str, device: str) -> tuple[np.ndarray, np.ndarray]:
    from .data import load_fashion_mnist, to_model_input

    test = load_fashion_mnist(root, "test")
    return test.ids, features(to_model_input(test.images), load_feature_net(weights, device))


def reference_features(data_root=None, exclude_ids=None, weights=FEATURES_FILE, device="cpu") -> np.ndarray:
    """Features of the Fashion-MNIST test images (all 10,000, less ``exclude_ids``: the candidates of a target
    trained on the test set), cached per process."""
    from .data.datasets import fashion_mnist_dir

    ids, feats = _test_features(str(fashion_mnist_dir(data_root)), str(weights), str(device))
    if exclude_ids is not None:
        feats = feats[~np.isin(ids, np.asarray(exclude_ids))]
    return feats


@torch.inference_mode()
def generate(unet, scheduler_config, n: int, steps: int = 50, seed: int = 0, device="cpu",
             batch_size: int = 256) -> torch.Tensor:
    """``n`` images in [-1, 1] from ``unet`` with deterministic DDIM (eta 0, ``steps`` steps; diffusers'
    ``DDIMScheduler`` on the target's noise schedule), starting from seeded noise; on the CPU."""
    from diffusers import DDIMScheduler

    from .targets.folder import sample_size

    sched = DDIMScheduler.from_config(dict(scheduler_config))
    sched.set_timesteps(steps)
    size = sample_size(unet.config)
    x = torch.randn((n, unet.config.in_channels, size, size), generator=torch.Generator().manual_seed(seed))
    out = []
    for i in range(0, n, batch_size):
        xb = x[i:i + batch_size].to(device)
        for t in sched.timesteps:
            xb = sched.step(unet(xb, t).sample, t, xb).prev_sample
        out.append(xb.clamp(-1, 1).float().cpu())
    return torch.cat(out)


def quality_of_images(images: torch.Tensor, data_root=None, exclude_ids=None, subsets: int = 100,
                      subset_size: int = 1000, seed: int = 0, device="cpu", weights=FEATURES_FILE) -> dict:
    """KID (and the FID-style distance) of images N x 1 x 32 x 32 in [-1, 1] against the Fashion-MNIST test set."""
    if tuple(images.shape[1:]) != (1, 32, 32):
        raise DiffmiaError(f"the feature network takes images N x 1 x 32 x 32 (Fashion-MNIST in the targets' "
                           f"model space), got {tuple(images.shape)}")
    ref = reference_features(data_root, exclude_ids, weights, device)
    fake = features(images, load_feature_net(weights, device))
    mean, std = kid(ref, fake, subsets, subset_size, seed)
    return {"kid_mean": mean, "kid_std": std, "kid_subsets": subsets,
            "kid_subset_size": min(subset_size, len(ref), len(fake)), "n": len(images), "n_reference": len(ref),
            "fid_style": frechet_distance(ref, fake),
            "fid_style_note": "FID-style on our FMNIST features, not comparable with published FID",
            "feature_network": Path(weights).name, "feature_network_sha256": file_sha256(weights)}


def quality_of_unet(unet, scheduler_config, n: int = 1000, steps: int = 50, seed: int = 0, device="cpu",
                    data_root=None, exclude_ids=None, subsets: int = 100, subset_size: int = 1000) -> dict:
    """Generate ``n`` images with ``unet`` (see :func:`generate`) and measure them (:func:`quality_of_images`)."""
    start = time.perf_counter()
    images = generate(unet, scheduler_config, n, steps, seed, device)
    q = quality_of_images(images, data_root, exclude_ids, subsets, subset_size, seed, device)
    return {**q, "steps": steps, "sampler": "DDIM (eta 0)", "seed": seed,
            "seconds": round(time.perf_counter() - start, 1)}


def sample_quality(target_folder, n: int = 1000, steps: int = 50, seed: int = 0, device="auto", weights="ema",
                   data_root=None, subsets: int = 100, subset_size: int = 1000) -> dict:
    """The quality of a target folder's samples: kid_mean, kid_std (lower is better; see the module docstring),
    fid_style, n, steps, the feature network's sha256, seconds. The reference set is the Fashion-MNIST test set,
    less the target's candidates when its split was drawn from the test set."""
    from .data import MembershipSplit
    from .targets import DiffusersTarget, TargetFolder

    folder = TargetFolder.open(target_folder)
    if folder.is_latent:
        raise DiffmiaError(f"{folder.path}: a latent (text-to-image) target; the quality measure takes pixel "
                           "Fashion-MNIST targets (1 x 32 x 32)")
    exclude = None
    if folder.split_path.exists():
        split = MembershipSplit.load(folder.split_path)
        if str(split.meta.get("train_data", "")).partition(":")[2] == "test":
            exclude = split.ids
    target = DiffusersTarget.from_pretrained(folder.path, weights=weights, device=device)
    return quality_of_unet(target.unet, folder.scheduler_config(), n, steps, seed, target.device, data_root, exclude,
                           subsets, subset_size)


def training_quality(unet, scheduler, cfg, split, device) -> dict | None:
    """The quality in a training record (``diffmia train``, ``cfg.quality_samples`` images, 50 DDIM steps, seed
    ``cfg.seed``); None when off or when the target is not a 1 x 32 x 32 Fashion-MNIST model. A failure (say, no
    test set on disk) is recorded and warned about, never lost training."""
    import sys

    name, _, sub = cfg.data.partition(":")
    if not cfg.quality_samples or name != "fashion-mnist" or cfg.image_size != 32 or unet.config.in_channels != 1:
        return None
    try:
        return quality_of_unet(unet, scheduler.config, cfg.quality_samples, QUALITY_STEPS, cfg.seed, device,
                               cfg.data_root, split.ids if sub == "test" else None)
    except DiffmiaError as e:
        print(f"diffmia: warning: no sample quality in training.json: {e}", file=sys.stderr)
        return {"error": str(e)}
