"""Observers: the black-box attack of Cilloni, Fleming & Walter, "Privacy Threats in Stable Diffusion
Models" (arXiv 2311.09355).

An *observer* is a rule for which images to compare while the target generates from a query image: the
attacker submits the query to an image-to-image API, watches the outputs at several generation steps
("epochs" in the paper) and measures distances between them and the query (or each other). A member is
reconstructed more faithfully, so its distances differ; a classifier learns how. The paper's attack has
three modules (its Informer, Encoder and Classifier); the tags C1-C4 mark the lines implementing each:

* (C1) Informer: one image-to-image call per query returns the outputs o_1 ... o_K at K steps;
* (C2) Encoder: observers x distances -> one feature vector per sample. Observers: ``complete``
  d(o_k, x0) for every k; ``progressive`` d(o_k, o_{k-1}); ``oneshot`` d(o_K, x0). Distances: PSNR,
  DSSIM = (1 - SSIM)/2, RMSE and the L2 distance between embeddings of a fixed feature network;
* (C3) Classifier: binary classifiers (logistic regression, SVM, decision tree, Gaussian naive Bayes,
  k-NN) trained on labelled calibration samples output P(member);
* (C4) the smoothing defence the paper evaluates: a box blur of radius 1 of the returned images.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import DiffmiaError
from ..targets.api import api_view, transform_timesteps
from .. import ops
from .base import SEED, TIMESTEP, Attack, boolean, integer, subset_of

OBSERVERS = ("complete", "progressive", "oneshot")
DISTANCES = ("psnr", "dssim", "rmse", "feature")
CLASSIFIERS = ("logreg", "svm", "tree", "nb", "knn")
PSNR_CAP = 100.0          # dB; PSNR of identical images (infinite) is capped here


def box_blur(images: torch.Tensor) -> torch.Tensor:
    """(C4) Box blur of radius 1: the mean over each pixel's 3 x 3 neighbourhood, edges replicated."""
    x = torch.nn.functional.pad(images.float(), (1, 1, 1, 1), mode="replicate")
    return torch.nn.functional.avg_pool2d(x, 3, stride=1)


def image_distances(a: torch.Tensor, b: torch.Tensor, which=("psnr", "dssim", "rmse")) -> dict[str, np.ndarray]:
    """(C2) Per-pair distances between image batches in [-1, 1] (data range 2), from ``skimage.metrics``:
    PSNR (dB, capped at 100 for identical images; higher = closer), DSSIM = (1 - SSIM)/2, RMSE."""
    from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

    a = a.detach().float().cpu().numpy().astype(np.float64)
    b = b.detach().float().cpu().numpy().astype(np.float64)
    n, c = a.shape[:2]
    if min(a.shape[-2:]) < 7 and "dssim" in which:
        raise DiffmiaError(f"DSSIM needs images of at least 7 x 7 pixels, got {a.shape[-2:]}")
    out = {k: np.empty(n) for k in which}
    for i in range(n):
        x, y = (a[i, 0], b[i, 0]) if c == 1 else (a[i], b[i])
        mse = mean_squared_error(x, y)
        if "psnr" in out:
            out["psnr"][i] = PSNR_CAP if mse == 0 else min(PSNR_CAP, peak_signal_noise_ratio(x, y, data_range=2.0))
        if "rmse" in out:
            out["rmse"][i] = np.sqrt(mse)
        if "dssim" in out:
            ssim = structural_similarity(x, y, data_range=2.0, channel_axis=None if c == 1 else 0)
            out["dssim"][i] = (1 - ssim) / 2
    return out


class FeatureNet:
    """The fixed feature network of the feature-vector distance: a torchvision ResNet-18 with **random,
    seeded weights** (``weights=None``, ``torch.manual_seed(seed)`` inside a forked RNG), cut before
    ``fc`` (512-d global-average-pooled embedding), in eval mode.

    Why random: the paper uses a pretrained network, but nothing may download weights here, and a
    pretrained ResNet trained on ImageNet would be a hidden dependency anyway. A fixed random
    convolutional network is an honest, offline, deterministic embedding: its features are random
    multi-scale filters (known to preserve much of the image structure, cf. random-feature baselines),
    not semantic ones, so the distance measures structural rather than semantic similarity.
    Grey images are repeated to 3 channels; inputs stay in [-1, 1] at their own size.
    """

    def __init__(self, seed: int = 0, device="cpu"):
        import torchvision

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            net = torchvision.models.resnet18(weights=None)
        net.fc = torch.nn.Identity()
        self.net = net.eval().requires_grad_(False).to(device)
        self.device = device

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
        x = images.float()
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        elif x.shape[1] != 3:
            x = x.mean(1, keepdim=True).repeat(1, 3, 1, 1)
        return torch.cat([self.net(x[i:i + batch].to(self.device)).cpu() for i in range(0, len(x), batch)])


