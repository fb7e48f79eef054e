"""What an audit costs on a real-size Stable Diffusion: a UNet2DConditionModel and an AutoencoderKL built from
Stable Diffusion 1.5's published configuration with random weights (nothing is downloaded; the cost of a
forward pass does not depend on the weights), timed per query at several batch sizes.

    .venv/bin/python benchmarks/sd_cost.py [--batch-sizes 1,2,4,8] [--device auto] [--dtype float32]

Writes benchmarks/sd_cost.json (machine, seconds per query per batch size, VAE encoding seconds per image,
and per attack at its default queries: seconds for 1,000 images); run_benchmark.py adds it to RESULTS.md.
On a GPU, pass --dtype float16 or bfloat16.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from diffmia.attacks import ATTACKS  # noqa: E402

# Stable Diffusion 1.5 (runwayml/stable-diffusion-v1-5) unet/config.json and vae/config.json, as published
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, norm_num_groups=32)
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32)
TEXT_TOKENS, TEXT_DIM = 77, 768


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def seconds_per_query(unet, batch: int, device, dtype, repeat: int) -> float:
    z = torch.randn(batch, 4, 64, 64, device=device, dtype=dtype)
    h = torch.randn(batch, TEXT_TOKENS, TEXT_DIM, device=device, dtype=dtype)
    t = torch.full((batch,), 500, device=device)
    unet(z, t, encoder_hidden_states=h)                      # warm-up
    _sync(device)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        unet(z, t, encoder_hidden_states=h)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best / batch


def main(argv=None) -> int:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-sizes", default="1,2,4,8")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "sd_cost.json"))
    a = p.parse_args(argv)
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if a.device == "auto" else a.device))
    dtype = getattr(torch, a.dtype)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    move = (lambda m: m.to(device)) if dtype == torch.float32 else (lambda m: m.to(device, dtype))
    unet = move(UNet2DConditionModel(**SD15_UNET)).eval()
    vae = move(AutoencoderKL(**SD15_VAE)).eval()
    build = time.perf_counter() - t0
    per_batch = {}
    for b in (int(x) for x in a.batch_sizes.split(",")):
        per_batch[b] = seconds_per_query(unet, b, device, dtype, a.repeat)
        print(f"batch {b}: {per_batch[b]:.3f} s per query", flush=True)
    with torch.inference_mode():
        x = torch.randn(1, 3, 512, 512, device=device, dtype=dtype)
        vae.encode(x)
        _sync(device)
        start = time.perf_counter()
        vae.encode(x)
        _sync(device)
        encode = time.perf_counter() - start
    best = min(per_batch.values())
    attacks = {}
    for name, cls in ATTACKS.items():
        if cls.access != "model":
            continue
        q = cls().queries_per_sample(1000)
        attacks[name] = {"queries_per_sample": q, "seconds_per_1000_images": round(1000 * (q * best + encode), 1)}
    rec = {"command": "python benchmarks/sd_cost.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                       "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                       "torch_threads": torch.get_num_threads(), "dtype": a.dtype},
           "unet_parameters": sum(q.numel() for q in unet.parameters()),
           "vae_parameters": sum(q.numel() for q in vae.parameters()), "build_seconds": round(build, 1),
           "seconds_per_query": {str(k): round(v, 4) for k, v in per_batch.items()},
           "vae_encode_seconds_per_image": round(encode, 3), "attacks": attacks}
    Path(a.out).write_text(json.dumps(rec, indent=1))
    print(json.dumps(rec, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
