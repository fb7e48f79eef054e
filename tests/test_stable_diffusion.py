"""Latent, text-conditioned targets (Stable Diffusion layout) on a tiny random SD folder built from configs:
loading (also by plain diffusers), the latent space, prompts, guidance counting, the attacks unchanged, the
runner's condition modes, and refusals."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from diffmia.attacks import ATTACKS
from diffmia.cli import main
from diffmia.data import MembershipSplit, to_model_input
from diffmia.data.captions import fashion_mnist_captions
from diffmia.errors import TargetError
from diffmia.targets import TargetFolder
from diffmia.targets.stable_diffusion import LatentDiffusersTarget

N_MEM, N_NON = 12, 12


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory, fmnist):
    """A tiny random SD folder with a split of Fashion-MNIST and both captions files."""
    from diffmia.sd_parts import random_sd_folder

    out = tmp_path_factory.mktemp("tiny-sd")
    split = MembershipSplit.random(fmnist, N_MEM, N_NON, seed=5)
    data, _ = split.select(fmnist)
    caps = fashion_mnist_captions(data.images, data.labels)
    repl = fashion_mnist_captions(data.images, data.labels, "replacement")
    folder = random_sd_folder(out, caps * 4)
    split.save(folder.split_path)
    for path, texts in ((folder.captions_csv, caps), (folder.replacement_captions_csv, repl)):
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "caption"])
            w.writerows(zip(data.ids.tolist(), texts))
    return out


@pytest.fixture(scope="module")
def sd(sd_dir):
    return LatentDiffusersTarget.from_pretrained(sd_dir, device="cpu")


@pytest.fixture(scope="module")
def sample(sd_dir, fmnist):
    split = MembershipSplit.load(TargetFolder(sd_dir).split_path)
    data, is_member = split.select(fmnist)
    return to_model_input(data.images), data.ids, fashion_mnist_captions(data.images, data.labels)


def test_loads_here_and_in_plain_diffusers(sd_dir, sd):
    from diffusers import StableDiffusionPipeline

    assert TargetFolder(sd_dir).is_latent and sd.latent and sd.sample_shape == (1, 32, 32)
    pipe = StableDiffusionPipeline.from_pretrained(sd_dir)
    out = pipe(["a photo of a dark, wide sandal"], num_inference_steps=2, height=32, width=32, output_type="np")
    assert out.images.shape == (1, 32, 32, 1)


def test_latent_space_is_the_vae_mean_times_the_scaling_factor(sd, sample):
    x, ids, _ = sample
    z = sd.to_model_space(x[:3])
    with torch.no_grad():
        want = sd.vae.encode(x[:3]).latent_dist.mean * sd.vae.config.scaling_factor
    torch.testing.assert_close(z, want)
    assert z.shape == (3, 4, 8, 8)
    drawn = LatentDiffusersTarget(sd.unet, sd.vae, sd.text_encoder, sd.tokenizer, sd.alphas_cumprod,
                                  sample_posterior=True, device="cpu")
    a, b = drawn.to_model_space(x[:3], ids[:3]), drawn.to_model_space(x[1:3], ids[1:3])
    torch.testing.assert_close(a[1:], b)                         # seeded per sample, whatever the batch
    assert not torch.allclose(a, z)


def test_prompts_condition_and_guidance_counts_two_queries(sd, sample):
    x, _, caps = sample
    z = sd.to_model_space(x[:4])
    sd.queries = 0
    e_cap, e_empty = sd.eps(z, 300, caps[:4]), sd.eps(z, 300, None)
    assert sd.queries == 8 and not torch.allclose(e_cap, e_empty)      # the prompt changes the prediction
    torch.testing.assert_close(e_empty, sd.eps(z, 300, [""] * 4))
    guided = LatentDiffusersTarget(sd.unet, sd.vae, sd.text_encoder, sd.tokenizer, sd.alphas_cumprod,
                                   guidance_scale=2.0, device="cpu")
    e_g = guided.eps(z, 300, caps[:4])
    assert guided.queries == 8                                        # two UNet evaluations per sample
    torch.testing.assert_close(e_g, e_empty + 2.0 * (e_cap - e_empty), rtol=1e-4, atol=1e-5)


class LatentView:
    """The same model seen directly in latent space: encoding done by hand, eps unchanged."""

    def __init__(self, target):
        self.t = target
        self.alphas_cumprod, self.num_train_timesteps, self.queries = target.alphas_cumprod, target.num_train_timesteps, 0

    def to_model_space(self, z, seeds=None):
        return z

    def eps(self, z_t, t, cond=None):
        self.queries += len(z_t)
        return self.t.eps(z_t, t, cond)


@pytest.mark.parametrize("name,params", [("loss", {}), ("pia", {}), ("pian", {}), ("secmi", {"t_sec": 30}),
                                         ("forensics", {"grid_stride": 250})])
def test_attacks_run_unchanged_in_latent_space(name, params, sd, sample):
    """Latent path = encode, then the same formula; counted queries = declared."""
    x, ids, caps = sample
    atk = ATTACKS[name](**params)
    sd.queries = 0
    f = atk.features(sd, x[:4], cond=caps[:4], seeds=ids[:4])
    assert sd.queries == 4 * atk.queries_per_sample(sd.num_train_timesteps)
    g = atk.features(LatentView(sd), sd.to_model_space(x[:4]), cond=caps[:4], seeds=ids[:4])
    for k in f:
        np.testing.assert_allclose(f[k], g[k], rtol=1e-5, atol=1e-6)


def test_secmi_nns_map_is_taken_in_latent_space(sd, sample):
    x, ids, caps = sample
    f = ATTACKS["secmi_nns"](t_sec=20).features(sd, x[:2], cond=caps[:2], seeds=ids[:2])
    assert f["map"].shape == (2, 4, 8, 8)


@pytest.mark.parametrize("condition", ["caption", "empty", "replacement"])
def test_runner_condition_modes(condition, sd_dir, tmp_path):
    run = tmp_path / condition
    assert main(["attack", "--target", str(sd_dir), "--attacks", "loss,pia", "--condition", condition, "--out",
                 str(run), "--device", "cpu", "--n-boot", "20", "--quiet"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert (m["space"], m["condition"]) == ("latent", condition)
    for name in ("loss", "pia"):                     # random weights: no membership signal, counted queries
        r = m["attacks"][name]
        assert r["measured_queries_per_sample"] == r["queries_per_sample"] and abs(r["auc"] - 0.5) < 0.45
    assert "latent space" in (run / "report.md").read_text()


def test_prompts_enter_the_cache_key(sd_dir, tmp_path):
    run = tmp_path / "run"
    args = ["attack", "--target", str(sd_dir), "--attacks", "loss", "--out", str(run), "--device", "cpu",
            "--n-boot", "0", "--quiet", "--no-blind"]
    assert main(args + ["--condition", "caption"]) == 0 and main(args + ["--condition", "empty"]) == 0
    assert len(list((run / "features").glob("loss-*"))) == 2             # not reused across conditions


def test_refusals_name_the_problem(sd_dir, tmp_path, capsys):
    broken = tmp_path / "no-tokenizer"
    shutil.copytree(sd_dir, broken, ignore=shutil.ignore_patterns("tokenizer"))
    with pytest.raises(TargetError, match="tokenizer.*missing"):
        LatentDiffusersTarget.from_pretrained(broken, device="cpu")
    pickled = tmp_path / "pickled"
    shutil.copytree(sd_dir, pickled)
    from safetensors.torch import load_file

    vae = pickled / "vae"
    (st,) = vae.glob("*.safetensors")
    torch.save(load_file(st), vae / "diffusion_pytorch_model.bin")
    st.unlink()
    with pytest.raises(TargetError, match="vae: no .safetensors weights"):
        LatentDiffusersTarget.from_pretrained(pickled, device="cpu")
    assert main(["attack", "--target", str(sd_dir), "--captions", str(tmp_path / "nope.csv"), "--out",
                 str(tmp_path / "r"), "--quiet"]) == 2
    assert "nope.csv not found" in capsys.readouterr().err
    assert main(["attack", "--target", "tests/fixtures/memorised", "--condition", "empty", "--out",
                 str(tmp_path / "p"), "--quiet"]) == 2
    assert "text-conditioned (latent) targets only" in capsys.readouterr().err