def _classifier(kind: str, n_train: int, seed: int, n_minority: int = 5):
    """(C3) One of the paper's classifiers, as a scikit-learn estimator with ``predict_proba``."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.naive_bayes import GaussianNB
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC
    from sklearn.tree import DecisionTreeClassifier

    if kind == "logreg":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    if kind == "svm":
        # Platt scaling of the SVM's decision function by cross-validation (what SVC(probability=True)
        # did; that option is deprecated in scikit-learn 1.9)
        return make_pipeline(StandardScaler(), CalibratedClassifierCV(SVC(random_state=seed), method="sigmoid",
                                                                      cv=max(2, min(5, n_minority)), ensemble=False))
    if kind == "tree":
        return DecisionTreeClassifier(random_state=seed)
    if kind == "nb":
        return GaussianNB()
    if kind == "knn":
        return make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=max(1, min(5, n_train - 1))))
    raise DiffmiaError(f"unknown classifier {kind!r}; choose from {CLASSIFIERS}")


class Observers(Attack):
    """Cilloni et al. black-box observers (arXiv 2311.09355).

    Threat model: black-box; only ``transform`` (image-to-image with outputs at every generation step,
    "epochs") of a :class:`~diffmia.targets.api.GenerationAPI` is used. It never touches the network.

    Per query image x0, **one** ``transform`` call from ``t_start`` in ``num_steps`` steps (request seed
    of sample s: s + 1000000007 * ``seed``, stream ``api_request`` of ``diffmia.ops``) returns the outputs o_1 ... o_K at the K steps (the API's
    decoded clean-image estimates; o_K is the final image). Optionally every output is box-blurred with
    radius 1 (``blur=True``: the paper's smoothing defence, applied by the service to what it returns;
    the query is not blurred). Observers:

    * ``complete``: d(o_k, x0) for every k (K values per distance);
    * ``progressive``: d(o_k, o_{k-1}) for k = 2..K (K - 1 values);
    * ``oneshot``: d(o_K, x0), the final output only (1 value).

    Distances (``distances``): PSNR, DSSIM = (1 - SSIM)/2, RMSE (``skimage.metrics``, data range 2) and
    ``feature``: the L2 distance between embeddings of :class:`FeatureNet` (a fixed, seeded, randomly
    initialised ResNet-18 cut before fc; no pretrained weights can be downloaded, see its docstring).

    Learned: for every (observer, distance set, classifier) a scikit-learn classifier is fit on the
    calibration rows (``fit(features, is_member)``): logistic regression and SVM (on standardised
    features; the SVM's P(member) by cross-validated Platt scaling of its decision function), decision
    tree, Gaussian naive Bayes, k-NN (k = 5, standardised). Distance sets are ``all`` (every chosen distance) and each
    distance alone. Score = P(member) from ``predict_proba``; variants are named
    ``{observer}/{distances}/{classifier}``, the first (primary) is ``complete/all/logreg``.

    Arguments: ``t_start`` (default 300, img2img "strength" 0.3; the paper does not fix one for pixel
    models, this is the gray-box default), ``num_steps`` (default 10 observed steps), ``observers``,
    ``distances``, ``classifiers``, ``blur`` (False), ``feature_seed`` (seed of the feature network),
    ``seed``. Queries per sample: 1 API call (``num_steps`` network evaluations on the service's side).
    """

    name = "observers"
    paper = "Cilloni, Fleming & Walter 2023, Privacy Threats in Stable Diffusion Models (arXiv 2311.09355)"
    threat_model = "black-box"
    access = "api"
    api_calls = ("transform",)
    learned = True
    _parameter_constraints = {"t_start": TIMESTEP, "num_steps": integer(1), "observers": subset_of(OBSERVERS),
                              "distances": subset_of(DISTANCES), "classifiers": subset_of(CLASSIFIERS),
                              "blur": boolean(), "feature_seed": SEED, "seed": SEED}

    def __init__(self, t_start: int = 300, num_steps: int = 10, observers=OBSERVERS, distances=DISTANCES,
                 classifiers=CLASSIFIERS, blur: bool = False, feature_seed: int = 0, seed: int = 0):
        self.t_start = t_start
        self.num_steps = num_steps
        self.observers = observers
        self.distances = distances
        self.classifiers = classifiers
        self.blur = blur
        self.feature_seed = feature_seed
        self.seed = seed

    def _queries(self, num_train_timesteps):
        """One ``transform`` call (one submitted image) per sample."""
        return 1

    def check_params(self) -> None:
        super().check_params()
        if "progressive" in self.observers and int(self.num_steps) < 2:
            raise DiffmiaError(f"{self.name}: the progressive observer needs num_steps >= 2")

    def _feature_net(self, cache: dict) -> FeatureNet:
        key = ("feature_net", int(self.feature_seed))
        if key not in cache:
            cache[key] = FeatureNet(self.feature_seed)
        return cache[key]

    def _features(self, target, images, cond, seeds, cache):
        dists = tuple(self.distances)
        api = api_view(target, self.name, needs=self.api_calls)
        transform_timesteps(self.t_start, self.num_steps, api.num_train_timesteps)   # clear errors early
        x0 = images
        requests = np.asarray([ops.stream_seed("api_request", s, seed=self.seed) for s in seeds], np.int64)
        final, inter = api.transform(x0, int(self.t_start), int(self.num_steps), seed=requests,   # (C1) Informer
                                     return_intermediates=True, **({} if cond is None else {"prompt": list(cond)}))
        outs = [inter[t].float().cpu() for t in sorted(inter, reverse=True)] if inter else [final.float().cpu()]
        if self.blur:
            outs = [box_blur(o) for o in outs]                                         # (C4)
        pix = [d for d in dists if d != "feature"]
        feats: dict[str, list] = {f"{o}_{d}": [] for o in ("complete", "progressive") for d in dists}
        net = self._feature_net(cache) if "feature" in dists else None
        emb_q = net(x0) if net is not None else None
        emb_prev = None
        for k, o in enumerate(outs):                                                   # (C2) Encoder
            if pix:
                for d, v in image_distances(o, x0, pix).items():                      # complete: d(o_k, x0)
                    feats[f"complete_{d}"].append(v)
                if k:
                    for d, v in image_distances(o, outs[k - 1], pix).items():         # progressive: d(o_k, o_k-1)
                        feats[f"progressive_{d}"].append(v)
            if emb_q is not None:
                e = net(o)
                feats["complete_feature"].append((e - emb_q).norm(dim=1).double().numpy())
                if k:
                    feats["progressive_feature"].append((e - emb_prev).norm(dim=1).double().numpy())
                emb_prev = e
        return {k: np.stack(v, axis=1) if v else np.zeros((len(x0), 0)) for k, v in feats.items()}

    def _matrix(self, features, observer: str, dists) -> np.ndarray:
        src = "progressive" if observer == "progressive" else "complete"
        cols = []
        for d in dists:
            key = f"{src}_{d}"
            if key not in features:
                raise DiffmiaError(f"{self.name}: features lack {key!r}; recompute them with these parameters")
            m = np.asarray(features[key], np.float64)
            cols.append(m[:, -1:] if observer == "oneshot" else m)          # oneshot: d(o_K, x0) only
        x = np.concatenate(cols, axis=1)
        if x.shape[1] == 0:
            raise DiffmiaError(f"{self.name}: the {observer} observer has no values (num_steps too small?)")
        if not np.isfinite(x).all():
            raise DiffmiaError(f"{self.name}: non-finite distances in the {observer} features")
        return x

    def _variants(self):
        obs, dists, clfs = tuple(self.observers), tuple(self.distances), tuple(self.classifiers)
        sets = [("all", dists)] + ([(d, (d,)) for d in dists] if len(dists) > 1 else [])
        return [(o, sname, sd, c) for o in obs for sname, sd in sets for c in clfs]

    def _fit(self, features, is_member):                                          # (C3) Classifier
        y = np.asarray(is_member).astype(bool)
        n = len(next(iter(features.values()))) if features else 0
        if len(y) != n:
            raise DiffmiaError(f"{self.name}: {len(y)} labels for {n} feature rows")
        if y.sum() < 2 or (~y).sum() < 2:
            raise DiffmiaError(f"{self.name}: fitting needs at least 2 members and 2 non-members in the "
                               f"calibration rows, got {int(y.sum())} and {int((~y).sum())}")
        self.models_ = {}
        for o, sname, sd, c in self._variants():
            m = _classifier(c, len(y), int(self.seed), int(min(y.sum(), (~y).sum())))
            m.fit(self._matrix(features, o, sd), y)
            self.models_[f"{o}/{sname}/{c}"] = m

    def _scores(self, features):
        out = {}
        for o, sname, sd, c in self._variants():
            key = f"{o}/{sname}/{c}"
            if key not in self.models_:
                raise DiffmiaError(f"{self.name}: no classifier for {key}; refit after changing parameters")
            m = self.models_[key]
            pos = list(m.classes_).index(True)
            out[key] = m.predict_proba(self._matrix(features, o, sd))[:, pos]     # P(member)
        return out
