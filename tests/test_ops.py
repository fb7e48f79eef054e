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
