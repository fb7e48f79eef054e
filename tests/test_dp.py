"""DP-SGD training (diffmia train --dp-epsilon): one step is the clipped sum plus the seeded noise, the run spends
at most the target epsilon, a resume equals an uninterrupted run (weights and epsilon), bad options and models are
refused in one line, and the committed DP fixture says what it spent."""

import json

import pytest
import torch
from safetensors.torch import load_file

from diffmia.cli import main
from diffmia.dp import DPSGD, check_model, default_delta, poisson_batch
from diffmia.errors import DiffmiaError
from diffmia.train import TrainConfig, build_unet, train

TINY = ["--n-members", "8", "--n-nonmembers", "8", "--channels", "8,16", "--norm-num-groups", "4", "--batch-size", "1",
        "--warmup-steps", "2", "--sample-grid", "0", "--device", "cpu", "--threads", "1", "--quiet"]
TINY_CFG = dict(n_members=8, n_nonmembers=8, channels=(8, 16), norm_num_groups=4, batch_size=2, warmup_steps=2,
                sample_grid=0, device="cpu", threads=1, dp_epsilon=4.0)


def _record(folder):
    return json.loads((folder / "training.json").read_text())


def _one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("diffmia: error:"), err
    return err


def test_one_step_is_the_clipped_sum_plus_seeded_noise_over_the_expected_batch():
    from diffmia import ops

    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2)
    w0, b0 = lin.weight.detach().clone(), lin.bias.detach().clone()
    cfg = TrainConfig(dp_epsilon=1.0, steps=10, batch_size=2, max_grad_norm=0.5, seed=3)
    dp = DPSGD(cfg, lin, torch.optim.SGD(lin.parameters(), lr=1.0), n_members=8)
    x, y = torch.randn(3, 3) * 4, torch.randn(3, 2)               # 3 examples: a batch above its expected 2
    dp.before_step(7)
    dp.optimizer.zero_grad(set_to_none=True)
    torch.nn.functional.mse_loss(dp.model(x), y).backward()
    dp.optimizer.step()

    r = (x @ w0.T + b0 - y) * (2 / 2)                               # d mean_j (r_ij^2) / d out_ij, per example
    gw, gb = r[:, :, None] * x[:, None, :], r                       # per-example gradients
    norms = (gw.flatten(1).pow(2).sum(1) + gb.pow(2).sum(1)).sqrt()
    assert (norms > 0.5).any()                                      # clipping has work to do
    clip = (0.5 / (norms + 1e-6)).clamp(max=1.0)
    g = ops.generator("dp_noise", seed=3, step=7)
    sigma_c = dp.noise_multiplier * 0.5
    noise_w, noise_b = (torch.normal(0.0, sigma_c, size=s, generator=g) for s in ((2, 3), (2,)))
    expect_w = w0 - ((clip[:, None, None] * gw).sum(0) + noise_w) / 2
    expect_b = b0 - ((clip[:, None] * gb).sum(0) + noise_b) / 2
    assert torch.allclose(lin.weight, expect_w, atol=1e-5) and torch.allclose(lin.bias, expect_b, atol=1e-5)
    assert dp.accountant.history == [(dp.noise_multiplier, 0.25, 1)]

    w1 = lin.weight.detach().clone()                                # an empty Poisson batch: noise alone, counted
    dp.before_step(8)
    dp.optimizer.zero_grad(set_to_none=True)
    dp.optimizer.step()
    g = ops.generator("dp_noise", seed=3, step=8)
    assert torch.allclose(lin.weight, w1 - torch.normal(0.0, sigma_c, size=(2, 3), generator=g) / 2, atol=1e-6)
    assert dp.accountant.history == [(dp.noise_multiplier, 0.25, 2)]


def test_poisson_batches_are_seeded_and_have_the_expected_size():
    sizes = [len(poisson_batch(64, 0.25, 0, s)) for s in range(400)]
    assert abs(sum(sizes) / 400 - 16) < 0.5 and len(set(sizes)) > 5
    a, b = poisson_batch(64, 0.25, 0, 3), poisson_batch(64, 0.25, 0, 3)
    assert (a == b).all() and not (a.tolist() == poisson_batch(64, 0.25, 1, 3).tolist())
    assert len(poisson_batch(8, 1.0, 0, 0)) == 8 and default_delta(32) == 1e-5 and default_delta(10 ** 6) < 1e-6


def test_dp_training_spends_at_most_the_target_epsilon(tmp_path, capsys, monkeypatch):
    import opacus

    import diffmia.dp

    steps = 6
    sizes = [len(poisson_batch(8, 1 / 8, 0, s)) for s in range(steps)]
    assert 0 in sizes and max(sizes) > 1                            # an empty batch and a batch of 2 happen
    drawn = []
    monkeypatch.setattr(diffmia.dp, "poisson_batch", lambda *a: drawn.append(a[3]) or poisson_batch(*a))
    assert main(["train", "--out", str(tmp_path / "t"), "--steps", str(steps), "--dp-epsilon", "3", *TINY]) == 0
    assert drawn == list(range(steps))                              # the batches are Poisson batches
    rec = _record(tmp_path / "t")
    dp = rec["dp"]
    assert 0.95 * 3 < dp["epsilon"] <= 3 and dp["target_epsilon"] == 3 and dp["noise_multiplier"] > 0
    assert dp["steps"] == steps and dp["sample_rate"] == 1 / 8 and dp["delta"] == 1e-5 and not dp["delta_given"]
    assert dp["max_grad_norm"] == 1.0 and dp["accountant"] == "rdp" and dp["opacus"] == opacus.__version__
    assert rec["steps"] == steps and rec["final_loss"] > 0
    assert f"epsilon {dp['epsilon']:.3f} spent (target 3)" in capsys.readouterr().out


