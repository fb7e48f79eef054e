"""pytorch-ddpm checkpoints (the released DDPMs of SecMI and PIA) -> diffmia target folders.

The reference is Ho et al.'s UNet written here, independently of diffmia, with pytorch-ddpm's parameter
names and shapes: a random checkpoint in that format must convert to a diffusers UNet2DModel that gives
the same noise prediction (max abs difference <= 1e-5) at several t.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from diffmia.cli import main
from diffmia.errors import TargetError
from diffmia.targets import DiffusersTarget
from diffmia.targets.pytorch_ddpm import convert, load_checkpoint


# ----------------------------------------------------------------------------- Ho et al.'s UNet
class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class TimeEmbedding(nn.Module):
    def __init__(self, T, d_model, dim):
        super().__init__()
        freq = torch.exp(-torch.arange(0, d_model, 2) / d_model * math.log(10000))
        ang = torch.arange(T).float()[:, None] * freq[None]
        table = torch.stack([torch.sin(ang), torch.cos(ang)], dim=-1).view(T, d_model)   # interleaved
        self.timembedding = nn.Sequential(nn.Embedding.from_pretrained(table), nn.Linear(d_model, dim), Swish(),
                                          nn.Linear(dim, dim))

    def forward(self, t):
        return self.timembedding(t)


class DownSample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.main = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x, temb):
        return self.main(x)


class UpSample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.main = nn.Conv2d(ch, ch, 3, stride=1, padding=1)

    def forward(self, x, temb):
        return self.main(nn.functional.interpolate(x, scale_factor=2, mode="nearest"))


class AttnBlock(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.group_norm = nn.GroupNorm(32, ch)
        self.proj_q, self.proj_k, self.proj_v, self.proj = (nn.Conv2d(ch, ch, 1) for _ in range(4))

    def forward(self, x):
        B, C, H, W = x.shape
        h = self.group_norm(x)
        q = self.proj_q(h).permute(0, 2, 3, 1).view(B, H * W, C)
        k = self.proj_k(h).view(B, C, H * W)
        v = self.proj_v(h).permute(0, 2, 3, 1).view(B, H * W, C)
        w = torch.softmax(torch.bmm(q, k) * C ** -0.5, dim=-1)
        h = torch.bmm(w, v).view(B, H, W, C).permute(0, 3, 1, 2)
        return x + self.proj(h)


class ResBlock(nn.Module):
    def __init__(self, in_ch, out_ch, tdim, dropout, attn=False):
        super().__init__()
        self.block1 = nn.Sequential(nn.GroupNorm(32, in_ch), Swish(), nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.temb_proj = nn.Sequential(Swish(), nn.Linear(tdim, out_ch))
        self.block2 = nn.Sequential(nn.GroupNorm(32, out_ch), Swish(), nn.Dropout(dropout),
                                    nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.attn = AttnBlock(out_ch) if attn else nn.Identity()

    def forward(self, x, temb):
        h = self.block1(x) + self.temb_proj(temb)[:, :, None, None]
        return self.attn(self.block2(h) + self.shortcut(x))


class HoUNet(nn.Module):
    def __init__(self, T=1000, ch=32, ch_mult=(1, 2, 2, 2), attn=(1,), num_res_blocks=2, dropout=0.1):
        super().__init__()
        tdim = ch * 4
        self.time_embedding = TimeEmbedding(T, ch, tdim)
        self.head = nn.Conv2d(3, ch, 3, padding=1)
        self.downblocks, chs, now = nn.ModuleList(), [ch], ch
        for i, m in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                self.downblocks.append(ResBlock(now, ch * m, tdim, dropout, i in attn))
                now = ch * m
                chs.append(now)
            if i != len(ch_mult) - 1:
                self.downblocks.append(DownSample(now))
                chs.append(now)
        self.middleblocks = nn.ModuleList([ResBlock(now, now, tdim, dropout, True),
                                           ResBlock(now, now, tdim, dropout, False)])
        self.upblocks = nn.ModuleList()
        for i, m in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                self.upblocks.append(ResBlock(chs.pop() + now, ch * m, tdim, dropout, i in attn))
                now = ch * m
            if i != 0:
                self.upblocks.append(UpSample(now))
        self.tail = nn.Sequential(nn.GroupNorm(32, now), Swish(), nn.Conv2d(now, 3, 3, padding=1))

    def forward(self, x, t):
        temb = self.time_embedding(t)
        hs = [self.head(x)]
        for layer in self.downblocks:
            hs.append(layer(hs[-1], temb))
        h = hs[-1]
        for layer in self.middleblocks:
            h = layer(h, temb)
        for layer in self.upblocks:
            if isinstance(layer, ResBlock):
                h = torch.cat([h, hs.pop()], dim=1)
            h = layer(h, temb)
        return self.tail(h)


class Opaque:
    """An object only a full unpickle can rebuild (what training scripts often store as 'args')."""


def _randomise(net: nn.Module, seed: int) -> nn.Module:
    """Random weights everywhere (PyTorch's default init leaves GroupNorm at 1/0 and would hide a
    swapped norm), except the fixed sinusoid table."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "timembedding.0" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.ndim == 1 else 1.0 / math.sqrt(p[0].numel())))
    return net.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint as pytorch-ddpm's training script saves it: both models, optimiser, step, x_T."""
    torch.manual_seed(0)
    raw, ema = _randomise(HoUNet(), 1), _randomise(HoUNet(), 2)
    opt = torch.optim.Adam(raw.parameters(), lr=2e-4)
    path = tmp_path_factory.mktemp("ckpt") / "ckpt.pt"
    torch.save({"net_model": raw.state_dict(), "ema_model": ema.state_dict(), "optim": opt.state_dict(),
                "step": 800000, "x_T": torch.randn(4, 3, 32, 32)}, path)
    return path, raw, ema


