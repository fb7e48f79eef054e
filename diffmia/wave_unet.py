"""A small 1-D UNet for raw waveforms, built from ``diffusers`` blocks.

``diffusers``' own ``UNet1DModel`` (Dance Diffusion's layout) costs about 4 s per training step of 32 x 4,096
samples on one CPU core even with 8 channels at full resolution, which is too slow to train a target on a
CPU. This network keeps the usual DDPM UNet shape in one dimension: a sinusoidal timestep embedding and its
MLP (``Timesteps``, ``TimestepEmbedding``), ``layers_per_block`` residual temporal blocks per level
(``ResidualTemporalBlock1D``: two GroupNorm-Mish convolutions, the time embedding added between them),
a strided convolution between levels (``Downsample1D``), a transposed convolution back (``Upsample1D``) and
skip connections concatenated on the way up. It is a ``ModelMixin``/``ConfigMixin``, so ``save_pretrained``
writes ``config.json`` + safetensors and ``from_pretrained`` reads them back, like any diffusers model.

Input N x C x L (L divisible by 2 ** (levels - 1)), timesteps [N] (floats allowed: continuous time is passed
as t * time_scale); output ``.sample`` of the same shape (the noise prediction).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.downsampling import Downsample1D
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import ResidualTemporalBlock1D
from diffusers.models.upsampling import Upsample1D
from torch import nn


@dataclass
class WaveUNetOutput:
    sample: torch.Tensor


class WaveUNet1D(ModelMixin, ConfigMixin):
    """eps_theta(x_t, t) for N x C x L waveforms (see the module docstring)."""

    @register_to_config
    def __init__(self, sample_size: int = 4096, in_channels: int = 1, out_channels: int = 1,
                 block_out_channels: tuple[int, ...] = (16, 32, 64, 64), layers_per_block: int = 1,
                 kernel_size: int = 5, patch: int = 4):
        super().__init__()
        ch = tuple(block_out_channels)
        emb = 4 * ch[0]
        self.time_proj = Timesteps(ch[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(ch[0], emb)
        # a strided "patch" convolution: L samples -> L / patch positions (a mel frame spans 128 samples)
        self.conv_in = nn.Conv1d(in_channels, ch[0], 2 * patch, stride=patch, padding=patch // 2)
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        prev = ch[0]
        for i, c in enumerate(ch):
            self.down.append(nn.ModuleList(ResidualTemporalBlock1D(prev if j == 0 else c, c, emb, kernel_size)
                                           for j in range(layers_per_block)))
            prev = c
            last = i == len(ch) - 1
            self.downsample.append(nn.Identity() if last else Downsample1D(c, use_conv=True))
        self.mid = ResidualTemporalBlock1D(prev, prev, emb, kernel_size)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, c in reversed(list(enumerate(ch))):
            self.up.append(nn.ModuleList(ResidualTemporalBlock1D(prev + c if j == 0 else c, c, emb, kernel_size)
                                         for j in range(layers_per_block)))
            prev = c
            self.upsample.append(nn.Identity() if i == 0 else Upsample1D(c, use_conv_transpose=True))
        self.conv_out = nn.Sequential(nn.GroupNorm(8, ch[0]), nn.SiLU(),
                                      nn.ConvTranspose1d(ch[0], out_channels, 2 * patch, stride=patch,
                                                         padding=patch // 2))

    def forward(self, sample: torch.Tensor, timestep, return_dict: bool = True):
        n = sample.shape[0]
        t = torch.as_tensor(timestep, device=sample.device, dtype=torch.float32)
        t = t.expand(n) if t.ndim == 0 else t
        temb = self.time_embedding(self.time_proj(t).to(sample.dtype))
        h = self.conv_in(sample)
        skips = []
        for blocks, down in zip(self.down, self.downsample):
            for b in blocks:
                h = b(h, temb)
            skips.append(h)
            h = down(h)
        h = self.mid(h, temb)
        for blocks, up in zip(self.up, self.upsample):
            h = torch.cat([h, skips.pop()], dim=1)
            for b in blocks:
                h = b(h, temb)
            h = up(h)
        out = self.conv_out(h)
        return WaveUNetOutput(out) if return_dict else (out,)