def test_a_resumed_dp_run_equals_an_uninterrupted_one(tmp_path):
    cfg = TrainConfig(steps=8, checkpoint_every=3, **TINY_CFG)
    train(cfg, tmp_path / "a", progress=False)
    train(cfg, tmp_path / "b", progress=False, max_steps_this_run=5)
    state = json.loads((tmp_path / "b" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 5 and sum(k for _, _, k in state["dp"]["history"]) == 5
    train(cfg, tmp_path / "b", progress=False)
    for sub in ("unet", "unet_raw"):
        wa, wb = (load_file(tmp_path / x / sub / "diffusion_pytorch_model.safetensors") for x in "ab")
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ra, rb = _record(tmp_path / "a"), _record(tmp_path / "b")
    assert ra["dp"] == rb["dp"] and ra["loss_curve"] == rb["loss_curve"] and ra["dp"]["steps"] == 8
    with pytest.raises(DiffmiaError, match=r"other settings \(\['steps'\]\)"):    # the steps set the noise
        train(TrainConfig(steps=12, checkpoint_every=3, **TINY_CFG), tmp_path / "b", progress=False)


@pytest.mark.parametrize("args, message", [
    (["--dp-epsilon", "-1"], "--dp-epsilon must be a positive number, got -1.0"),
    (["--dp-epsilon", "nan"], "--dp-epsilon must be a positive number, got nan"),
    (["--dp-delta", "2"], "--dp-delta must be in (0, 1)"),
    (["--dp-epsilon", "1", "--dp-delta", "0"], "--dp-delta must be in (0, 1)"),
    (["--dp-delta", "1e-6"], "--dp-delta needs --dp-epsilon"),
    (["--max-grad-norm", "0"], "--max-grad-norm (per-sample clipping norm) must be a positive number, got 0.0"),
    (["--dp-epsilon", "1", "--dp-accountant", "gdp"], "--dp-accountant must be one of rdp, prv, got 'gdp'"),
])
def test_bad_dp_options_are_refused_in_one_line(tmp_path, capsys, args, message):
    assert main(["train", "--out", str(tmp_path / "t"), *args, "--quiet"]) == 2
    assert message in _one_line(capsys.readouterr().err) and not (tmp_path / "t").exists()


@pytest.mark.parametrize("args, message", [
    (["--dp-epsilon", "1", "--batch-size", "9"], "must be at most the 8 members, got --batch-size 9"),
    (["--dp-epsilon", "1e-9", "--batch-size", "8"], "no noise multiplier reaches epsilon 1e-09"),
])
def test_dp_settings_the_members_cannot_support_are_refused(tmp_path, capsys, args, message):
    assert main(["train", "--out", str(tmp_path / "t"), "--steps", "3", *TINY, *args]) == 2
    assert message in _one_line(capsys.readouterr().err)


def test_a_layer_that_mixes_examples_is_refused_by_name():
    with pytest.raises(DiffmiaError, match=r"DP-SGD cannot train this model: 1 \(BatchNorm2d: .*GroupNorm instead"):
        check_model(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU()).train())
    with pytest.raises(DiffmiaError, match=r"0\.1 \(BatchNorm1d"):      # no parameters, still mixes the batch
        check_model(torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(2, 2),
                                                            torch.nn.BatchNorm1d(2, affine=False))))
    unet = build_unet(TrainConfig(channels=(8, 16), norm_num_groups=4, attention=True), 1).train()
    check_model(unet)                                                # GroupNorm, Conv2d, Linear, attention: fine


def test_a_folder_from_before_the_dp_options_resumes(tmp_path):
    from dataclasses import asdict

    from diffmia.targets import TargetFolder
    from diffmia.trainer import start_run

    cfg = TrainConfig(device="cpu")
    old = {k: v for k, v in asdict(cfg).items() if not k.startswith("dp_") and k != "max_grad_norm"}
    (tmp_path / "train_config.json").write_text(json.dumps(old))
    start_run(TargetFolder(tmp_path), cfg)
    with pytest.raises(DiffmiaError, match="other settings"):
        start_run(TargetFolder(tmp_path), TrainConfig(device="cpu", dp_epsilon=1.0))


def test_the_dp_fixture_records_its_epsilon_and_loads_as_a_target(dp_dir, memorised_dir):
    from opacus.accountants import create_accountant

    from diffmia.targets import DiffusersTarget

    rec = _record(dp_dir)
    dp = rec["dp"]
    assert dp["target_epsilon"] == 1.0 and 0.9 < dp["epsilon"] <= 1.0 and dp["delta"] == 1e-5
    assert dp["steps"] == rec["steps"] == rec["config"]["steps"] and dp["noise_multiplier"] > 0
    acc = create_accountant(dp["accountant"])                       # the recorded epsilon, recomputed
    acc.history = [(dp["noise_multiplier"], dp["sample_rate"], dp["steps"])]
    assert acc.get_epsilon(delta=dp["delta"]) == pytest.approx(dp["epsilon"], rel=1e-9)
    split, memorised = (json.loads((d / "split.json").read_text()) for d in (dp_dir, memorised_dir))
    assert split["members"] == memorised["members"]                 # the memorised fixture's 32 members
    t = DiffusersTarget.from_pretrained(dp_dir, device="cpu")
    assert t.sample_shape == (1, 32, 32) and t.num_train_timesteps == 1000
