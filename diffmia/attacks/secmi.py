"""SecMI: Step-wise Error Comparing Membership Inference (Duan et al., ICML 2023). SPEC 3.5.

Paper: J. Duan, F. Kong, S. Wang, X. Shi, K. Xu, "Are Diffusion Models Vulnerable to Membership
Inference Attacks?", ICML 2023. Threat model: white-box query access to eps_theta (no weights or
gradients are read, only noise predictions).

The t-error (paper Definition 4.1, eq. 13) with DDIM(k) steps tau_i = i*k:

* deterministic inversion (paper eq. 9-10, the reverse DDIM map Phi_theta): x~_0 = x0 and for
  i = 0 .. t_sec/k - 1, x~_{tau_{i+1}} = DDIM move tau_i -> tau_{i+1} with e = eps_theta(x~_{tau_i}, tau_i);
* one deterministic denoising step (paper eq. 11, Psi_theta): x^_{t_sec-k} = DDIM move t_sec -> t_sec-k
  with e = eps_theta(x~_{t_sec}, t_sec);
* t-error = sum_pixels (x^_{t_sec-k} - x~_{t_sec-k})^2 (the reference code compares at t_sec - k).

Members are reconstructed more faithfully, so they have smaller t-errors.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch

from .. import ops
from ..errors import DiffmiaError
from ..targets.base import resolve_device
from .base import Attack, check_images

# ---------------------------------------------------------------------------------------------------------
# the shared computation


def _check_secmi_steps(t_secs, k: int, num_train_timesteps: int, name: str) -> tuple[int, ...]:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise DiffmiaError(f"{name}: k (the DDIM interval) must be a positive integer, got {k!r}")
    ts = tuple(sorted({int(t) for t in t_secs}))
    if not ts:
        raise DiffmiaError(f"{name}: no t_sec given")
    for t in ts:
        if t < k or t % k:
            raise DiffmiaError(f"{name}: t_sec={t} must be a positive multiple of k={k} (steps tau_i = i*k)")
        if t >= num_train_timesteps:
            raise DiffmiaError(f"{name}: t_sec={t} outside 0..{num_train_timesteps - 1}")
    return ts


def secmi_reconstructions(target, x0: torch.Tensor, t_secs, k: int, cond=None, name: str = "secmi"):
    """For each t_sec: (x^_{t_sec-k}, x~_{t_sec-k}) from ONE inversion trajectory up to max(t_secs).

    Queries per sample: max(t_secs)/k (inversion) + 1 (eps at the last inverted step). The denoising move
    at a smaller t_sec uses eps_theta(x~_{t_sec}, t_sec), which the inversion already evaluated (it is
    the noise estimate of the move t_sec -> t_sec + k), so smaller t_secs cost no extra query.
    """
    ts = _check_secmi_steps(t_secs, k, target.num_train_timesteps, name)
    abar = target.alphas_cumprod
    t_max = ts[-1]
    xs = {0: x0}                       # x~_{tau_i}
    es = {}                            # eps_theta(x~_{tau_i}, tau_i)
    x = x0
    for i in range(t_max // k):        # inversion tau_i -> tau_{i+1} (eq. 10)
        s, t = i * k, (i + 1) * k
        es[s] = target.eps(x, s, cond)
        x = ops.ddim_move(abar, x, s, t, es[s])
        xs[t] = x
    es[t_max] = target.eps(xs[t_max], t_max, cond)
    out = {}
    for t in ts:                       # one denoising step t_sec -> t_sec - k (eq. 11)
        x_hat = ops.ddim_move(abar, xs[t], t, t - k, es[t])
        out[t] = (x_hat, xs[t - k])
    return out


# ---------------------------------------------------------------------------------------------------------
# SecMI_stat


class SecMIStat(Attack):
    """SecMI_stat (Duan et al. 2023, SPEC 3.5): score = -t-error at ``t_sec`` with DDIM interval ``k``.

    Threat model: white-box query access. Arguments: ``t_sec`` (default 100), ``k`` (default 10; t_sec
    must be a multiple of k), ``t_secs``: optional extra t_sec values scored from the same inversion
    trajectory (variants ``secmi[t_sec=...]``; the primary score stays at ``t_sec``).
    Queries per sample: max(t_sec, *t_secs)/k + 1 (11 at the defaults). A sweep below t_sec is free;
    one above it extends the inversion by one query per k steps.
    Higher score (smaller t-error) = member.
    """

    name = "secmi"
    paper = "Duan et al. 2023, Are Diffusion Models Vulnerable to Membership Inference Attacks? (SecMI_stat)"
    threat_model = "white-box"

    def __init__(self, t_sec: int = 100, k: int = 10, t_secs=None):
        self.t_sec = t_sec
        self.k = k
        self.t_secs = t_secs

    def _all_t(self) -> tuple[int, ...]:
        extra = () if self.t_secs is None else tuple(int(t) for t in self.t_secs)
        return tuple(sorted({int(self.t_sec), *extra}))

    def queries_per_sample(self) -> int:
        ts = _check_secmi_steps(self._all_t(), self.k, 2 ** 62, self.name)   # T checked in features()
        return max(ts) // self.k + 1

    def features(self, target, images, cond=None, seeds=None):
        x0 = target.to_model_space(check_images(images, self.name))
        rec = secmi_reconstructions(target, x0, self._all_t(), self.k, cond, self.name)
        # t-error (eq. 13): squared L2 distance summed over pixels
        return {f"terr_{t}": ops.sum_sq(xh - xt).double().cpu().numpy() for t, (xh, xt) in rec.items()}

    def scores(self, features):
        key = f"terr_{int(self.t_sec)}"
        if key not in features:
            raise DiffmiaError(f"{self.name}: features lack {key}; score with the t_sec they were computed with")
        out = {"secmi": -features[key]}                       # SecMI_stat: score = -t-error
        if self.t_secs is not None:
            for t in self._all_t():
                out[f"secmi[t_sec={t}]"] = -features[f"terr_{t}"]
        return out


# ---------------------------------------------------------------------------------------------------------
# SecMI_NNs


def _resnet18(in_channels: int):
    """torchvision ResNet-18 with one output, a 3x3 stride-1 stem and no max-pool (small images)."""
    from torchvision.models import resnet18

    net = resnet18(num_classes=1)
    net.conv1 = torch.nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = torch.nn.Identity()
    return net


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else float("nan")


class SecMINNs(Attack):
    """SecMI_NNs (Duan et al. 2023, SPEC 3.5): a ResNet-18 trained on calibration |x^ - x~| maps.

    Threat model: white-box query access (plus labelled calibration data for the attack model).
    Features: the map |x^_{t_sec-k} - x~_{t_sec-k}| (N x C x H x W) of the SecMI reconstruction
    (queries per sample t_sec/k + 1, 11 by default). ``fit(features, is_member)`` trains a torchvision
    ResNet-18 (3x3 stride-1 stem, no max-pool, C input channels, one output) on the rows given (the
    runner passes calibration rows only): SGD ``lr`` 1e-3, momentum 0.9, weight decay 5e-4, batch 128,
    ``epochs`` 15 (the paper's settings). A seeded, stratified ``val_frac`` (20%) of those rows is held
    out; the epoch with the best validation AUC (ties: lower validation loss) is kept. Inputs are
    divided by one scale learned on the training rows (their RMS). ``device``: where the attack model
    trains ('auto': a CUDA GPU when there is one). Deterministic for a given ``seed`` on CPU. A CPU fit
    on ~500 maps of 1x32x32 takes a few minutes (see the project report). Score = the model's logit
    (higher = member).
    """

    name = "secmi_nns"
    paper = "Duan et al. 2023, Are Diffusion Models Vulnerable to Membership Inference Attacks? (SecMI_NNs)"
    threat_model = "white-box"
    learned = True

    def __init__(self, t_sec: int = 100, k: int = 10, epochs: int = 15, lr: float = 1e-3,
                 momentum: float = 0.9, weight_decay: float = 5e-4, batch_size: int = 128,
                 val_frac: float = 0.2, seed: int = 0, device: str = "auto", progress: bool = True):
        self.t_sec = t_sec
        self.k = k
        self.epochs = epochs
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.val_frac = val_frac
        self.seed = seed
        self.device = device
        self.progress = progress

    def queries_per_sample(self) -> int:
        (t_sec,) = _check_secmi_steps((self.t_sec,), self.k, 2 ** 62, self.name)   # T checked in features()
        return t_sec // self.k + 1

    def features(self, target, images, cond=None, seeds=None):
        x0 = target.to_model_space(check_images(images, self.name))
        (x_hat, x_tilde), = secmi_reconstructions(target, x0, (self.t_sec,), self.k, cond, self.name).values()
        return {"map": (x_hat - x_tilde).abs().float().cpu().numpy()}

    # -- training
    def _split(self, y: np.ndarray):
        """Seeded stratified split of the given rows into (train, validation) indices."""
        rng = np.random.default_rng(self.seed)
        tr, va = [], []
        for c in (0, 1):
            idx = rng.permutation(np.flatnonzero(y == c))
            n_va = int(round(len(idx) * self.val_frac))
            if self.val_frac > 0:
                n_va = min(max(n_va, 1), len(idx) - 1)
            va.append(idx[:n_va])
            tr.append(idx[n_va:])
        return np.sort(np.concatenate(tr)), np.sort(np.concatenate(va))

    def _logits(self, x: np.ndarray, batch: int = 256) -> np.ndarray:
        net = self.model_
        net.eval()
        out = []
        with torch.inference_mode():
            for i in range(0, len(x), batch):
                xb = torch.as_tensor(x[i:i + batch], dtype=torch.float32, device=self.device_) / self.scale_
                out.append(net(xb).squeeze(1).double().cpu())
        return torch.cat(out).numpy()

    def fit(self, features, is_member):
        from tqdm.auto import tqdm

        if "map" not in features:
            raise DiffmiaError(f"{self.name}: features lack 'map' (use SecMINNs.features)")
        x = np.asarray(features["map"], dtype=np.float32)
        y = np.asarray(is_member).astype(bool)
        if x.ndim != 4 or len(x) != len(y):
            raise DiffmiaError(f"{self.name}: got {x.shape} maps for {len(y)} labels")
        if min(y.sum(), (~y).sum()) < 2:
            raise DiffmiaError(f"{self.name}: fit needs at least 2 members and 2 non-members "
                               f"(got {int(y.sum())} and {int((~y).sum())})")
        if self.epochs < 1 or self.batch_size < 1 or not 0 <= self.val_frac < 1:
            raise DiffmiaError(f"{self.name}: need epochs >= 1, batch_size >= 1 and 0 <= val_frac < 1")
        tr, va = self._split(y.astype(int))
        self.device_ = resolve_device(self.device) if isinstance(self.device, str) else self.device
        start = time.perf_counter()
        self.scale_ = float(np.sqrt(np.mean(x[tr].astype(np.float64) ** 2))) or 1.0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = _resnet18(x.shape[1]).to(self.device_)
            self.model_ = net
            opt = torch.optim.SGD(net.parameters(), lr=self.lr, momentum=self.momentum,
                                  weight_decay=self.weight_decay)
            gen = torch.Generator().manual_seed(self.seed)
            xt = torch.as_tensor(x[tr], device=self.device_) / self.scale_
            yt = torch.as_tensor(y[tr], dtype=torch.float32, device=self.device_)
            lossf = torch.nn.BCEWithLogitsLoss()
            best, best_key, history = None, None, []
            bar = tqdm(range(self.epochs), desc=f"{self.name} fit", disable=not self.progress, leave=False)
            for epoch in bar:
                net.train()
                perm = torch.randperm(len(tr), generator=gen).to(self.device_)
                total = 0.0
                for i in range(0, len(tr), self.batch_size):
                    b = perm[i:i + self.batch_size]
                    if len(b) < 2:          # BatchNorm cannot train on a single sample
                        continue
                    loss = lossf(net(xt[b]).squeeze(1), yt[b])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += loss.item() * len(b)
                rec = {"epoch": epoch + 1, "train_loss": total / len(tr)}
                if len(va):
                    s = self._logits(x[va])
                    yv = y[va].astype(float)
                    rec["val_auc"] = _auc(y[va].astype(int), s)
                    rec["val_loss"] = float(np.mean(np.logaddexp(0, s) - yv * s))   # BCE with logits
                    key = (rec["val_auc"], -rec["val_loss"])
                else:
                    key = (epoch,)          # no validation: keep the last epoch
                history.append(rec)
                if best_key is None or key > best_key:
                    best_key, best = key, (epoch + 1, copy.deepcopy(net.state_dict()))
                bar.set_postfix({k: round(v, 3) for k, v in rec.items() if k != "epoch"})
            net.load_state_dict(best[1])
        self.best_epoch_ = best[0]
        self.history_ = history
        self.fit_seconds_ = time.perf_counter() - start
        self.fitted_ = True
        return self

    def scores(self, features):
        if not getattr(self, "fitted_", False):
            raise DiffmiaError(f"{self.name} is a learned attack: call fit(...) on calibration features first")
        if "map" not in features:
            raise DiffmiaError(f"{self.name}: features lack 'map' (use SecMINNs.features)")
        return {"secmi_nns": self._logits(np.asarray(features["map"], dtype=np.float32))}
