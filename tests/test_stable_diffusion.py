"""Latent, text-conditioned targets (Stable Diffusion layout) on a tiny random SD folder built from configs:
loading (also by plain diffusers), the latent space, prompts, guidance counting, the attacks unchanged, the
runner's condition modes, and refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from diffmia import ops
from diffmia.attacks import ATTACKS
from diffmia.cli import main
from diffmia.data import MembershipSplit, to_model_input
from diffmia.data.captions import fashion_mnist_captions
from diffmia.errors import TargetError
from diffmia.targets import TargetFolder
from diffmia.targets.stable_diffusion import LatentDiffusersTarget

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
            "--n-boot", "1", "--quiet", "--no-blind"]
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


# ------------------------------------------------------------------------------------------------ CLiD
def test_clid_perturbations_and_timesteps():
    from diffmia.attacks.clid import CLiD, perturb

    c = "a photo of a dark, wide ankle boot"          # 34 characters: thirds at 11 and 22 (the public code's split)
    assert [perturb(c, k) for k in ("third1", "third2", "third3", "null")] == \
        [c[:11], c[11:22], c[22:], ""]
    assert "".join(perturb(c, k) for k in ("third1", "third2", "third3")) == c
    assert CLiD().timesteps(1000) == [485, 495, 505] and CLiD().queries_per_sample() == 15


def test_clid_features_by_hand_queries_and_text_requirement(sd, sample, memorised_target):
    from diffmia.attacks.clid import CLiD, perturb
    from diffmia.errors import DiffmiaError

    x, ids, caps = sample
    atk = CLiD(n_timesteps=1, perturbations=("null", "third1"))
    sd.queries = 0
    f = atk.features(sd, x[:3], cond=caps[:3], seeds=ids[:3])
    assert sd.queries == 3 * atk.queries_per_sample() == 9
    z = sd.to_model_space(x[:3])
    t = atk.timesteps()[0]
    noise = ops.noise("loss", z.shape[1:], ids[:3], seed=0, t=t)       # the loss attack's noise, by design
    z_t = ops.q_sample(sd.alphas_cumprod, z, t, noise)
    loss = lambda prompts: (noise - sd.eps(z_t, t, prompts)).flatten(1).pow(2).mean(1).double().numpy()  # noqa: E731
    np.testing.assert_allclose(f["l_cond"], loss(caps[:3]), rtol=1e-5)
    np.testing.assert_allclose(f["d_null"], loss([""] * 3) - loss(caps[:3]), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(f["d_third1"], loss([perturb(c, "third1") for c in caps[:3]]) - loss(caps[:3]),
                               rtol=1e-4, atol=1e-7)
    with pytest.raises(DiffmiaError, match="needs a text-conditioned target"):
        CLiD().features(memorised_target, x[:2])


def test_clid_fit_picks_alpha_on_its_rows_and_never_flips():
    from diffmia.attacks.clid import CLiD

    rng = np.random.default_rng(0)
    y = np.arange(200) % 2 == 0
    feats = {"l_cond": rng.normal(size=200), **{f"d_{k}": rng.normal(size=200) + 2.0 * y
                                                for k in ("third1", "third2", "third3", "null")}}
    atk = CLiD().fit(feats, y)
    s = atk.scores(feats)
    assert atk.alpha_ >= 0.8 and np.array_equal(s["clid"], s[f"clid[alpha={atk.alpha_:g}]"])
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y, s["clid"]) > 0.9 and roc_auc_score(y, s["clid[alpha=0]"]) < 0.65
    # a discrepancy that is *smaller* for members is not turned around: alpha = 1 then ranks members low
    flipped = {**feats, **{k: -v for k, v in feats.items() if k.startswith("d_")}}
    assert roc_auc_score(y, CLiD().fit(flipped, y).scores(flipped)["clid[alpha=1]"]) < 0.1


# ------------------------------------------------------------------------------------------------ behind an API
@pytest.fixture(scope="module")
def sd_api(sd_dir):
    from diffmia.targets import DiffusersAPI

    return DiffusersAPI.from_pretrained(sd_dir, device="cpu", generate_sampler="ddim", generate_steps=3)


def test_sd_api_img2img_decodes_every_preview(sd_api, sd, sample):
    """transform: encode, noise to t_start with the loss attack's noise, DDIM in latent space with the
    prompt, every x0 estimate decoded through the VAE; no noise predictor is exposed."""
    from diffmia.targets.api import has_noise_predictor

    x, ids, caps = sample
    assert sd_api.latent and not has_noise_predictor(sd_api)
    final, inter = sd_api.transform(x[:2], 300, 3, seed=ids[:2], prompt=caps[:2])
    assert list(inter) == [300, 150, 0] and final.shape == (2, 1, 32, 32) and torch.equal(final, inter[0])
    z0 = sd.to_model_space(x[:2])
    noise = ops.noise("loss", z0.shape[1:], ids[:2], seed=0, t=300)
    z_t = ops.q_sample(sd.alphas_cumprod, z0, 300, noise)
    z0_hat = ops.predict_x0(sd.alphas_cumprod, z_t, 300, sd.eps(z_t, 300, caps[:2]))
    torch.testing.assert_close(inter[300], sd.from_model_space(z0_hat).clamp(-1, 1), rtol=1e-4, atol=1e-4)
    other, _ = sd_api.transform(x[:2], 300, 3, seed=ids[:2], prompt=["", ""])
    assert not torch.allclose(other, final)                           # the prompt reaches the model
    assert sd_api.model_evaluations >= 2 * 3 * 2


def test_sd_api_generate_by_prompt_and_api_attacks(sd_dir, sd_api, tmp_path):
    g1 = sd_api.generate(3, seed=1, prompt="a photo of a dark, wide sandal")
    assert g1.shape == (3, 1, 32, 32) and g1.min() >= -1 and g1.max() <= 1
    torch.testing.assert_close(sd_api.generate(2, seed=1, prompt="a photo of a dark, wide sandal"), g1[:2])
    assert not torch.allclose(sd_api.generate(3, seed=1, prompt=""), g1)
    run = tmp_path / "api"
    assert main(["attack", "--target", str(sd_dir), "--attacks", "forensics_graybox,observers,ganleaks,monte_carlo_set",
                 "--param", "forensics_graybox.t_start=100", "--param", "forensics_graybox.num_steps=3",
                 "--param", "forensics_graybox.t_trunc=100", "--param", "observers.t_start=100",
                 "--param", "observers.num_steps=3", "--param", "observers.classifiers=logreg,nb",
                 "--param", "ganleaks.n_generated=4", "--param", "monte_carlo_set.n_generated=4",
                 "--param", f"ganleaks.cache_dir={tmp_path / 'gen'}", "--param",
                 f"monte_carlo_set.cache_dir={tmp_path / 'gen'}", "--out", str(run), "--device", "cpu",
                 "--n-boot", "1", "--quiet"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["space"] == "latent" and set(m["attacks"]) >= {"forensics_graybox", "observers", "ganleaks"}
    # generated sets are keyed by prompt: one per distinct caption of the 24 samples
    caps = {r["caption"] for r in __import__("csv").DictReader(open(TargetFolder(sd_dir).captions_csv))}
    assert len(list((tmp_path / "gen").glob("gen-*.npz"))) == len(caps)


def test_readme_sd_command_shape_with_an_image_folder(sd_dir, fmnist, tmp_path):
    """The README's own-model recipe: an image folder, a file,caption CSV and a plain members/nonmembers
    split file (positions in the sorted folder), run through `diffmia attack --captions`."""
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i in range(16):
        Image.fromarray(fmnist.images[i, ..., 0]).save(images / f"img{i:02d}.png")
        rows.append((f"img{i:02d}.png", f"a photo number {i}"))
    with open(tmp_path / "captions.csv", "w") as f:
        f.write("file,caption\n" + "".join(f"{a},{b}\n" for a, b in rows))
    (tmp_path / "my_split.json").write_text(json.dumps({"members": list(range(8)), "nonmembers": list(range(8, 16))}))
    run = tmp_path / "run"
    assert main(["attack", "--target", str(sd_dir), "--data", str(images), "--split", str(tmp_path / "my_split.json"),
                 "--captions", str(tmp_path / "captions.csv"), "--condition", "caption", "--attacks", "loss,clid",
                 "--out", str(run), "--device", "cpu", "--n-boot", "1", "--quiet"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["condition"] == "caption" and m["attacks"]["clid"]["measured_queries_per_sample"] == 15
