"""Convert a pytorch-ddpm checkpoint (the released DDPMs of SecMI and PIA) into a diffmia target folder.

pytorch-ddpm (w86763777/pytorch-ddpm, the code SecMI and PIA build on) implements Ho et al.'s UNet:
a ``head`` conv, ``downblocks`` (``num_res_blocks`` ResBlocks per level, self-attention at some levels,
a strided-conv DownSample between levels), ``middleblocks`` (ResBlock with attention, ResBlock), ``upblocks``
(``num_res_blocks + 1`` ResBlocks per level on concatenated skips, nearest-neighbour UpSample + conv) and
a ``tail`` (GroupNorm, Swish, conv); the timestep enters through an interleaved sin/cos table, two linear
layers and a projection in every ResBlock. Its checkpoints are dicts with ``net_model`` (raw) and
``ema_model`` (EMA) state dicts (plus optimiser state, step, sample noise).

This is exactly a ``diffusers`` ``UNet2DModel`` with GroupNorm(32), SiLU, one attention head, sin-first
sinusoids without frequency shift, and the time MLP's input columns permuted from interleaved to
concatenated order; :func:`convert_state_dict` maps every parameter by name and shape and the conversion
is checked to give the same noise prediction (tests/test_convert.py builds the architecture independently).
The checkpoint is read with ``torch.load(weights_only=True)``: a file that needs a full unpickle is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import re
from pathlib import Path

import torch

from ..errors import TargetError
from .folder import TargetFolder

EXPECTED = ("'net_model' and/or 'ema_model' state dicts with keys like 'head.weight', "
            "'time_embedding.timembedding.1.weight', 'downblocks.0.block1.0.weight', 'tail.2.weight'")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_checkpoint(path) -> dict:
    """The checkpoint's state dicts ``{"ema": ..., "raw": ...}`` (one of them may be missing)."""
    path = Path(path)
    if not path.is_file():
        raise TargetError(f"{path}: checkpoint file not found")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if found is None:
            raise TargetError(f"{path}: not a PyTorch checkpoint (it cannot be read as saved tensors)") from None
        raise TargetError(f"{path}: this checkpoint stores Python objects ({found.group(1)}) and needs a full "
                          "unpickle, which diffmia never does; re-save only its state dicts, e.g. "
                          "torch.save({'ema_model': model.state_dict()}, 'clean.pt')") from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise TargetError(f"{path}: not a PyTorch checkpoint ({str(e).splitlines()[0][:160]})") from None
    if not isinstance(ck, dict):
        raise TargetError(f"{path}: expected a dict with {EXPECTED}; got a {type(ck).__name__}")
    out = {w: ck[k] for w, k in (("ema", "ema_model"), ("raw", "net_model")) if isinstance(ck.get(k), dict)}
    if not out and "head.weight" in _strip(ck):
        out = {"ema": ck}                                   # a bare state dict
    if not out:
        raise TargetError(f"{path}: not a pytorch-ddpm checkpoint: expected {EXPECTED}; "
                          f"found keys {sorted(map(str, ck))[:8]}")
    return {w: _strip(sd) for w, sd in out.items()}


def _strip(sd: dict) -> dict:
    """Drop the ``module.`` prefix of a DistributedDataParallel state dict."""
    return {(k[7:] if isinstance(k, str) and k.startswith("module.") else k): v for k, v in sd.items()}


def _blocks(sd: dict, prefix: str) -> list[str]:
    """The kinds of the numbered sub-modules ``prefix.{k}``: 'res', 'res+attn', 'down' or 'up'."""
    idx = sorted({int(m.group(1)) for k in sd if (m := re.match(rf"{prefix}\.(\d+)\.", k))})
    if idx != list(range(len(idx))):
        raise TargetError(f"{prefix}: sub-modules are not numbered 0..{len(idx) - 1}")
    kinds = []
    for k in idx:
        p = f"{prefix}.{k}."
        if p + "block1.0.weight" in sd:
            kinds.append("res+attn" if p + "attn.proj_q.weight" in sd else "res")
        elif p + "main.weight" in sd:
            kinds.append("down" if prefix == "downblocks" else "up")
        else:
            raise TargetError(f"{p[:-1]}: neither a ResBlock nor a Down/UpSample; expected {EXPECTED}")
    return kinds


