"""Continuous-time (VP-SDE) targets: VPSDETarget, train_vpsde, and fraction timesteps.

Analytic models whose eps (or score) is exact in closed form check every attack's features against the
formulas on a 2-D (1 x 8 x 8) and a 1-D (1 x 1 x L) model; random diffusers UNets check counted queries and
determinism; the committed fixture tests/fixtures/vpsde (a memorised VP-SDE model of the 32 members of
tests/fixtures/memorised) checks separation, and an untrained copy chance.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from diffmia import ops
from diffmia.attacks import ATTACKS, PIA, PIAN, ForensicsWhiteBox, LossAttack, SecMIStat
from diffmia.errors import DiffmiaError, TargetError
from diffmia.metrics import auc
from diffmia.targets import NoisePredictor, TargetFolder, VPSDETarget
from diffmia.train_vpsde import train_vpsde

VPSDE = Path(__file__).parent / "fixtures" / "vpsde"
SHAPES = {"2d": (1, 8, 8), "1d": (1, 1, 16)}
S2 = 0.25                                   # the analytic data's variance


class Gaussian(torch.nn.Module):
    """Data ~ N(0, S2 I): p_t = N(0, v_t I), v_t = abar(t) S2 + 1 - abar(t), so the exact score is -x / v_t and
    eps = -sqrt(1 - abar) score = sqrt(1 - abar) x / v_t. Takes the time input t * 1000 like a trained model."""

    def __init__(self, score: bool = False):
        super().__init__()
        self.score = score

    def forward(self, x, time):
        a = ops.vp_alpha_bar(time.double() / 1000).view(-1, *([1] * (x.ndim - 1)))
        s = -x.double() / (a * S2 + 1 - a)
        return (s if self.score else -(1 - a).sqrt() * s).float()


class Dirac(torch.nn.Module):
    """Data = the single point x*: eps(x_t, t) = (x_t - sqrt(abar) x*) / sqrt(1 - abar) exactly."""

    def __init__(self, x_star):
        super().__init__()
        self.register_buffer("x_star", x_star)

    def forward(self, x, time):
        a = ops.vp_alpha_bar(time.double() / 1000).view(-1, *([1] * (x.ndim - 1)))
        return ((x.double() - a.sqrt() * self.x_star.double()) / (1 - a).sqrt()).float()


def analytic(kind: str, model=None, **kw) -> VPSDETarget:
    model = Gaussian(kw.pop("score", False)) if model is None else model
    return VPSDETarget(model, device="cpu", one_d=kind == "1d", sample_shape=SHAPES[kind], **kw)


def samples(kind: str, n: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *SHAPES[kind]), generator=g) * 2 - 1


def coef(k: int) -> float:
    """eps_theta(x, k) = coef(k) x for the Gaussian model, at the grid time t_k = (k + 1) / 1000."""
    a = math.exp(-(0.1 * (k + 1) / 1000 + 9.95 * ((k + 1) / 1000) ** 2))
    return math.sqrt(1 - a) / (a * S2 + 1 - a)


def abar(k: int) -> float:
    return math.exp(-(0.1 * (k + 1) / 1000 + 9.95 * ((k + 1) / 1000) ** 2))


def sums(x0, p):
    return (x0.double().abs() ** p).flatten(1).sum(1).numpy()


# ------------------------------------------------------------------------------------------ the grid and eps


def test_grid_is_the_ddpm_schedule():
    """alphas_cumprod[k] = abar((k+1)/T); DDPM's linear betas 1e-4..0.02 (T = 1000) are its discretisation."""
    from diffusers import DDPMScheduler

    t = analytic("2d")
    assert isinstance(t, NoisePredictor) and t.num_train_timesteps == 1000 and t.alphas_cumprod.dtype == torch.float64
    assert t.alphas_cumprod[199].item() == pytest.approx(abar(199), rel=1e-12)
    ddpm = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod.double()
    for f in (torch.sqrt, lambda a: torch.sqrt(1 - a)):
        assert (f(ddpm) - f(t.alphas_cumprod)).abs().max() < 1.5e-3
    assert VPSDETarget(Gaussian(), grid=50, device="cpu", sample_shape=(1, 8, 8)).alphas_cumprod[-1] == abar(999)


