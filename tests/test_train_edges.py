"""Training at the edges: fewer steps than the loss curve's interval, bad intervals."""

import json
import math

import pytest

from diffmia.cli import main
from diffmia.train import TrainConfig, train
from diffmia.trainer import LOG_EVERY

TINY = ["--n-members", "8", "--n-nonmembers", "8", "--channels", "8,16", "--norm-num-groups", "4", "--batch-size", "4",
        "--warmup-steps", "3", "--sample-grid", "0", "--device", "cpu", "--threads", "1", "--quiet"]
TINY_CFG = dict(n_members=8, n_nonmembers=8, channels=(8, 16), norm_num_groups=4, batch_size=4, warmup_steps=3,
                sample_grid=0, device="cpu", threads=1)


def _record(folder):
    return json.loads((folder / "training.json").read_text())


def _one_line(err: str, start: str) -> str:
    assert err.count("\n") == 1 and err.startswith(start), err
    return err


# ----------------------------------------------------------------------------- 1. short runs
def test_fewer_steps_than_the_loss_interval_gives_a_final_loss(tmp_path, capsys):
    assert 5 < LOG_EVERY
    assert main(["train", "--out", str(tmp_path / "t"), "--steps", "5", *TINY]) == 0
    rec = _record(tmp_path / "t")
    assert rec["steps"] == 5 and [s for s, _ in rec["loss_curve"]] == [5]
    assert math.isfinite(rec["final_loss"]) and rec["final_loss"] == rec["loss_curve"][-1][1]
    assert f"final loss {rec['final_loss']:.4f}" in capsys.readouterr().out


def test_the_curve_ends_at_the_last_step_and_a_resume_keeps_it(tmp_path):
    cfg = TrainConfig(steps=13, checkpoint_every=4, **TINY_CFG)
    train(cfg, tmp_path / "a", progress=False)
    train(cfg, tmp_path / "b", progress=False, max_steps_this_run=6)   # stops between two curve points
    train(cfg, tmp_path / "b", progress=False)
    ra, rb = _record(tmp_path / "a"), _record(tmp_path / "b")
    assert [s for s, _ in ra["loss_curve"]] == [10, 13] and ra["final_loss"] == ra["loss_curve"][-1][1]
    assert rb["loss_curve"] == ra["loss_curve"]


def test_train_sd_with_fewer_steps_than_the_loss_interval(tmp_path):
    from diffmia.sd_parts import SDParts
    from diffmia.train_sd import TrainSDConfig, train_sd

    parts = SDParts(vae_channels=(8, 16, 16), vae_groups=4, text_hidden=16, text_heads=2, unet_channels=(16, 32),
                    unet_groups=4, attention_head_dim=4)
    cfg = TrainSDConfig(n_members=4, n_nonmembers=4, vae_steps=3, steps=4, batch_size=4, warmup_steps=2,
                        sample_captions=0, device="cpu", threads=1, parts=parts)
    rec = _record(train_sd(cfg, tmp_path / "sd", progress=False))
    assert [s for s, _ in rec["vae_loss_curve"]] == [3] and [s for s, _ in rec["loss_curve"]] == [4]
    assert math.isfinite(rec["final_loss"]) and math.isfinite(rec["vae_final_loss"])


@pytest.mark.parametrize("cmd, option", [("train", "--checkpoint-every"), ("train", "--max-steps-this-run"),
                                         ("train-sd", "--checkpoint-every"), ("train-sd", "--max-steps-this-run"),
                                         ("train", "--steps")])
def test_intervals_below_one_are_refused_in_one_line(tmp_path, capsys, cmd, option):
    assert main([cmd, "--out", str(tmp_path / "t"), option, "0", "--quiet"]) == 2
    err = _one_line(capsys.readouterr().err, "diffmia: error:")
    assert f"{option} must be at least 1, got 0" in err and not (tmp_path / "t").exists()
