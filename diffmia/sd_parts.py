"""The parts of a small Stable Diffusion model, built from configurations (no download): a tokenizer whose
BPE vocabulary is made locally from the caption corpus, a CLIP text encoder, an AutoencoderKL and a
UNet2DConditionModel, saved in the layout ``StableDiffusionPipeline.from_pretrained`` reads.

Used by ``diffmia train-sd`` (the shipped tiny SD target) and by the tests (tiny random SD folders).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import DiffmiaError
from .targets.folder import TargetFolder

BOUNDARY_TOKENS = ("<|startoftext|>", "<|endoftext|>")


@dataclass
class SDParts:
    """Sizes of the parts (defaults: the tiny Fashion-MNIST SD target)."""

    image_size: int = 32
    image_channels: int = 1
    vae_channels: tuple[int, ...] = (16, 32, 32)       # 3 blocks: 32 x 32 pixels -> 8 x 8 latents
    latent_channels: int = 4
    vae_groups: int = 8
    text_hidden: int = 32
    text_layers: int = 2
    text_heads: int = 2
    max_length: int = 24                               # tokens per prompt (the longest caption needs 19)
    vocab_size: int = 300
    unet_channels: tuple[int, ...] = (32, 64)
    unet_groups: int = 8
    attention_head_dim: int = 8


def caption_vocabulary(captions) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A BPE vocabulary and merge list in CLIP's format, made from the words of ``captions``: every character
    (alone and word-final, ``</w>``) and every corpus word as one token, reached by merging left to right.
    Deterministic (the same corpus gives the same vocabulary, unlike a trained BPE, whose ties break at
    random), so a rerun of a training command gives the same tokenizer."""
    import regex

    pat = regex.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+", regex.IGNORECASE)
    words = sorted({w for c in captions for w in pat.findall(" ".join(str(c).lower().split()))})
    chars = sorted({ch for w in words for ch in w})
    vocab: dict[str, int] = {}
    for t in list(BOUNDARY_TOKENS) + chars + [ch + "</w>" for ch in chars]:
        vocab.setdefault(t, len(vocab))
    merges: list[tuple[str, str]] = []
    for w in words:
        parts = list(w[:-1]) + [w[-1] + "</w>"]
        left = parts[0]
        for right in parts[1:]:
            if left + right not in vocab:
                merges.append((left, right))
                vocab[left + right] = len(vocab)
            left = left + right
    return vocab, merges


def train_tokenizer(captions, out_dir, vocab_size: int = 300, max_length: int = 24):
    """A CLIPTokenizer whose vocabulary comes from the words of ``captions`` (:func:`caption_vocabulary`),
    saved in ``out_dir``. ``vocab_size`` bounds it: a corpus with more distinct tokens is refused."""
    from transformers import CLIPTokenizer

    vocab, merges = caption_vocabulary(captions)
    if len(vocab) > vocab_size:
        raise DiffmiaError(f"the captions need {len(vocab)} tokens, more than vocab_size={vocab_size}")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
        clip = CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"),
                             model_max_length=max_length, pad_token=BOUNDARY_TOKENS[1])
    clip.save_pretrained(out_dir)
    return clip


def build_parts(cfg: SDParts, vocab_size: int, seed: int = 0):
    """(vae, text_encoder, unet, scheduler) with seeded random weights."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        n = len(cfg.vae_channels)
        vae = AutoencoderKL(in_channels=cfg.image_channels, out_channels=cfg.image_channels,
                            down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                            block_out_channels=tuple(cfg.vae_channels), layers_per_block=1,
                            latent_channels=cfg.latent_channels, norm_num_groups=cfg.vae_groups,
                            sample_size=cfg.image_size)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, hidden_size=cfg.text_hidden,
                                            intermediate_size=4 * cfg.text_hidden, num_hidden_layers=cfg.text_layers,
                                            num_attention_heads=cfg.text_heads, max_position_embeddings=cfg.max_length,
                                            bos_token_id=0, eos_token_id=1, pad_token_id=1))
        m = len(cfg.unet_channels)
        unet = UNet2DConditionModel(
            sample_size=cfg.image_size // 2 ** (n - 1), in_channels=cfg.latent_channels,
            out_channels=cfg.latent_channels, block_out_channels=tuple(cfg.unet_channels), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D",) * (m - 1) + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (m - 1),
            cross_attention_dim=cfg.text_hidden, attention_head_dim=cfg.attention_head_dim,
            norm_num_groups=cfg.unet_groups)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          prediction_type="epsilon", clip_sample=False, steps_offset=1)
    return vae, text, unet, sched


def save_sd_folder(out, vae, text_encoder, tokenizer, unet, scheduler, unet_raw=None) -> TargetFolder:
    """A ``StableDiffusionPipeline`` folder in safetensors (``unet/``; ``unet_raw/`` when given)."""
    from diffusers import StableDiffusionPipeline

    folder = TargetFolder(out)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder.path, safe_serialization=True)
    if unet_raw is not None:
        unet_raw.save_pretrained(folder.unet_dir("raw"), safe_serialization=True)
    index = json.loads(folder.model_index_json.read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    return folder


def random_sd_folder(out, captions, cfg: SDParts | None = None, seed: int = 0) -> TargetFolder:
    """A tiny SD folder with random weights and a tokenizer learnt from ``captions`` (for tests)."""
    cfg = cfg or SDParts()
    folder = TargetFolder(out)
    tok = train_tokenizer(captions, folder.component_dir("tokenizer"), cfg.vocab_size, cfg.max_length)
    vae, text, unet, sched = build_parts(cfg, len(tok), seed)
    return save_sd_folder(out, vae, text, tok, unet, sched)