@pytest.mark.parametrize("kind", list(SHAPES))
def test_eps_and_score_conversion(kind):
    x = samples(kind)
    eps_t, score_t = analytic(kind), analytic(kind, score=True, prediction_type="score")
    for k in (0, 199, 999):
        want = coef(k) * x.double()
        torch.testing.assert_close(eps_t.eps(x, k).double(), want, rtol=1e-5, atol=1e-6)
        # a score model's s(x_t, t) = -x / v_t comes back as eps = -sqrt(1 - abar) s
        torch.testing.assert_close(score_t.eps(x, k).double(), want, rtol=1e-5, atol=1e-6)
    assert eps_t.queries == 3 * len(x) and eps_t.sample_shape == SHAPES[kind]


# ------------------------------------------------------------------------------------------ attacks = formulas


@pytest.mark.parametrize("kind", list(SHAPES))
def test_features_match_the_formulas(kind):
    x0, seeds = samples(kind), np.arange(4)
    # loss: l = ||n - c_k (sqrt(a) x0 + sqrt(1-a) n)||^2 with the loss stream's noise n
    feats = LossAttack(timesteps=(199, 599)).features(analytic(kind), x0)
    for k in (199, 599):
        n = ops.noise("loss", x0.shape[1:], seeds, t=k).double()
        want = ((n - coef(k) * (math.sqrt(abar(k)) * x0.double() + math.sqrt(1 - abar(k)) * n)) ** 2).flatten(1).sum(1)
        np.testing.assert_allclose(feats[f"l_{k}"], want.numpy(), rtol=1e-5)
    # PIA: eps0 = c_0 x0, x_t = (sqrt(a) + sqrt(1-a) c_0) x0, R = |c_0 - c_k (sqrt(a) + sqrt(1-a) c_0)|^4 sum x0^4
    c0 = coef(0)
    r = PIA().features(analytic(kind), x0)["r_200"]
    m = math.sqrt(abar(200)) + math.sqrt(1 - abar(200)) * c0
    np.testing.assert_allclose(r, abs(c0 - coef(200) * m) ** 4 * sums(x0, 4), rtol=1e-4)
    # PIAN: eps0 rescaled to mean |eps0| = sqrt(2/pi): eps0 = g x0 with g = sqrt(2/pi) / mean |x0|
    k, g = 199, math.sqrt(2 / math.pi) / x0.double().abs().flatten(1).mean(1).numpy()
    r = PIAN(t=k).features(analytic(kind), x0)[f"r_{k}"]
    want = np.abs(g - coef(k) * (math.sqrt(abar(k)) + math.sqrt(1 - abar(k)) * g)) ** 4 * sums(x0, 4)
    np.testing.assert_allclose(r, want, rtol=1e-4)
    # SecMI: every DDIM move of a linear model scales x by move(s, t); t-error = (x^ - x~)^2 summed
    def move(s, t):
        return math.sqrt(abar(t)) * (1 - math.sqrt(1 - abar(s)) * coef(s)) / math.sqrt(abar(s)) + \
            math.sqrt(1 - abar(t)) * coef(s)
    scale = {0: 1.0}
    for s in range(0, 100, 10):
        scale[s + 10] = move(s, s + 10) * scale[s]
    terr = SecMIStat().features(analytic(kind), x0)["terr_100"]
    np.testing.assert_allclose(terr, (move(100, 90) * scale[100] - scale[90]) ** 2 * sums(x0, 2), rtol=1e-4)
    # Data Forensics: x0 and vlb losses of step k from x0_hat = (x_t - sqrt(1-a) c_k x_t) / sqrt(a)
    f = ForensicsWhiteBox(timesteps=[0, 400]).features(analytic(kind), x0)
    for j, k in enumerate((0, 400)):
        n = ops.noise("forensics", x0.shape[1:], seeds, t=k).double()
        x_t = math.sqrt(abar(k)) * x0.double() + math.sqrt(1 - abar(k)) * n
        d2 = ((x0.double() - (1 - math.sqrt(1 - abar(k)) * coef(k)) * x_t / math.sqrt(abar(k))) ** 2).flatten(1).sum(1)
        tol = 2e-3 if k == 0 else 1e-4                   # float32 1 - abar_0 ~ 1e-4 carries 1e-4 relative error
        np.testing.assert_allclose(f["traj_x0"][:, j], d2.numpy(), rtol=tol)
        a_prev, dims = (abar(k - 1) if k else 1.0), x0[0].numel()
        beta = 1 - abar(k) / a_prev
        if k == 0:                                       # Gaussian NLL of x0 under N(x0_hat, beta_0)
            vlb = 0.5 * (math.log(2 * math.pi * beta) + d2 / dims / beta)
        else:                                            # c0^2 ||x0 - x0_hat||^2 / (2 beta_tilde) per dimension
            c0_post = math.sqrt(a_prev) * beta / (1 - abar(k))
            vlb = c0_post ** 2 * d2 / dims / (2 * beta * (1 - a_prev) / (1 - abar(k)))
        np.testing.assert_allclose(f["traj_vlb"][:, j], vlb.numpy(), rtol=tol)
    np.testing.assert_allclose(f["traj_eps"][:, 1], LossAttack(timesteps=(400,)).features(analytic(kind), x0)["l_400"],
                               rtol=1e-6)


