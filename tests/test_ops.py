"""The shared diffusion maths against diffusers' schedulers."""

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from diffmia import ops


def _abar():
    return DDPMScheduler(num_train_timesteps=1000).alphas_cumprod.double()


def test_q_sample_matches_scheduler_add_noise():
    sched = DDPMScheduler(num_train_timesteps=1000)
    x0, eps = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    t = torch.tensor([0, 10, 500, 999])
    assert torch.allclose(ops.q_sample(_abar(), x0, t, eps), sched.add_noise(x0, eps, t), atol=1e-5)


def test_ddim_move_matches_ddim_scheduler_step():
    sched = DDIMScheduler(num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False)
    sched.set_timesteps(100)            # steps of 10: 990, 980, ..., 0
    x, e = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    ref = sched.step(e, 100, x, eta=0.0).prev_sample            # 100 -> 90
    assert torch.allclose(ops.ddim_move(_abar(), x, 100, 90, e), ref, atol=1e-5)


def test_ddim_move_round_trip_with_fixed_noise_is_identity():
    x, e = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    up = ops.ddim_move(_abar(), x, 30, 80, e)
    assert torch.allclose(ops.ddim_move(_abar(), up, 80, 30, e), x, atol=1e-4)


def test_eps_from_model_output_all_prediction_types():
    abar = _abar()
    x0, eps = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    t = 300
    a = abar[t].float()
    x_t = ops.q_sample(abar, x0, t, eps)
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    for kind, out in (("epsilon", eps), ("v_prediction", v), ("sample", x0)):
        assert torch.allclose(ops.eps_from_model_output(abar, x_t, t, out, kind), eps, atol=1e-4), kind


def test_step_losses_zero_for_exact_prediction_and_positive_otherwise():
    abar = _abar()
    x0, eps = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    for t in (0, 5, 400):
        x_t = ops.q_sample(abar, x0, t, eps)
        exact = ops.step_losses(abar, x0, x_t, t, eps, eps)
        wrong = ops.step_losses(abar, x0, x_t, t, eps, eps + 0.1)
        assert exact["eps"].abs().max() < 1e-8 and exact["x0"].abs().max() < 1e-4
        assert (wrong["eps"] > exact["eps"]).all() and (wrong["vlb"] > exact["vlb"]).all()


def test_noise_depends_only_on_stream_sample_and_key():
    a = ops.noise("loss", (1, 4, 4), [5, 6, 7], t=3)
    b = ops.noise("loss", (1, 4, 4), [7], t=3)
    assert torch.equal(a[2], b[0]) and not torch.equal(a[0], a[1])
    assert not torch.equal(a[0], ops.noise("loss", (1, 4, 4), [5], t=4)[0])


def test_noise_streams_reproduce_earlier_draws():
    """Golden values of every stream, drawn with diffmia 0.1 (before the streams had names): the same seed
    must keep giving the same noise, or published scores stop being reproducible."""
    golden = [
        (ops.noise("loss", (3,), [11], seed=2, t=150), [0.9305695295, 1.0079705715, 0.4285373390]),
        (ops.noise("forensics", (3,), [11], seed=2, t=150), [0.9305695295, 1.0079705715, 0.4285373390]),
        (ops.noise("transform", (3,), [4], t=300), [-1.6450263262, 0.2947853506, 1.6166309119]),
        (ops.noise("transform_step", (3,), [4], t=300, step=2), [0.1846920550, 0.2253839672, -0.7695192099]),
        (ops.noise("generate", (3,), [5], seed=3, step=0), [-0.0060992986, -1.0970057249, -1.1457512379]),
        (ops.noise("generate", (3,), [5], seed=3, step=1), [-1.3439583778, 1.4074363708, -0.3727702200]),
        (torch.randn(3, generator=ops.generator("train", seed=1, step=7)), [1.3652513027, -0.2609619498, -0.3973098099]),
    ]
    for got, want in golden:
        torch.testing.assert_close(got.flatten(), torch.tensor(want), rtol=0, atol=1e-7)
    assert ops.stream_seed("api_request", 12, seed=0) == 12 and ops.stream_seed("api_request", 12, seed=1) == 1_000_000_019


def test_documented_stream_agreements():
    """The promises of the stream table: forensics draws the loss attack's noise for every seed; with seed 0
    an image-to-image call for request seed s starts from the loss attack's noise of sample s at t_start."""
    for seed in (0, 3):
        torch.testing.assert_close(ops.noise("forensics", (1, 4, 4), [2, 9], seed=seed, t=40),
                                   ops.noise("loss", (1, 4, 4), [2, 9], seed=seed, t=40), rtol=0, atol=0)
    torch.testing.assert_close(ops.noise("transform", (1, 4, 4), [2, 9], t=300),
                               ops.noise("loss", (1, 4, 4), [2, 9], seed=0, t=300), rtol=0, atol=0)
    assert not torch.equal(ops.noise("transform", (1, 4, 4), [2], t=300),
                           ops.noise("loss", (1, 4, 4), [2], seed=1, t=300))
    try:
        ops.noise("nope", (1,), [0])
    except ValueError as e:
        assert "unknown noise stream" in str(e)
    else:
        raise AssertionError("an unknown stream must be refused")
