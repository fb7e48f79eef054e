"""diffmia train-sd: a resumed run equals an uninterrupted one (in the VAE stage and in the UNet stage), and
the result is a Stable Diffusion folder that plain diffusers and diffmia load, with its records."""

import csv
import json

import torch
from safetensors.torch import load_file

from diffmia.sd_parts import SDParts
from diffmia.targets import TargetFolder
from diffmia.targets.stable_diffusion import LatentDiffusersTarget
from diffmia.train_sd import TrainSDConfig, train_sd

TINY = dict(n_members=8, n_nonmembers=8, vae_steps=12, steps=12, batch_size=4, warmup_steps=3, checkpoint_every=5,
            sample_captions=2, device="cpu", threads=1,
            parts=SDParts(vae_channels=(8, 16, 16), vae_groups=4, text_hidden=16, text_heads=2, unet_channels=(16, 32),
                          unet_groups=4, attention_head_dim=4))


def _weights(folder):
    f = TargetFolder(folder)
    return {sub: load_file(next(d.glob("*.safetensors")))
            for sub, d in (("unet", f.unet_dir("ema")), ("unet_raw", f.unet_dir("raw")), ("vae", f.component_dir("vae")))}


def test_train_sd_resume_is_exact_and_the_folder_is_complete(tmp_path):
    cfg = TrainSDConfig(**TINY)
    train_sd(cfg, tmp_path / "a", progress=False)
    for stop in (7, 10, 10):                          # stops inside the VAE stage, then inside the UNet stage
        train_sd(cfg, tmp_path / "b", progress=False, max_steps_this_run=stop)
    train_sd(cfg, tmp_path / "b", progress=False)
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(wa[s][k], wb[s][k]) for s in wa for k in wa[s])
    folder = TargetFolder(tmp_path / "a")
    rec = json.loads(folder.training_json.read_text())
    assert rec["steps"] == 12 and rec["vae_steps"] == 12 and rec["n_members"] == 8 and rec["scaling_factor"] > 0
    assert folder.samples_png.stat().st_size > 100 and len((folder.path / "samples.txt").read_text().split("\n")) == 3
    with open(folder.captions_csv) as f:
        caps = {r["id"]: r["caption"] for r in csv.DictReader(f)}
    with open(folder.replacement_captions_csv) as f:
        repl = {r["id"]: r["caption"] for r in csv.DictReader(f)}
    assert len(caps) == 16 and caps.keys() == repl.keys() and all(caps[k] != repl[k] for k in caps)
    t = LatentDiffusersTarget.from_pretrained(folder.path, device="cpu")
    assert t.sample_shape == (1, 32, 32) and abs(t.scaling_factor - rec["scaling_factor"]) < 1e-6


def test_caption_vocabulary_is_deterministic_and_covers_the_corpus(tmp_path):
    from diffmia.data.captions import fashion_mnist_captions
    from diffmia.sd_parts import caption_vocabulary, train_tokenizer

    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    caps = fashion_mnist_captions(images, np.arange(40) % 10) + fashion_mnist_captions(images, np.arange(40) % 10,
                                                                                        "replacement")
    assert caption_vocabulary(caps) == caption_vocabulary(list(reversed(caps)))      # same corpus, same vocabulary
    tok = train_tokenizer(caps, tmp_path / "tok", max_length=32)
    unk = tok.convert_tokens_to_ids("<|endoftext|>")
    for c in caps:
        ids = tok(c).input_ids
        assert unk not in ids[1:-1] and len(ids) <= 32                      # every corpus word is known
    assert len({tuple(tok(c).input_ids) for c in caps}) == len(set(caps))  # distinct captions, distinct tokens
