"""DP-SGD for ``diffmia train --dp-epsilon E`` (Abadi et al. 2016), with Opacus.

Each step draws a Poisson batch (every member independently with probability q = batch_size / n_members),
computes per-sample gradients (Opacus ``GradSampleModule``: hooks on the UNet's own Conv2d, Linear and
GroupNorm layers), clips each to norm ``max_grad_norm`` (C), sums them, adds Gaussian noise of standard
deviation sigma * C and divides by the expected batch size (Opacus ``DPOptimizer`` around AdamW). sigma (the
noise multiplier) is the smallest that keeps the whole run of ``steps`` steps at (target epsilon, delta)
under the chosen accountant (Opacus ``get_noise_multiplier``: RDP, or PRV, which is tighter); the accountant
then counts every step actually taken, and the epsilon it reports at the end is the one recorded.

What diffmia does itself rather than through Opacus' ``PrivacyEngine``/``DPDataLoader``: the Poisson batch and
the noise are drawn from generators seeded by (seed, step) (streams ``dp_batch`` and ``dp_noise`` of
:mod:`diffmia.ops`), so that, like plain training, a resumed run equals an uninterrupted one bit for bit. The
accountant's history is saved in every checkpoint's state.json and restored on resume. An empty Poisson batch
(possible: probability (1 - q)^n) is a step with noise only, counted by the accountant. With DP the per-sample
clipping replaces the global gradient clipping (``grad_clip`` is not used); AdamW's update and weight decay, the
learning-rate warm-up and the EMA copy only process the noised gradients and the weights (post-processing: the
privacy guarantee is unchanged). The noise is not Opacus' ``secure_mode`` (floating-point-attack resistant),
which cannot be seeded: fine for audits and experiments, not for a deployment that must resist those attacks.

The guarantee covers the weights (raw and EMA) and anything computed from them (samples.png); the loss curve in
training.json is computed on the members without noise and is not covered.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from . import ops
from .errors import DiffmiaError

ACCOUNTANTS = ("rdp", "prv")


def default_delta(n_members: int) -> float:
    """delta = min(1e-5, n^-1.1): 1e-5 is the usual value (Abadi et al. on MNIST, the Opacus examples) and is far
    below 1/n for the member sets diffmia trains on; n^-1.1 takes over above about 35,000 members, so delta
    always stays below 1/n (a mechanism with delta near 1/n may publish a whole member)."""
    return min(1e-5, float(n_members) ** -1.1)


def check_options(cfg) -> None:
    """Refuse DP options out of range (one line each), before anything is written."""
    def bad(x):
        return not isinstance(x, (int, float)) or not math.isfinite(x)

    if bad(cfg.max_grad_norm) or cfg.max_grad_norm <= 0:
        raise DiffmiaError(f"--max-grad-norm (per-sample clipping norm) must be a positive number, got "
                           f"{cfg.max_grad_norm}")
    if cfg.dp_epsilon is not None and (bad(cfg.dp_epsilon) or cfg.dp_epsilon <= 0):
        raise DiffmiaError(f"--dp-epsilon must be a positive number, got {cfg.dp_epsilon}")
    if cfg.dp_delta is not None and (bad(cfg.dp_delta) or not 0 < cfg.dp_delta < 1):
        raise DiffmiaError(f"--dp-delta must be in (0, 1) (and well below 1/n-members), got {cfg.dp_delta}")
    if cfg.dp_delta is not None and cfg.dp_epsilon is None:
        raise DiffmiaError("--dp-delta needs --dp-epsilon (DP-SGD is off without a target epsilon)")
    if cfg.dp_accountant not in ACCOUNTANTS:
        raise DiffmiaError(f"--dp-accountant must be one of {', '.join(ACCOUNTANTS)}, got {cfg.dp_accountant!r}")


def check_model(model: torch.nn.Module) -> None:
    """Refuse a model DP-SGD cannot train honestly, naming its layers: per-sample gradients need every layer to
    treat each example on its own (no BatchNorm, which also mixes examples when it has no parameters) and
    trainable layers without batch statistics (Opacus ``ModuleValidator`` and ``GradSampleModule.validate``).
    Nothing is replaced automatically: Opacus' fixes (BatchNorm -> GroupNorm, its own attention/LSTM layers)
    change the layers and so the saved target. The diffusers UNet (GroupNorm, Conv2d, Linear) passes."""
    from opacus.validators import ModuleValidator

    bad = []
    for name, m in model.named_modules():
        why = []
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            why.append("normalises with statistics of the whole batch")
        elif any(p.requires_grad for p in m.parameters(recurse=False)):
            validator = ModuleValidator.VALIDATORS.get(type(m))
            why += [str(e).strip() for e in (validator(m) if validator else [])]
            if list(m.buffers(recurse=False)):
                why.append("a trainable layer with buffers")
        if why:
            bad.append(f"{name or '<model>'} ({type(m).__name__}: {'; '.join(why)})")
    if bad:
        raise DiffmiaError(f"DP-SGD cannot train this model: {', '.join(bad)}. Use layers that treat each example "
                           "on its own (GroupNorm instead of BatchNorm) or train without --dp-epsilon")


def poisson_batch(n: int, sample_rate: float, seed: int, step: int) -> np.ndarray:
    """Positions (of ``n`` members) in the Poisson batch of ``step``: each independently with probability
    ``sample_rate``, drawn from stream ``dp_batch`` of (seed, step); may be empty."""
    g = ops.generator("dp_batch", seed=seed, step=step)
    return torch.nonzero(torch.rand(n, generator=g) < sample_rate).flatten().numpy()


def _optimizer_class():
    from opacus.optimizers import DPOptimizer

    class PoissonDPOptimizer(DPOptimizer):
        """DPOptimizer that also takes a step after an empty Poisson batch (no forward pass, so no per-sample
        gradients: the step is the noise alone, divided by the expected batch size, and is accounted)."""

        def pre_step(self, closure=None):
            if all(getattr(p, "grad_sample", None) is None for p in self.params):
                for p in self.params:
                    p.grad_sample = p.new_zeros((0, *p.shape))
            return super().pre_step(closure)

    return PoissonDPOptimizer


class DPSGD:
    """One run's DP-SGD: wraps ``model`` (per-sample gradients) and ``optimizer`` (clip, noise, account).
    Train through ``self.model`` and ``self.optimizer``; ``batch(step)`` gives the step's member positions and
    ``before_step(step)`` seeds its noise. ``state_dict``/``load_state_dict``: the accountant's history (JSON)."""

    def __init__(self, cfg, model: torch.nn.Module, optimizer, n_members: int):
        from opacus import GradSampleModule
        from opacus.accountants import create_accountant
        from opacus.accountants.utils import get_noise_multiplier

        if cfg.batch_size > n_members:
            raise DiffmiaError(f"with --dp-epsilon the batch size is the expected Poisson batch and must be at most "
                               f"the {n_members} members, got --batch-size {cfg.batch_size}")
        check_model(model)
        self.cfg, self.n = cfg, n_members
        self.delta = cfg.dp_delta if cfg.dp_delta is not None else default_delta(n_members)
        self.sample_rate = cfg.batch_size / n_members
        try:
            with warnings.catch_warnings():         # Opacus' RDP notes on the search's trial noise levels
                warnings.simplefilter("ignore")
                self.noise_multiplier = get_noise_multiplier(
                    target_epsilon=cfg.dp_epsilon, target_delta=self.delta, sample_rate=self.sample_rate,
                    steps=cfg.steps, accountant=cfg.dp_accountant)
        except ValueError as e:
            raise DiffmiaError(f"no noise multiplier reaches epsilon {cfg.dp_epsilon} at delta {self.delta:g} in "
                               f"{cfg.steps} steps ({e}); raise --dp-epsilon or lower --steps") from None
        # Opacus' hooks fire on module outputs since the noisy images do not require gradients: expected, harmless
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed with "
                                "respect to module outputs")
        self.model = GradSampleModule(model, loss_reduction="mean")
        self.optimizer = _optimizer_class()(optimizer, noise_multiplier=self.noise_multiplier,
                                            max_grad_norm=cfg.max_grad_norm, expected_batch_size=cfg.batch_size)
        self.accountant = create_accountant(mechanism=cfg.dp_accountant)
        self.optimizer.attach_step_hook(self.accountant.get_optimizer_hook_fn(sample_rate=self.sample_rate))
        self.device = next(model.parameters()).device

    def batch(self, step: int) -> np.ndarray:
        return poisson_batch(self.n, self.sample_rate, self.cfg.seed, step)

    def before_step(self, step: int) -> None:
        self.optimizer.generator = ops.generator("dp_noise", device=self.device, seed=self.cfg.seed, step=step)

    def epsilon(self) -> tuple[float, str | None]:
        """The epsilon spent so far, and a note when RDP's best order is the largest Opacus tries (then epsilon
        is a valid but loose bound)."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            eps = float(self.accountant.get_epsilon(delta=self.delta))
        loose = any("largest alpha" in str(w.message) for w in caught)
        return eps, ("the RDP bound's best order is the largest tried: epsilon is an upper bound that "
                     "--dp-accountant prv may tighten") if loose else None

    def state_dict(self) -> dict:
        return {"mechanism": self.accountant.mechanism(), "history": [list(h) for h in self.accountant.history]}

    def load_state_dict(self, state: dict) -> None:
        history = [(float(s), float(q), int(k)) for s, q, k in state["history"]]
        if any(s < 0 or not 0 < q <= 1 or k < 1 for s, q, k in history):
            raise ValueError(f"not an accountant history: {state['history']}")
        self.accountant.load_state_dict({"mechanism": state["mechanism"], "history": history})

    def record(self) -> dict:
        """What training.json says about the privacy of the run."""
        import opacus

        cfg = self.cfg
        eps, note = self.epsilon()
        return {"epsilon": eps, **({"note": note} if note else {}), "target_epsilon": cfg.dp_epsilon,
                "delta": self.delta, "delta_given": cfg.dp_delta is not None, "noise_multiplier": self.noise_multiplier,
                "sample_rate": self.sample_rate, "expected_batch_size": cfg.batch_size,
                "steps": sum(k for _, _, k in self.accountant.history), "max_grad_norm": cfg.max_grad_norm,
                "accountant": cfg.dp_accountant, "opacus": opacus.__version__,
                "sampling": "Poisson, seeded by (seed, step)",
                "covers": "the weights (unet_raw; unet, their EMA, is post-processing) and samples.png; "
                          "not the loss curve"}