def test_conversion_gives_the_same_noise_prediction(checkpoint, tmp_path):
    path, raw, ema = checkpoint
    folder = convert(path, tmp_path / "target")
    rec = json.loads(folder.conversion_json.read_text())
    assert rec["unet_config"]["block_out_channels"] == [32, 64, 64, 64]
    assert rec["unet_config"]["down_block_types"][1] == "AttnDownBlock2D" and rec["num_train_timesteps"] == 1000
    assert len(rec["source_sha256"]) == 64 and rec["weights"] == {"ema": "ema_model", "raw": "net_model"}
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    for weights, ref in (("ema", ema), ("raw", raw)):
        target = DiffusersTarget.from_pretrained(folder.path, weights=weights, device="cpu")
        for t in (0, 1, 200, 999):
            tt = torch.full((3,), t, dtype=torch.long)
            with torch.no_grad():
                want = ref(x, tt)
            got = target.eps(x, t)
            assert (got - want).abs().max().item() <= 1e-5, (weights, t)
    # the schedule is DDPM's linear one
    abar = DiffusersTarget.from_pretrained(folder.path, device="cpu").alphas_cumprod
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    np.testing.assert_allclose(abar.numpy(), torch.cumprod(1 - betas, 0).numpy(), rtol=1e-5)


def _fake_cifar10(path, n=40, seed=0):
    """A CIFAR-10 binary archive with n training images (record: label byte + 3072 RGB-plane bytes)."""
    import io
    import tarfile

    rng = np.random.default_rng(seed)
    with tarfile.open(path, "w:gz") as tar:
        for name, count in [(f"data_batch_{i}.bin", n // 5) for i in range(1, 6)] + [("test_batch.bin", 4)]:
            data = np.concatenate([rng.integers(0, 10, (count, 1)), rng.integers(0, 256, (count, 3072))], 1)
            blob = data.astype(np.uint8).tobytes()
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def test_convert_then_attack_end_to_end(checkpoint, tmp_path, capsys):
    path, _, _ = checkpoint
    data = _fake_cifar10(tmp_path / "cifar-10-binary.tar.gz")
    split = tmp_path / "CIFAR10_train_ratio0.5.npz"
    np.savez(split, mia_train_idxs=np.arange(0, 40, 2), mia_eval_idxs=np.arange(1, 40, 2))   # SecMI's format
    tgt, run = tmp_path / "secmi-cifar10", tmp_path / "run"
    assert main(["convert", "pytorch-ddpm", str(path), "--out", str(tgt), "--split", str(split)]) == 0
    assert main(["attack", "--target", str(tgt), "--data", "cifar10", "--data-root", str(data), "--attacks",
                 "loss,pia", "--out", str(run), "--device", "cpu", "--n-boot", "20", "--quiet"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert (m["n_members"], m["n_nonmembers"]) == (20, 20)
    for name in ("loss", "pia"):                          # a random model knows nothing of its "members"
        r = m["attacks"][name]
        assert r["measured_queries_per_sample"] == r["queries_per_sample"] and abs(r["auc"] - 0.5) < 0.4
    capsys.readouterr()


def test_misuse_gets_one_line_errors(checkpoint, tmp_path, capsys):
    path, raw, _ = checkpoint
    torch.save({"ema_model": raw.state_dict(), "args": Opaque()}, tmp_path / "needs_code.pt")
    with pytest.raises(TargetError, match="needs a full unpickle, which diffmia never does"):
        load_checkpoint(tmp_path / "needs_code.pt")
    torch.save({"model": {"conv.weight": torch.zeros(1)}}, tmp_path / "other.pt")
    with pytest.raises(TargetError, match="expected 'net_model' and/or 'ema_model'.*found keys \\['model'\\]"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(TargetError, match="not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "text.pt")
    sd = dict(torch.load(path, weights_only=True)["ema_model"])
    sd.pop("downblocks.1.block2.3.weight")
    torch.save({"ema_model": sd}, tmp_path / "broken.pt")
    with pytest.raises(TargetError, match="unknown checkpoint layout"):
        convert(tmp_path / "broken.pt", tmp_path / "b")
    torch.save({"net_model": raw.state_dict()}, tmp_path / "raw_only.pt")
    with pytest.raises(TargetError, match="no ema_model"):
        convert(tmp_path / "raw_only.pt", tmp_path / "r")
    assert convert(tmp_path / "raw_only.pt", tmp_path / "r", weights="raw").unet_dir("ema").exists()
    assert main(["convert", "pytorch-ddpm", str(tmp_path / "needs_code.pt"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("diffmia: error:") and len(err.splitlines()) == 1 and "full unpickle" in err