@pytest.mark.parametrize("kind", list(SHAPES))
def test_exact_model_of_one_point(kind):
    """With data = {x*}, x*'s loss and PIA error vanish; another x0 has PIA error
    (abar_t / (1 - abar_t))^2 sum (x0 - x*)^4 (eps_theta(x_t) - eps_0 = sqrt(abar_t/(1-abar_t)) (x0 - x*)).
    The model's x0 estimate is x* everywhere, so the DDIM map round-trips and SecMI's t-error is 0 for every x0
    (as for the DDPM oracle in test_model_attacks.py)."""
    x = samples(kind, 3)
    target = analytic(kind, Dirac(x[0]))
    for att, key in ((LossAttack(), "l_200"), (PIA(), "r_200")):
        v = att.features(target, x)[key]
        assert v[0] < 1e-6 and (v[1:] > 1e-3).all(), (att.name, v)
    assert (SecMIStat().features(target, x)["terr_100"] < 1e-6).all()
    r = PIA().features(target, x)["r_200"]
    want = (abar(200) / (1 - abar(200))) ** 2 * sums(x[1:] - x[0], 4)
    np.testing.assert_allclose(r[1:], want, rtol=1e-3)


# ------------------------------------------------------------------------------------------ diffusers models


def unet(kind: str, seed: int = 0):
    from diffusers import UNet1DModel, UNet2DModel

    torch.manual_seed(seed)
    if kind == "2d":
        return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8), layers_per_block=1,
                           down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2, norm_num_groups=4)
    return UNet1DModel(sample_size=16, in_channels=1, out_channels=1, time_embedding_type="positional",
                       use_timestep_embedding=True, block_out_channels=(8, 16),
                       down_block_types=("DownResnetBlock1D",) * 2, up_block_types=("UpResnetBlock1D",),
                       mid_block_type="MidResTemporalBlock1D", out_block_type="OutConv1DBlock", act_fn="mish",
                       norm_num_groups=4, layers_per_block=1)


ATTACK_PARAMS = {"loss": {"timesteps": (0.1, 400)}, "pia": {}, "pian": {"t": (0.2, 50)}, "secmi": {},
                 "forensics": {"grid_stride": 100}}


@pytest.mark.parametrize("kind", list(SHAPES))
@pytest.mark.parametrize("name", list(ATTACK_PARAMS))
def test_attacks_run_count_queries_and_repeat(kind, name):
    x0, ids = samples(kind, 3), np.array([4, 9, 11])
    runs = []
    for _ in range(2):
        target = VPSDETarget(unet(kind), device="cpu", batch_size=2)
        att = ATTACKS[name](**ATTACK_PARAMS[name])
        feats = att.features(target, x0, seeds=ids)
        assert target.queries == len(x0) * att.queries_per_sample(target.num_train_timesteps), name
        assert target.forward_seconds > 0 and target.sample_shape == SHAPES[kind]
        runs.append((feats, att.scores(feats)))
    for (fa, sa), (fb, sb) in zip(runs[:1], runs[1:]):
        assert list(fa) == list(fb) and list(sa) == list(sb)
        for k in fa:
            np.testing.assert_array_equal(fa[k], fb[k])
        assert all(np.isfinite(v).all() for v in sa.values())