def infer_config(sd: dict, image_size: int = 32) -> dict:
    """The ``UNet2DModel`` configuration of a pytorch-ddpm state dict (channels, levels, attention)."""
    for key in ("head.weight", "tail.2.weight", "time_embedding.timembedding.1.weight"):
        if key not in sd:
            raise TargetError(f"not a pytorch-ddpm state dict: {key!r} missing; expected {EXPECTED}")
    ch, in_ch = sd["head.weight"].shape[:2]
    down = _blocks(sd, "downblocks")
    levels, cur = [], []
    for kind in down:
        if kind == "down":
            levels.append(cur)
            cur = []
        else:
            cur.append(kind)
    levels.append(cur)
    n_res = len(levels[0])
    if n_res == 0 or any(len(lv) != n_res for lv in levels) or any(len(set(lv)) != 1 for lv in levels):
        raise TargetError(f"unexpected down path {down}: every level needs the same number of ResBlocks")
    mult, attn = [], []
    i = 0
    for lv in levels:
        out = sd[f"downblocks.{i}.block1.2.weight"].shape[0]
        mult.append(out // ch)
        attn.append(lv[0] == "res+attn")
        i += len(lv) + 1
    up = _blocks(sd, "upblocks")
    expected_up = []
    for level in reversed(range(len(levels))):
        expected_up += ["res+attn" if attn[level] else "res"] * (n_res + 1) + (["up"] if level else [])
    if up != expected_up or _blocks(sd, "middleblocks") != ["res+attn", "res"]:
        raise TargetError("the up path or the middle blocks do not mirror the down path of Ho et al.'s UNet")
    return dict(sample_size=int(image_size), in_channels=int(in_ch), out_channels=int(sd["tail.2.weight"].shape[0]),
                block_out_channels=tuple(int(ch * m) for m in mult), layers_per_block=n_res,
                down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
                up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
                norm_num_groups=32, norm_eps=1e-5, attention_head_dim=None, dropout=0.1, act_fn="silu",
                flip_sin_to_cos=False, freq_shift=0, time_embedding_type="positional", downsample_padding=1,
                resnet_time_scale_shift="default", add_attention=True)


def sinusoid_table(T: int, d_model: int) -> torch.Tensor:
    """pytorch-ddpm's time table: row t = (sin(t w_0), cos(t w_0), sin(t w_1), ...), w_i = 10000^(-2i/d)."""
    w = torch.exp(-torch.arange(0, d_model, 2) / d_model * math.log(10000))
    emb = torch.arange(T).float()[:, None] * w[None, :]
    return torch.stack([torch.sin(emb), torch.cos(emb)], dim=-1).view(T, d_model)


def _res(sd, src: str, dst: str, out: dict) -> None:
    for a, b in (("block1.0", "norm1"), ("block1.2", "conv1"), ("temb_proj.1", "time_emb_proj"),
                 ("block2.0", "norm2"), ("block2.3", "conv2"), ("shortcut", "conv_shortcut")):
        for p in ("weight", "bias"):
            if f"{src}.{a}.{p}" in sd:
                out[f"{dst}.{b}.{p}"] = sd[f"{src}.{a}.{p}"]


def _attn(sd, src: str, dst: str, out: dict) -> None:
    for p in ("weight", "bias"):
        out[f"{dst}.group_norm.{p}"] = sd[f"{src}.group_norm.{p}"]
    for a, b in (("proj_q", "to_q"), ("proj_k", "to_k"), ("proj_v", "to_v"), ("proj", "to_out.0")):
        out[f"{dst}.{b}.weight"] = sd[f"{src}.{a}.weight"].flatten(1)          # 1x1 conv -> linear
        out[f"{dst}.{b}.bias"] = sd[f"{src}.{a}.bias"]


def _path(sd, src: str, dst: str, n_levels: int, n_blocks: int, sampler: str, out: dict) -> None:
    """One side of the UNet: ``src.{k}`` numbers ResBlocks and samplers in one list; ``dst.{level}`` holds
    ``resnets.{j}`` (+ ``attentions.{j}``) and a ``{sampler}.0.conv`` between levels."""
    k = 0
    for i in range(n_levels):
        for j in range(n_blocks):
            _res(sd, f"{src}.{k}", f"{dst}.{i}.resnets.{j}", out)
            if f"{src}.{k}.attn.proj_q.weight" in sd:
                _attn(sd, f"{src}.{k}.attn", f"{dst}.{i}.attentions.{j}", out)
            k += 1
        if i < n_levels - 1:
            for p in ("weight", "bias"):
                out[f"{dst}.{i}.{sampler}.0.conv.{p}"] = sd[f"{src}.{k}.main.{p}"]
            k += 1


def convert_state_dict(sd: dict, config: dict) -> dict:
    """pytorch-ddpm parameter names -> ``UNet2DModel`` parameter names (same tensors; the attention
    projections reshaped from 1x1 convs, the time MLP's columns reordered)."""
    table = sd.get("time_embedding.timembedding.0.weight")
    d = sd["head.weight"].shape[0]
    if table is not None and not torch.allclose(table.float(), sinusoid_table(table.shape[0], d), atol=1e-4):
        raise TargetError("the checkpoint's time-embedding table is not Ho et al.'s sinusoid; "
                          "this is not a pytorch-ddpm UNet")
    out = {"conv_in.weight": sd["head.weight"], "conv_in.bias": sd["head.bias"],
           "conv_norm_out.weight": sd["tail.0.weight"], "conv_norm_out.bias": sd["tail.0.bias"],
           "conv_out.weight": sd["tail.2.weight"], "conv_out.bias": sd["tail.2.bias"]}
    w1 = sd["time_embedding.timembedding.1.weight"]                        # columns (sin0, cos0, sin1, ...)
    out["time_embedding.linear_1.weight"] = torch.cat([w1[:, 0::2], w1[:, 1::2]], dim=1)   # (sin..., cos...)
    out["time_embedding.linear_1.bias"] = sd["time_embedding.timembedding.1.bias"]
    out["time_embedding.linear_2.weight"] = sd["time_embedding.timembedding.3.weight"]
    out["time_embedding.linear_2.bias"] = sd["time_embedding.timembedding.3.bias"]
    n_res, n_levels = config["layers_per_block"], len(config["block_out_channels"])
    _path(sd, "downblocks", "down_blocks", n_levels, n_res, "downsamplers", out)
    _res(sd, "middleblocks.0", "mid_block.resnets.0", out)
    _attn(sd, "middleblocks.0.attn", "mid_block.attentions.0", out)
    _res(sd, "middleblocks.1", "mid_block.resnets.1", out)
    _path(sd, "upblocks", "up_blocks", n_levels, n_res + 1, "upsamplers", out)
    return out


def build_unet(sd: dict, image_size: int = 32):
    """A ``UNet2DModel`` holding the weights of a pytorch-ddpm state dict."""
    from diffusers import UNet2DModel

    config = infer_config(sd, image_size)
    unet = UNet2DModel(**config)
    mapped = convert_state_dict(sd, config)
    unexpected = sorted(set(mapped) - set(unet.state_dict()))
    missing = sorted(set(unet.state_dict()) - set(mapped))
    if missing or unexpected:
        raise TargetError(f"unknown checkpoint layout: {len(missing)} UNet parameters without a source "
                          f"(first: {missing[:3]}), {len(unexpected)} unmapped (first: {unexpected[:3]})")
    shapes = [k for k, v in mapped.items() if tuple(v.shape) != tuple(unet.state_dict()[k].shape)]
    if shapes:
        raise TargetError(f"unknown checkpoint layout: shapes differ for {shapes[:3]}")
    unet.load_state_dict({k: v.float() for k, v in mapped.items()})
    return unet.eval()


def convert(checkpoint, out, weights: str = "ema", image_size: int = 32, split=None) -> TargetFolder:
    """Write a target folder from a pytorch-ddpm checkpoint.

    ``weights='ema'``: ``unet/`` holds the EMA weights and ``unet_raw/`` the raw ones (as ``diffmia train``
    writes them; either may be absent from the checkpoint); ``weights='raw'``: ``unet/`` holds the raw
    weights. The scheduler is DDPM's: linear betas 1e-4..0.02, T = 1000 (T is read from the checkpoint's
    time table when it has one). ``split``: a split file (SecMI/PIA ``.npz`` or diffmia ``.json``) copied
    to ``split.json``. ``conversion.json`` records the source file, its SHA-256 and the configuration.
    """
    from diffusers import DDPMScheduler

    from ..data import MembershipSplit

    if weights not in ("ema", "raw"):
        raise TargetError(f"weights must be 'ema' or 'raw', got {weights!r}")
    checkpoint = Path(checkpoint)
    sds = load_checkpoint(checkpoint)
    if weights not in sds:
        raise TargetError(f"{checkpoint}: no {'ema_model' if weights == 'ema' else 'net_model'} in this checkpoint "
                          f"(it has {['ema_model' if w == 'ema' else 'net_model' for w in sds]})")
    folder = TargetFolder(out)
    folder.path.mkdir(parents=True, exist_ok=True)
    sources = {"ema": sds[weights]}
    if weights == "ema" and "raw" in sds:
        sources["raw"] = sds["raw"]
    config = None
    for w, sd in sources.items():
        unet = build_unet(sd, image_size)
        unet.save_pretrained(folder.unet_dir(w), safe_serialization=True)
        config = dict(unet.config)
    table = sources["ema"].get("time_embedding.timembedding.0.weight")
    T = int(table.shape[0]) if table is not None else 1000
    DDPMScheduler(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                  prediction_type="epsilon", clip_sample=True).save_pretrained(folder.scheduler_dir)
    import diffusers

    folder.model_index_json.write_text(json.dumps(
        {"_class_name": "DDPMPipeline", "_diffusers_version": diffusers.__version__,
         "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}, indent=1))
    if split is not None:
        MembershipSplit.load(split).save(folder.split_path)
    folder.conversion_json.write_text(json.dumps({
        "source": str(checkpoint), "source_sha256": sha256_file(checkpoint), "format": "pytorch-ddpm",
        "weights": {w: ("ema_model" if (w == "ema" and weights == "ema") else "net_model") for w in sources},
        "num_train_timesteps": T, "split": None if split is None else str(split),
        "unet_config": {k: v for k, v in config.items() if not k.startswith("_")}}, indent=1, default=str))
    return folder
