"""SecMI_NNs: the learned attack of SecMI (Duan et al., ICML 2023), on the t-error map.

Paper: J. Duan, F. Kong, S. Wang, X. Shi, K. Xu, "Are Diffusion Models Vulnerable to Membership
Inference Attacks?", ICML 2023 (SecMI_NNs). Threat model: white-box query access to eps_theta plus
labelled calibration data for the attack model. The reconstruction (paper eq. 9-11) is SecMI_stat's
(``secmi.py``); instead of summing it into the t-error (eq. 13) the attack keeps the map
|x^_{t_sec-k} - x~_{t_sec-k}| and trains a network on it.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch

from ..errors import DiffmiaError
from ..targets.base import resolve_device
from .base import SEED, Attack, anything, boolean, integer, number, step
from .secmi import check_secmi_steps, secmi_reconstructions


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
    """SecMI_NNs (Duan et al. 2023): a ResNet-18 trained on calibration |x^ - x~| maps.

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
    _parameter_constraints = {
        "t_sec": step(1), "k": integer(1), "epochs": integer(1), "lr": number(0, strict=True),
        "momentum": number(0), "weight_decay": number(0), "batch_size": integer(1),
        "val_frac": number(0, 1, hi_open=True), "seed": SEED, "device": anything(), "progress": boolean()}

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

    def _queries(self, num_train_timesteps):
        (t_sec,) = check_secmi_steps((self.t_sec,), self.k, num_train_timesteps, self.name)
        return t_sec // self.k + 1

    def _features(self, target, images, cond, seeds, cache):
        x0 = target.to_model_space(images, seeds)
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

    def _fit(self, features, is_member):
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

    def _scores(self, features):
        if "map" not in features:
            raise DiffmiaError(f"{self.name}: features lack 'map' (use SecMINNs.features)")
        return {"secmi_nns": self._logits(np.asarray(features["map"], dtype=np.float32))}
