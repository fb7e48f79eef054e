"""Train a continuous-time (VP-SDE) target: the generic trainer for any diffusers UNet and data tensor.

Objective (Song et al. 2021, "Score-Based Generative Modeling through SDEs", in the eps form Grad-TTS
trains; Popov et al. 2021): t ~ U(1/grid, 1) continuous, eps ~ N(0, I),
x_t = sqrt(abar(t)) x_0 + sqrt(1 - abar(t)) eps with log abar(t) = -(beta_min t + (beta_max - beta_min) t^2 / 2)
(``ops.vp_alpha_bar``), loss = mean ||eps_theta(x_t, t * time_scale) - eps||^2. Weighting every t alike in
the eps form is the score-matching loss with lambda(t) = 1 - abar(t) (Song et al. eq. 7).

The machinery is diffmia train's (``trainer.py``): batches from per-epoch seeded permutations and t and noise
from the ``train`` noise stream, both functions of (seed, step) only, so a resumed run gives the same weights
as an uninterrupted one; AdamW with linear warm-up, gradient clipping at norm 1, an EMA copy, atomic
checkpoints in ``checkpoint/`` every ``checkpoint_every`` steps (rerunning the call continues).

Output (a :class:`~diffmia.targets.vpsde.VPSDETarget` folder): ``unet/`` (EMA weights), ``unet_raw/``,
``sde.json``, ``training.json`` (configuration, steps, seconds, loss curve, seed, versions; ``record`` merged
in), ``split.json`` when ``split`` is given, ``train_config.json`` and ``checkpoint/``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from . import ops
from .errors import DiffmiaError
from .provenance import git_commit, hardware, library_versions
from .targets.folder import TargetFolder
from .targets.vpsde import ONE_D_CLASSES, check_sde
from .trainer import batch_positions, start_run, training_loop

GRAD_CLIP = 1.0      # global gradient-norm clipping, as diffmia train's default


@dataclass
class VPSDETrainConfig:
    """What a training folder records (``train_config.json``); a rerun with other values is refused except
    for steps, device, threads and checkpoint_every."""
    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    ema_decay: float
    checkpoint_every: int
    seed: int
    beta_min: float
    beta_max: float
    grid: int
    time_scale: float
    model_class: str
    model_config: dict = field(default_factory=dict)
    data_shape: list = field(default_factory=list)
    data_sha256: str = ""
    grad_clip: float = GRAD_CLIP
    device: str = "cpu"
    threads: int | None = None


def _as_data(data, model) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(data) if not torch.is_tensor(data) else data).float().contiguous()
    if x.ndim != 4 or len(x) == 0:
        raise DiffmiaError(f"train_vpsde: data must be N x C x H x W (N x C x 1 x L for a 1-D model), got "
                           f"shape {tuple(x.shape)}")
    if type(model).__name__ in ONE_D_CLASSES and x.shape[2] != 1:
        raise DiffmiaError(f"train_vpsde: a 1-D model trains on N x C x 1 x L data, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise DiffmiaError("train_vpsde: data contain NaN or infinite values")
    return x


def public_config(model) -> dict:
    """The model's diffusers config as JSON, without its private entries (``_use_default_values`` is a list in
    set order, which changes between processes, so a rerun would not recognise its own folder)."""
    return {k: v for k, v in json.loads(json.dumps(dict(model.config), default=str)).items() if not k.startswith("_")}


def train_vpsde(model, data, out_dir, *, ids, steps, batch_size=32, lr=1e-3, warmup_steps=50, ema_decay=0.995,
                checkpoint_every=200, seed=0, beta_min=0.1, beta_max=20.0, grid=1000, time_scale=1000.0,
                max_steps_this_run=None, threads=None, device="cpu", progress=True, split=None, record=None) -> dict:
    """Train (or resume) ``model`` on ``data`` into ``out_dir`` under the VP-SDE (module docstring).

    ``model``: a diffusers ``UNet2DModel`` (data float32 N x C x H x W) or ``UNet1DModel`` (data N x C x 1 x L;
    the model sees N x C x L) predicting eps from (x_t, t * time_scale). ``ids``: the N samples' ids (recorded).
    ``steps``: total steps; ``max_steps_this_run`` stops early (a later call resumes). ``split``: a dict written
    as split.json; ``record``: extra entries merged into training.json. Returns the training record (with
    ``complete`` False and no weights written while steps remain)."""
    folder = TargetFolder(out_dir)
    x_all = _as_data(data, model)
    ids = [int(i) if isinstance(i, (int, np.integer)) else str(i) for i in np.asarray(ids).tolist()]
    if len(ids) != len(x_all):
        raise DiffmiaError(f"train_vpsde: got {len(ids)} ids for {len(x_all)} samples")
    sde = check_sde({"beta_min": float(beta_min), "beta_max": float(beta_max), "grid": int(grid),
                     "time_scale": float(time_scale)}, "train_vpsde")
    one_d = type(model).__name__ in ONE_D_CLASSES
    cfg = VPSDETrainConfig(int(steps), int(batch_size), float(lr), int(warmup_steps), float(ema_decay),
                           int(checkpoint_every), int(seed), sde["beta_min"], sde["beta_max"], sde["grid"],
                           sde["time_scale"], type(model).__name__, public_config(model),
                           list(x_all.shape), hashlib.sha256(x_all.numpy().tobytes()).hexdigest(),
                           device=str(device), threads=threads)
    dev = start_run(folder, cfg)
    model = model.to(dev).train()
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    t_min = 1.0 / cfg.grid

    def step_loss(step):
        g = ops.generator("train", seed=cfg.seed, step=step)             # stream 'train': t and noise
        x0 = x_all[batch_positions(step, cfg.batch_size, len(x_all), cfg.seed)]
        t = t_min + (1 - t_min) * torch.rand(len(x0), generator=g, dtype=torch.float64)   # t ~ U(1/grid, 1)
        noise = torch.randn(x0.shape, generator=g)
        a = ops.vp_alpha_bar(t, cfg.beta_min, cfg.beta_max).float().view(-1, 1, 1, 1)
        x_t = (a.sqrt() * x0 + (1 - a).sqrt() * noise).to(dev)              # q(x_t | x_0)
        time_in = (t * cfg.time_scale).float().to(dev)
        out = model(x_t[:, :, 0] if one_d else x_t, time_in).sample
        out = out.unsqueeze(2) if one_d else out
        return torch.nn.functional.mse_loss(out, noise.to(dev))             # mean ||eps_theta - eps||^2

    state = training_loop("train-vpsde", model, opt, step_loss, steps=cfg.steps, lr=cfg.lr, warmup=cfg.warmup_steps,
                          checkpoint=folder.checkpoint_dir, modules={"unet_raw": model, "unet_ema": ema}, ema=ema,
                          ema_decay=cfg.ema_decay, grad_clip=GRAD_CLIP, every=cfg.checkpoint_every,
                          max_steps=max_steps_this_run, progress=progress)
    rec = {"config": asdict(cfg), "objective": "t ~ U(1/grid, 1); mean ||eps_theta(x_t, t*time_scale) - eps||^2",
           "steps": state["step"], "complete": state["step"] >= cfg.steps, "seed": cfg.seed,
           "wall_seconds": round(state["seconds"], 1),
           "seconds_per_step": round(state["seconds"] / max(1, state["step"]), 4),
           "parameters": sum(p.numel() for p in model.parameters()), "n_samples": len(x_all), "ids": ids,
           "final_loss": state["loss_curve"][-1][1] if state["loss_curve"] else None,
           "loss_curve": state["loss_curve"], "hardware": hardware(dev), "versions": library_versions(),
           "git_commit": git_commit(), "weights": {"unet": f"EMA (decay {cfg.ema_decay:g})", "unet_raw": "raw"},
           **(record or {})}
    if not rec["complete"]:
        return rec
    model.eval()
    ema.save_pretrained(folder.unet_dir("ema"), safe_serialization=True)
    model.save_pretrained(folder.unet_dir("raw"), safe_serialization=True)
    folder.sde_json.write_text(json.dumps({"type": "vp", **{k: sde[k] for k in ("beta_min", "beta_max", "grid",
                                                                                "time_scale")},
                                           "prediction_type": "epsilon"}, indent=1))
    if split is not None:
        folder.split_path.write_text(json.dumps(split, indent=1))
    folder.training_json.write_text(json.dumps(rec, indent=1, default=str))
    return rec