def test_fractions_equal_their_index_on_both_kinds_of_target(memorised_target, eval_set):
    imgs, _, ids = eval_set
    x, ids = imgs[:3], ids[:3]
    pairs = [(PIA(t=0.2), PIA(t=199)), (LossAttack(timesteps=(0.2, 0.5)), LossAttack(timesteps=(199, 499))),
             (SecMIStat(t_sec=0.101, t_secs=(0.051,)), SecMIStat(t_sec=100, t_secs=(50,))),
             (ForensicsWhiteBox(timesteps=[0.001, 0.2], t_trunc=0.2), ForensicsWhiteBox(timesteps=[0, 199], t_trunc=199))]
    for target, x in ((memorised_target, x), (VPSDETarget(unet("2d"), device="cpu"), samples("2d", 3))):
        for frac, idx in pairs:
            ff, fi = frac.features(target, x, seeds=ids), idx.features(target, x, seeds=ids)
            assert set(ff) == set(fi) | {"num_train_timesteps"} and (ff["num_train_timesteps"] == 1000).all()
            for k in fi:
                np.testing.assert_array_equal(ff[k], fi[k])
            sf, si = frac.scores(ff), idx.scores(fi)
            assert list(sf) == list(si)
            for k in si:
                np.testing.assert_array_equal(sf[k], si[k])
            assert frac.queries_per_sample(1000) == idx.queries_per_sample(1000)
        assert PIA(t=0.2).t == 0.2                       # the attack itself keeps what it was given
    with pytest.raises(DiffmiaError, match="do not record it"):
        PIA(t=0.2).scores({"r_199": np.zeros(3)})
    with pytest.raises(DiffmiaError, match="below the first step"):
        PIA(t=0.0004).features(memorised_target, x)
    with pytest.raises(DiffmiaError, match="t must be"):
        PIA(t=1.5).check_params()
    # on a grid of 50 steps, t = 0.2 is step 9 (time 0.2), what index 9 means there
    coarse = VPSDETarget(Gaussian(), grid=50, device="cpu", sample_shape=(1, 8, 8))
    np.testing.assert_array_equal(PIA(t=0.2).features(coarse, samples("2d"))["r_9"],
                                  PIA(t=9).features(coarse, samples("2d"))["r_9"])


# ------------------------------------------------------------------------------------------ folders and training


def _train(out, kind="2d", **kw):
    data = samples(kind, 6, seed=3)
    args = dict(ids=range(6), steps=4, batch_size=4, checkpoint_every=2, progress=False, threads=1)
    return train_vpsde(unet(kind), data, out, **{**args, **kw})


def test_train_resumes_to_the_same_weights_and_loads(tmp_path):
    whole = _train(tmp_path / "a", split={"members": [0, 1]}, record={"purpose": "test"})
    part = _train(tmp_path / "b", max_steps_this_run=3)
    assert not part["complete"] and part["steps"] == 3 and not (tmp_path / "b" / "unet").exists()
    resumed = _train(tmp_path / "b")
    assert whole["complete"] and resumed["loss_curve"] == whole["loss_curve"] and whole["purpose"] == "test"
    for w in ("ema", "raw"):
        a = VPSDETarget.from_pretrained(tmp_path / "a", weights=w, device="cpu")
        b = VPSDETarget.from_pretrained(tmp_path / "b", weights=w, device="cpu")
        for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
            assert torch.equal(va, vb), (w, k)
    rec = json.loads((tmp_path / "a" / "training.json").read_text())
    assert rec["seed"] == 0 and rec["versions"]["torch"] and rec["ids"] == list(range(6)) and rec["loss_curve"]
    assert json.loads((tmp_path / "a" / "split.json").read_text()) == {"members": [0, 1]}
    assert json.loads((tmp_path / "a" / "sde.json").read_text())["type"] == "vp"
    assert TargetFolder(tmp_path / "a").num_train_timesteps() == 1000
    with pytest.raises(DiffmiaError, match="other settings"):
        _train(tmp_path / "a", lr=0.1)
    # the recorded model config leaves out diffusers' private entries (one is a list in set order, which
    # differs between processes: a rerun in a new process would be refused)
    cfg = json.loads((tmp_path / "a" / "train_config.json").read_text())
    assert cfg["model_class"] == "UNet2DModel" and not any(k.startswith("_") for k in cfg["model_config"])


