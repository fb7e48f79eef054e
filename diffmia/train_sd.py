"""Train a tiny text-to-image latent diffusion model (``diffmia train-sd``): the shipped SD reference target.

Three parts, as in Stable Diffusion, all built from configurations (``sd_parts.py``) and trained here:

1. an AutoencoderKL trained on images **disjoint from the membership split** (Fashion-MNIST's test set by
   default: the autoencoder is public infrastructure, membership is the UNet's), reconstruction + a small
   KL term; its ``scaling_factor`` is set to 1 / std of the latents, as Stable Diffusion does;
2. a tokenizer whose BPE vocabulary is made from the caption corpus (deterministic) and a CLIP text encoder with fixed,
   seeded random weights (no pretrained CLIP can be downloaded; the UNet learns to read its features);
3. a UNet2DConditionModel trained with the DDPM loss on the members' latents and captions (captions measured
   from each image: class plus brightness, width and fill), the caption dropped for 10% of the examples so
   the empty prompt and classifier-free guidance mean something; EMA weights in ``unet/``, raw in
   ``unet_raw/``.

The folder is a ``StableDiffusionPipeline`` folder plus diffmia's records: split.json, captions.csv,
replacement_captions.csv, training.json, samples.png (a grid of samples, one row per caption). Both stages
checkpoint atomically and resume when the command is rerun; batches, timesteps and noise depend only on
(seed, step), so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import ops
from .data import MembershipSplit, load_dataset, to_model_input
from .data.captions import fashion_mnist_captions
from .provenance import git_commit, hardware, library_versions
from .sd_parts import SDParts, build_parts, save_sd_folder, train_tokenizer
from .targets.folder import TargetFolder
from .trainer import batch_positions, start_run, training_loop


@dataclass
class TrainSDConfig:
    data_root: str | None = None
    n_members: int = 256
    n_nonmembers: int = 2048
    split_seed: int = 0
    vae_data: str = "fashion-mnist:test"     # the autoencoder's images, disjoint from the split's pool
    vae_steps: int = 2000
    vae_lr: float = 1e-3
    vae_kl: float = 1e-4
    steps: int = 6000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 500
    parts: SDParts = field(default_factory=SDParts)
    sample_captions: int = 8                 # rows of samples.png (distinct member captions), 8 samples each
    device: str = "auto"
    threads: int | None = None


def _captions_file(path: Path, ids, captions) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "caption"])
        w.writerows(zip([int(i) for i in ids], captions))


def train_sd(cfg: TrainSDConfig, out_dir, progress: bool = True, command: str | None = None,
             max_steps_this_run: int | None = None) -> Path:
    """Train (or resume) the tiny SD target into ``out_dir`` (see the module docstring)."""
    folder = TargetFolder(out_dir)
    out = folder.path
    device = start_run(folder, cfg)
    cfg_dict = asdict(cfg)

    # data, split and captions
    pool = load_dataset("fashion-mnist", cfg.data_root)
    split = (MembershipSplit.load(folder.split_path) if folder.split_path.exists()
             else MembershipSplit.random(pool, cfg.n_members, cfg.n_nonmembers, seed=cfg.split_seed))
    split.meta.setdefault("train_data", "fashion-mnist")
    split.save(folder.split_path)
    data, is_member = split.select(pool)
    caps = fashion_mnist_captions(data.images, data.labels)
    _captions_file(folder.captions_csv, data.ids, caps)
    _captions_file(folder.replacement_captions_csv, data.ids,
                   fashion_mnist_captions(data.images, data.labels, "replacement"))
    p = cfg.parts
    tokenizer = train_tokenizer(caps + fashion_mnist_captions(data.images, data.labels, "replacement"),
                                folder.component_dir("tokenizer"), p.vocab_size, p.max_length)
    vae, text, unet, sched = build_parts(p, len(tokenizer), cfg.seed)
    vae, text, unet = vae.to(device), text.to(device).eval().requires_grad_(False), unet.to(device)

    # 1. the autoencoder, on images outside the split's pool
    vimg = to_model_input(load_dataset(cfg.vae_data, cfg.data_root).images, p.image_size)
    vopt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)

    def vae_step(step):
        g = ops.generator("train_vae", seed=cfg.seed, step=step)
        x = vimg[batch_positions(step, cfg.batch_size, len(vimg), cfg.seed + 1)].to(device)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g).to(device)
        return (vae.decode(z).sample - x).pow(2).mean() + cfg.vae_kl * post.kl().mean() / z[0].numel()

    vstate = training_loop("vae", vae, vopt, vae_step, steps=cfg.vae_steps, lr=cfg.vae_lr, warmup=cfg.warmup_steps,
                           checkpoint=out / "checkpoint_vae", modules={"vae": vae}, every=cfg.checkpoint_every,
                           max_steps=max_steps_this_run, progress=progress)
    if vstate["step"] < cfg.vae_steps:
        return out
    vae.eval().requires_grad_(False)
    members = to_model_input(data.images[is_member], p.image_size)
    with torch.no_grad():
        z0 = torch.cat([vae.encode(members[i:i + 256].to(device)).latent_dist.mean for i in range(0, len(members), 256)])
        scale = float(1.0 / z0.std())
        vae.register_to_config(scaling_factor=scale)
        latents = z0 * scale
        member_caps = [c for c, m in zip(caps, is_member) if m]
        ids = tokenizer(member_caps + [""], padding="max_length", max_length=p.max_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        hidden = text(ids)[0]
        cond, empty = hidden[:-1], hidden[-1:]

    # 2. the conditional UNet, on the members' latents and captions
    ema = build_parts(p, len(tokenizer), cfg.seed)[2].to(device)
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    abar = sched.alphas_cumprod.to(device)
    uopt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr)

    def unet_step(step):
        g = ops.generator("train", seed=cfg.seed, step=step)
        rows = torch.as_tensor(batch_positions(step, cfg.batch_size, len(latents), cfg.seed))
        z = latents[rows]
        t = torch.randint(0, sched.config.num_train_timesteps, (len(rows),), generator=g).to(device)
        noise = torch.randn(z.shape, generator=g).to(device)
        drop = (torch.rand(len(rows), generator=g) < cfg.caption_dropout).to(device)
        h = torch.where(drop.view(-1, 1, 1), empty.expand(len(rows), -1, -1), cond[rows])
        z_t = ops.q_sample(abar, z, t, noise)                                     # q(z_t | z_0)
        return torch.nn.functional.mse_loss(unet(z_t, t, encoder_hidden_states=h).sample, noise)

    unet.train()
    ustate = training_loop("unet", unet, uopt, unet_step, steps=cfg.steps, lr=cfg.lr, warmup=cfg.warmup_steps,
                           checkpoint=folder.checkpoint_dir, modules={"unet_raw": unet, "unet_ema": ema}, ema=ema,
                           ema_decay=cfg.ema_decay, grad_clip=cfg.grad_clip, every=cfg.checkpoint_every,
                           max_steps=max_steps_this_run, progress=progress)
    if ustate["step"] < cfg.steps:
        return out

    save_sd_folder(out, vae.cpu(), text.cpu(), tokenizer, ema.eval().cpu(), sched, unet_raw=unet.eval().cpu())
    record = {
        "config": cfg_dict, "command": command, "steps": ustate["step"], "vae_steps": vstate["step"],
        "wall_seconds": round(ustate["seconds"] + vstate["seconds"], 1),
        "vae_seconds": round(vstate["seconds"], 1), "unet_seconds": round(ustate["seconds"], 1),
        "seconds_per_step": round(ustate["seconds"] / max(1, ustate["step"]), 4),
        "parameters": {"unet": sum(q.numel() for q in unet.parameters()),
                       "vae": sum(q.numel() for q in vae.parameters()),
                       "text_encoder": sum(q.numel() for q in text.parameters())},
        "n_members": int(is_member.sum()), "vae_final_loss": vstate["loss_curve"][-1][1] if vstate["loss_curve"] else None,
        "final_loss": ustate["loss_curve"][-1][1] if ustate["loss_curve"] else None,
        "loss_curve": ustate["loss_curve"], "vae_loss_curve": vstate["loss_curve"], "scaling_factor": scale,
        "hardware": hardware(device), "versions": library_versions(), "git_commit": git_commit(),
        "weights": {"unet": "EMA (decay %g)" % cfg.ema_decay, "unet_raw": "raw"},
    }
    folder.training_json.write_text(json.dumps(record, indent=1))
    if cfg.sample_captions:
        save_caption_grid(out, sorted(set(member_caps))[:: max(1, len(set(member_caps)) // cfg.sample_captions)]
                          [:cfg.sample_captions], seed=cfg.seed, progress=progress)
    return out


@torch.inference_mode()
def save_caption_grid(folder, captions, per_caption: int = 8, steps: int = 50, seed: int = 0,
                      progress: bool = False) -> None:
    """samples.png: one row per caption, ``per_caption`` samples each (plain diffusers pipeline, DDIM,
    guidance 1); the captions go to samples.txt in row order."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from diffusers.utils import logging as dlogging
    from torchvision.utils import save_image

    folder = TargetFolder(folder)
    if not progress:
        dlogging.disable_progress_bar()
    pipe = StableDiffusionPipeline.from_pretrained(folder.path, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    size = folder.image_size()
    rows = []
    for i, c in enumerate(captions):
        g = torch.Generator().manual_seed(seed + i)
        img = pipe([c] * per_caption, num_inference_steps=steps, guidance_scale=1.0, height=size, width=size,
                   generator=g, output_type="pt").images
        rows.append(img)
    save_image(torch.cat(rows), folder.samples_png, nrow=per_caption, padding=2)
    (folder.path / "samples.txt").write_text("\n".join(captions) + "\n")
