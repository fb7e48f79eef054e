"""Training at the edges: fewer steps than the loss curve's interval, bad intervals, and a resume past an
unreadable checkpoint (the previous one is kept as checkpoint.prev)."""

import argparse
import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from diffmia.cli import main
from diffmia.errors import TargetError
from diffmia.train import TrainConfig, train
from diffmia.trainer import LOG_EVERY, load_checkpoint, save_checkpoint

TINY = ["--n-members", "8", "--n-nonmembers", "8", "--channels", "8,16", "--norm-num-groups", "4", "--batch-size", "4",
        "--warmup-steps", "3", "--sample-grid", "0", "--quality-samples", "0", "--device", "cpu", "--threads", "1",
        "--quiet"]
TINY_CFG = dict(n_members=8, n_nonmembers=8, channels=(8, 16), norm_num_groups=4, batch_size=4, warmup_steps=3,
                sample_grid=0, quality_samples=0, device="cpu", threads=1)


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


# ----------------------------------------------------------------------------- 2. checkpoints
def _two_checkpoints(tmp_path):
    """checkpoint (step 2) and checkpoint.prev (step 1) of a small linear model; the step-1 weights."""
    torch.manual_seed(0)
    m = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(m.parameters())
    ck = tmp_path / "checkpoint"
    save_checkpoint(ck, {"m": m}, opt, {"step": 1, "loss_curve": [[1, 0.5]], "seconds": 1.0})
    first = {k: v.clone() for k, v in m.state_dict().items()}
    m(torch.ones(1, 3)).sum().backward()
    opt.step()
    save_checkpoint(ck, {"m": m}, opt, {"step": 2, "loss_curve": [[1, 0.5], [2, 0.4]], "seconds": 2.0})
    assert json.loads((tmp_path / "checkpoint.prev" / "state.json").read_text())["step"] == 1
    return ck, first


def _fresh():
    m = torch.nn.Linear(3, 2)
    return m, torch.optim.AdamW(m.parameters())


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CORRUPT = {
    "truncated weights": ("m.safetensors", _truncate),
    "truncated state": ("state.json", _truncate),
    "state without a step": ("state.json", lambda p: p.write_text('{"loss_curve": [], "seconds": 0}')),
    "truncated optimizer": ("optimizer.pt", _truncate),
    "optimizer needing a full unpickle": ("optimizer.pt", lambda p: torch.save(argparse.Namespace(a=1), p)),
    "weights of another model": ("m.safetensors", lambda p: p.write_bytes(
        (p.parent.parent / "other.safetensors").read_bytes())),
}


@pytest.mark.parametrize("case", CORRUPT)
def test_an_unreadable_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys, case):
    from safetensors.torch import save_file

    ck, first = _two_checkpoints(tmp_path)
    save_file({"weight": torch.zeros(5, 5)}, tmp_path / "other.safetensors")
    name, corrupt = CORRUPT[case]
    corrupt(ck / name)
    m, opt = _fresh()
    state = load_checkpoint(ck, {"m": m}, opt)
    assert state["step"] == 1 and state["loss_curve"] == [[1, 0.5]]
    assert all(torch.equal(m.state_dict()[k], first[k]) for k in first) and opt.state_dict()["state"] == {}
    err = _one_line(capsys.readouterr().err, "diffmia: warning:")
    assert str(ck / name) in err and "(step 1)" in err and "checkpoint.corrupt" in err
    assert (tmp_path / "checkpoint.corrupt" / name).exists() and not ck.exists()


def test_checkpoints_of_earlier_versions_still_load(tmp_path, capsys):
    ck, _ = _two_checkpoints(tmp_path)
    shutil.rmtree(tmp_path / "checkpoint.prev")
    ck.rename(tmp_path / "checkpoint.old")                 # killed mid-save by an earlier version
    m, opt = _fresh()
    assert load_checkpoint(ck, {"m": m}, opt)["step"] == 2 and capsys.readouterr().err == ""


def test_no_loadable_checkpoint_is_an_error_that_deletes_nothing(tmp_path):
    ck, _ = _two_checkpoints(tmp_path)
    _truncate(ck / "m.safetensors")
    _truncate(tmp_path / "checkpoint.prev" / "optimizer.pt")
    m, opt = _fresh()
    with pytest.raises(TargetError, match="no checkpoint can be loaded") as e:
        load_checkpoint(ck, {"m": m}, opt)
    assert str(ck / "m.safetensors") in str(e.value) and str(tmp_path / "checkpoint.prev" / "optimizer.pt") in str(e.value)
    assert ck.exists() and (tmp_path / "checkpoint.prev").exists()


def test_a_resume_past_a_truncated_checkpoint_equals_an_uninterrupted_run(tmp_path, capsys):
    a, b, c = (str(tmp_path / x) for x in "abc")
    args = ["--steps", "30", "--checkpoint-every", "10", *TINY]
    assert main(["train", "--out", a, *args]) == 0
    assert main(["train", "--out", b, *args, "--max-steps-this-run", "25"]) == 0
    for sub, step in (("checkpoint", 25), ("checkpoint.prev", 20)):
        assert json.loads((tmp_path / "b" / sub / "state.json").read_text())["step"] == step
    shutil.copytree(b, c)
    broken = tmp_path / "b" / "checkpoint" / "unet_ema.safetensors"
    _truncate(broken)
    capsys.readouterr()
    assert main(["train", "--out", b, *args]) == 0
    err = _one_line(capsys.readouterr().err, "diffmia: warning:")
    assert str(broken) in err and "(step 20)" in err
    for sub in ("unet", "unet_raw"):
        wa, wb = (load_file(tmp_path / x / sub / "diffusion_pytorch_model.safetensors") for x in "ab")
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert _record(tmp_path / "b")["loss_curve"] == _record(tmp_path / "a")["loss_curve"]

    _truncate(tmp_path / "c" / "checkpoint" / "optimizer.pt")            # none loadable: one line, nothing lost
    (tmp_path / "c" / "checkpoint.prev" / "state.json").write_text("{")
    assert main(["train", "--out", c, *args]) == 2
    err = _one_line(capsys.readouterr().err, "diffmia: error: no checkpoint can be loaded")
    assert "optimizer.pt" in err and "state.json" in err and "Delete" in err
    assert (tmp_path / "c" / "checkpoint").exists() and (tmp_path / "c" / "checkpoint.prev").exists()
    assert not (tmp_path / "c" / "training.json").exists()
