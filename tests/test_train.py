"""Training: the loss goes down, resume equals an uninterrupted run, kill -9 loses at most a checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from diffmia.errors import DiffmiaError
from diffmia.targets import DiffusersTarget
from diffmia.train import TrainConfig, train

TINY = dict(n_members=16, n_nonmembers=16, channels=(8, 16), norm_num_groups=4, batch_size=8, lr=2e-3,
            warmup_steps=5, checkpoint_every=10, sample_grid=4, sample_steps=4, quality_samples=0, device="cpu",
            threads=1)


def test_training_lowers_loss_and_resume_is_exact(tmp_path):
    cfg = TrainConfig(steps=60, **TINY)
    train(cfg, tmp_path / "a", progress=False)
    rec = json.loads((tmp_path / "a" / "training.json").read_text())
    curve = [v for _, v in rec["loss_curve"]]
    assert rec["steps"] == 60 and curve[-1] < 0.5 * curve[0]
    assert (tmp_path / "a" / "samples.png").exists() and (tmp_path / "a" / "model_index.json").exists()
    assert rec["hardware"]["device"] == "cpu" and "torch" in rec["versions"]

    train(cfg, tmp_path / "b", progress=False, max_steps_this_run=25)   # interrupted...
    assert not (tmp_path / "b" / "training.json").exists()
    train(cfg, tmp_path / "b", progress=False)                           # ...and resumed
    wa = load_file(tmp_path / "a" / "unet_raw" / "diffusion_pytorch_model.safetensors")
    wb = load_file(tmp_path / "b" / "unet_raw" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    t = DiffusersTarget.from_pretrained(tmp_path / "a", device="cpu")
    assert t.num_train_timesteps == 1000 and t.sample_shape == (1, 32, 32)
    with pytest.raises(DiffmiaError, match="other settings"):
        train(TrainConfig(steps=60, **{**TINY, "lr": 1e-4}), tmp_path / "a", progress=False)


def test_kill_9_then_rerun_continues(tmp_path):
    out = tmp_path / "t"
    cmd = [sys.executable, "-m", "diffmia", "train", "--out", str(out), "--steps", "150", "--n-members", "16",
           "--channels", "8,16", "--norm-num-groups", "4", "--batch-size", "8", "--checkpoint-every", "10",
           "--sample-grid", "0", "--quality-samples", "0", "--device", "cpu", "--threads", "1", "--quiet"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / "checkpoint" / "state.json"
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert state.exists() or (out / "checkpoint.prev" / "state.json").exists()
    done_before = json.loads((state if state.exists() else out / "checkpoint.prev" / "state.json").read_text())["step"]
    assert 0 < done_before < 150
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    rec = json.loads((out / "training.json").read_text())
    assert rec["steps"] == 150 and rec["loss_curve"][0][0] == 10


def test_augmentations_are_seeded_and_do_what_they_say():
    from diffmia.train import augment

    x = torch.linspace(-1, 1, 32).repeat(4, 1, 32, 1)                  # 4 images, a horizontal ramp
    flipped = augment(x, TrainConfig(hflip=True), torch.Generator().manual_seed(0))
    rows = [torch.equal(f, im.flip(-1)) or torch.equal(f, im) for f, im in zip(flipped, x)]
    assert all(rows) and any(torch.equal(f, im.flip(-1)) for f, im in zip(flipped, x))
    cut = augment(x, TrainConfig(cutout=8), torch.Generator().manual_seed(0))
    changed = (cut != x).flatten(1).sum(1)
    assert (changed > 0).all() and (changed <= 81).all() and (cut[cut != x] == 0).all()
    ra1 = augment(x, TrainConfig(randaugment=True), torch.Generator().manual_seed(1))
    ra2 = augment(x, TrainConfig(randaugment=True), torch.Generator().manual_seed(1))
    assert torch.equal(ra1, ra2) and ra1.shape == x.shape and ra1.min() >= -1 and ra1.max() <= 1