def test_train_1d_and_its_shapes(tmp_path):
    rec = _train(tmp_path / "c", kind="1d", steps=2, grid=100, time_scale=100.0)
    t = VPSDETarget.from_pretrained(tmp_path / "c", device="cpu")
    assert rec["complete"] and t.one_d and t.sample_shape == (1, 1, 16) and t.num_train_timesteps == 100
    assert t.time_input(torch.tensor([99])).item() == pytest.approx(100.0)
    with pytest.raises(DiffmiaError, match="N x C x 1 x L"):
        train_vpsde(unet("1d"), torch.zeros(4, 1, 4, 4), tmp_path / "d", ids=range(4), steps=1)
    with pytest.raises(TargetError, match="N x C x 1 x L"):
        t.eps(torch.zeros(2, 1, 2, 8), 0)


def test_non_square_2d_shape():
    from diffusers import UNet2DModel

    m = UNet2DModel(sample_size=(8, 16), in_channels=1, out_channels=1, block_out_channels=(8, 8), norm_num_groups=4,
                    down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2, layers_per_block=1)
    t = VPSDETarget(m, device="cpu")
    assert t.sample_shape == t.model_shape == (1, 8, 16)
    assert t.eps(torch.zeros(2, 1, 8, 16), 5).shape == (2, 1, 8, 16)


@pytest.mark.parametrize("damage, needle", [
    (lambda d: (d / "sde.json").unlink(), "sde.json: missing"),
    (lambda d: (d / "sde.json").write_text('{"type": "ve"}'), "type must be 'vp'"),
    (lambda d: (d / "sde.json").write_text('{"prediction_type": "v"}'), "prediction_type must be"),
    (lambda d: (d / "sde.json").write_text("{"), "sde.json: cannot read"),
    (lambda d: (d / "unet" / "config.json").write_text('{"_class_name": "Foo"}'), "_class_name must be"),
    (lambda d: [p.unlink() for p in (d / "unet").glob("*.safetensors")], "no .safetensors"),
])
def test_bad_folders_are_one_line_errors(tmp_path, damage, needle):
    _train(tmp_path / "t", steps=2)
    damage(tmp_path / "t")
    with pytest.raises(TargetError, match=needle) as e:
        VPSDETarget.from_pretrained(tmp_path / "t", device="cpu")
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------ the fixture


@pytest.fixture(scope="module")
def fixture_targets():
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    untrained = UNet2DModel.from_config(UNet2DModel.load_config(VPSDE / "unet"))
    return VPSDETarget.from_pretrained(VPSDE, device="cpu"), VPSDETarget(untrained, device="cpu")


# Minimum AUC on the memorised VP-SDE fixture (32 + 32 images). Measured when it was made (tests/fixtures/README.md):
# PIA (t = 0.2) 0.968, loss 0.973, SecMI_stat 0.920, Data Forensics 0.960 (the DDPM fixture of the same members:
# 0.968, 0.963, 0.868, 0.965); the untrained copy 0.40-0.61.
MIN_AUC = {"pia": 0.9, "loss": 0.9, "secmi": 0.9, "forensics": 0.9}


@pytest.mark.parametrize("name", list(MIN_AUC))
def test_fixture_separates_and_untrained_is_chance(name, fixture_targets, eval_set):
    imgs, is_member, ids = eval_set
    aucs = []
    for target in fixture_targets:
        att = ATTACKS[name](**({"t": 0.2} if name == "pia" else {}))
        target.queries = 0
        s = next(iter(att.scores(att.features(target, imgs, seeds=ids)).values()))
        assert target.queries == len(imgs) * att.queries_per_sample(1000)
        aucs.append(auc(is_member, s))
    assert aucs[0] >= MIN_AUC[name], aucs
    assert abs(aucs[1] - 0.5) < 0.25, aucs        # |AUC - 0.5| >= 0.25 has p < 0.001 under chance


def test_cli_runs_a_vpsde_folder_with_fraction_params(tmp_path):
    from diffmia.cli import main

    out = tmp_path / "run"
    assert main(["attack", "--target", str(VPSDE), "--device", "cpu", "--quiet", "--n-boot", "1", "--n-members", "8",
                 "--n-nonmembers", "8", "--attacks", "pia,loss", "--param", "pia.t=0.2", "--param",
                 "loss.timesteps=0.2", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())["attacks"]
    assert m["pia"]["params"]["t"] == 0.2 and m["pia"]["queries_per_sample"] == 2
    assert m["pia"]["measured_queries_per_sample"] == 2 and m["loss"]["measured_queries_per_sample"] == 1
