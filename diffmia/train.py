"""Train a DDPM target on the members of a split (``diffmia train``).

A ``diffusers`` ``UNet2DModel`` with epsilon prediction and a linear-beta ``DDPMScheduler``; AdamW with
linear warm-up, gradient clipping, EMA weights beside the raw ones, optional augmentation (horizontal
flip, Cutout, RandAugment) and weight decay; with ``dp_epsilon``, DP-SGD (:mod:`diffmia.dp`). Checkpoints are
written atomically every ``checkpoint_every`` steps, the one before kept as ``checkpoint.prev``; re-running the
same command continues from the newest one that loads (also after ``kill -9``; an unreadable one is set aside
with a warning). Batches and noise (DP-SGD's too) depend only on (seed, step), so a resumed run equals an
uninterrupted one.

Output folder = a target (layout: :class:`~diffmia.targets.folder.TargetFolder`): ``unet/`` (EMA),
``unet_raw/``, ``scheduler/``, ``model_index.json`` (so ``diffusers.DDPMPipeline.from_pretrained`` opens
it), ``split.json``, ``training.json`` (with the samples' KID, ``quality_samples`` images: ``quality.py``),
``samples.png``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from . import ops
from .data import MembershipSplit, load_dataset, to_model_input
from .errors import DiffmiaError
from .provenance import git_commit, hardware, library_versions
from .quality import training_quality
from .targets.folder import TargetFolder, sample_size
from .trainer import batch_positions, start_run, training_loop


@dataclass
class TrainConfig:
    data: str = "fashion-mnist"
    data_root: str | None = None
    split: str | None = None          # an existing split file; else drawn with split_seed
    n_members: int = 256
    n_nonmembers: int | None = None   # default: as many as members
    split_seed: int = 0
    image_size: int = 32
    channels: tuple[int, ...] = (16, 32, 32)
    layers_per_block: int = 1
    attention: bool = False           # attention blocks at the lowest resolution
    norm_num_groups: int = 8
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    steps: int = 6000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0         # AdamW decoupled weight decay (an l2-style defence)
    grad_clip: float = 1.0            # global gradient-norm clipping (not with DP: per-sample clipping replaces it)
    dp_epsilon: float | None = None   # DP-SGD to (epsilon, delta) over `steps` steps (None: no DP); diffmia/dp.py
    dp_delta: float | None = None     # default min(1e-5, n_members^-1.1), always below 1/n (dp.default_delta)
    max_grad_norm: float = 1.0        # DP-SGD per-sample clipping norm C (used only with dp_epsilon)
    dp_accountant: str = "rdp"        # rdp | prv (Opacus accountants; prv is tighter)
    ema_decay: float = 0.999
    hflip: bool = False
    cutout: int = 0                   # side of the Cutout square in pixels (0 = off)
    randaugment: bool = False
    seed: int = 0
    checkpoint_every: int = 500
    sample_grid: int = 64             # images in samples.png (0 = none)
    sample_steps: int = 1000
    quality_samples: int = 256        # generated images for the KID in training.json (0 = none; diffmia/quality.py)
    device: str = "auto"
    threads: int | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise DiffmiaError(f"unknown training options: {sorted(unknown)}")
        d = dict(d)
        if "channels" in d:
            d["channels"] = tuple(d["channels"])
        return cls(**d)


def build_unet(cfg: TrainConfig, in_channels: int):
    from diffusers import UNet2DModel

    n = len(cfg.channels)
    down = ["DownBlock2D"] * n
    up = ["UpBlock2D"] * n
    if cfg.attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(sample_size=cfg.image_size, in_channels=in_channels, out_channels=in_channels,
                       block_out_channels=tuple(cfg.channels), layers_per_block=cfg.layers_per_block,
                       down_block_types=tuple(down), up_block_types=tuple(up),
                       norm_num_groups=cfg.norm_num_groups)


def build_scheduler(cfg: TrainConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_start=cfg.beta_start,
                         beta_end=cfg.beta_end, beta_schedule="linear", prediction_type="epsilon",
                         clip_sample=True)


def augment(x: torch.Tensor, cfg: TrainConfig, g: torch.Generator) -> torch.Tensor:
    if cfg.randaugment:
        from torchvision.transforms import v2

        ra = v2.RandAugment()
        u8 = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        torch.manual_seed(int(torch.randint(0, 2 ** 31, (1,), generator=g)))
        x = torch.stack([ra(im) for im in u8]).float() / 127.5 - 1
    if cfg.hflip:
        flip = torch.rand(x.shape[0], generator=g) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    if cfg.cutout:
        h, w = x.shape[-2:]
        cy = torch.randint(0, h, (x.shape[0],), generator=g)
        cx = torch.randint(0, w, (x.shape[0],), generator=g)
        yy = torch.arange(h).view(1, h, 1)
        xx = torch.arange(w).view(1, 1, w)
        r = cfg.cutout // 2
        box = ((yy - cy.view(-1, 1, 1)).abs() <= r) & ((xx - cx.view(-1, 1, 1)).abs() <= r)
        x = x.masked_fill(box.unsqueeze(1), 0.0)
    return x


# ----------------------------------------------------------------------------- training
def train(cfg: TrainConfig, out_dir, progress: bool = True, command: str | None = None,
          max_steps_this_run: int | None = None) -> Path:
    """Train (or resume) a target into ``out_dir``. ``max_steps_this_run`` stops early (for tests of
    resume); the folder is a loadable target only once all ``cfg.steps`` are done."""
    from .dp import check_options

    check_options(cfg)
    folder = TargetFolder(out_dir)
    out = folder.path
    free = ("device", "threads", "checkpoint_every", "sample_grid", "sample_steps", "quality_samples")
    # with DP the number of steps sets the noise, so a resume must keep it
    device = start_run(folder, cfg, free=free if cfg.dp_epsilon is not None else ("steps", *free))
    cfg_dict = asdict(cfg)

    data = load_dataset(cfg.data, cfg.data_root)
    if cfg.split:
        split = MembershipSplit.load(cfg.split)
    elif folder.split_path.exists():
        split = MembershipSplit.load(folder.split_path)
    else:
        split = MembershipSplit.random(data, cfg.n_members, cfg.n_nonmembers, seed=cfg.split_seed)
    split.meta.setdefault("train_data", cfg.data)
    split.save(folder.split_path)
    members, _ = split.select(data)
    members = data.subset(split.members)
    x_all = to_model_input(members.images, cfg.image_size)

    torch.manual_seed(cfg.seed)
    unet = build_unet(cfg, x_all.shape[1]).to(device)
    ema = build_unet(cfg, x_all.shape[1]).to(device)
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    sched = build_scheduler(cfg)
    abar = sched.alphas_cumprod.to(device)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    n_params = sum(p.numel() for p in unet.parameters())
    unet.train()
    dp, net = None, unet
    if cfg.dp_epsilon is not None:
        from .dp import DPSGD

        dp = DPSGD(cfg, unet, opt, len(x_all))     # per-sample gradients, clipping, noise, accountant
        net, opt = dp.model, dp.optimizer

    def step_loss(step):
        g = ops.generator("train", seed=cfg.seed, step=step)    # stream 'train': augmentation, t and noise
        if dp is not None:
            dp.before_step(step)                                # streams 'dp_batch' and 'dp_noise'
        pos = dp.batch(step) if dp is not None else batch_positions(step, cfg.batch_size, len(x_all), cfg.seed)
        if len(pos) == 0:
            return None                                         # an empty Poisson batch: a noise-only step
        x0 = augment(x_all[pos], cfg, g).to(device)
        t = torch.randint(0, cfg.num_train_timesteps, (x0.shape[0],), generator=g).to(device)
        noise = torch.randn(x0.shape, generator=g).to(device)
        a = abar[t].float().view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise           # q(x_t | x_0)
        return torch.nn.functional.mse_loss(net(x_t, t).sample, noise)  # DDPM L_simple

    # With DP the EMA copy is post-processing of the private weights: the guarantee covers it too.
    state = training_loop("train", unet, opt, step_loss, steps=cfg.steps, lr=cfg.lr, warmup=cfg.warmup_steps,
                          checkpoint=folder.checkpoint_dir, modules={"unet_raw": unet, "unet_ema": ema}, ema=ema,
                          ema_decay=cfg.ema_decay, grad_clip=0.0 if dp is not None else cfg.grad_clip,
                          every=cfg.checkpoint_every, max_steps=max_steps_this_run, progress=progress,
                          stateful=None if dp is None else {"dp": dp})
    if state["step"] < cfg.steps:
        return out

    unet.eval()
    ema.eval()
    ema.save_pretrained(folder.unet_dir("ema"), safe_serialization=True)
    unet.save_pretrained(folder.unet_dir("raw"), safe_serialization=True)
    sched.save_pretrained(folder.scheduler_dir)
    folder.model_index_json.write_text(json.dumps(
        {"_class_name": "DDPMPipeline", "_diffusers_version": library_versions()["diffusers"],
         "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}, indent=1))
    record = {
        "config": cfg_dict, "command": command, "steps": state["step"],
        "wall_seconds": round(state["seconds"], 1),
        "seconds_per_step": round(state["seconds"] / max(1, state["step"]), 4),
        "parameters": n_params, "n_members": len(split.members),
        "final_loss": state["loss_curve"][-1][1] if state["loss_curve"] else None,
        "loss_curve": state["loss_curve"], "hardware": hardware(device),
        "versions": library_versions(), "git_commit": git_commit(),
        "weights": {"unet": "EMA (decay %g)" % cfg.ema_decay, "unet_raw": "raw"},
        "quality": training_quality(ema, sched, cfg, split, device),   # KID of the EMA weights' samples
    }
    if dp is not None:
        record["dp"] = dp.record()
    folder.training_json.write_text(json.dumps(record, indent=1))
    if cfg.sample_grid:
        save_sample_grid(ema, sched, folder.samples_png, cfg.sample_grid, cfg.sample_steps,
                         device, seed=cfg.seed, progress=progress)
    return out


@torch.inference_mode()
def sample(unet, scheduler, n: int, steps: int, device, seed: int = 0, progress: bool = False):
    """Ancestral DDPM sampling (diffusers ``DDPMScheduler.step``); returns [-1, 1] images."""
    from diffusers import DDPMScheduler
    from tqdm.auto import tqdm

    sched = DDPMScheduler.from_config(scheduler.config)
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    size = sample_size(unet.config)
    x = torch.randn((n, unet.config.in_channels, size, size), generator=g).to(device)
    for t in tqdm(sched.timesteps, disable=not progress, desc="sample"):
        eps = unet(x, t).sample
        x = sched.step(eps, t, x, generator=g).prev_sample
    return x.clamp(-1, 1)


def save_sample_grid(unet, scheduler, path, n: int = 64, steps: int = 1000, device="cpu", seed=0,
                     progress=False) -> None:
    from torchvision.utils import save_image

    x = sample(unet, scheduler, n, steps, device, seed, progress)
    save_image((x + 1) / 2, path, nrow=int(math.ceil(math.sqrt(n))), padding=2)
