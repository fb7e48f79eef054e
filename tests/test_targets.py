"""The target folder: its layout in one object, and the safety claim that weights load only from
safetensors (a folder with only pickled weights is refused, even when the pickle would load)."""

import json
import shutil

import pytest
import torch

from diffmia.cli import main
from diffmia.errors import TargetError
from diffmia.targets import DiffusersAPI, DiffusersTarget, TargetFolder


def test_layout_and_facts(memorised_dir, tmp_path):
    f = TargetFolder.open(memorised_dir)
    assert f.unet_dir("ema") == memorised_dir / "unet" and f.unet_dir("raw") == memorised_dir / "unet_raw"
    assert f.scheduler_dir == memorised_dir / "scheduler" and f.split_path.exists() and f.samples_png.exists()
    assert f.sample_size() == 32 and f.num_train_timesteps() == 1000 and not f.is_latent
    assert f.training_record()["steps"] == 1500
    (tmp_path / "vae").mkdir()
    assert TargetFolder(tmp_path).is_latent and TargetFolder(tmp_path).sample_size() is None
    assert TargetFolder(tmp_path).component_dir("tokenizer") == tmp_path / "tokenizer"
    with pytest.raises(TargetError, match="target folder not found"):
        TargetFolder.open(tmp_path / "missing")
    with pytest.raises(TargetError, match="weights must be 'ema' or 'raw'"):
        f.unet_dir("best")
    with pytest.raises(TargetError, match="unknown component"):
        f.component_dir("unet2")


@pytest.fixture
def pickled_only(memorised_dir, tmp_path):
    """The fixture with its UNet weights as a loadable PyTorch pickle (.bin) instead of safetensors."""
    from safetensors.torch import load_file

    out = tmp_path / "pickled"
    shutil.copytree(memorised_dir, out, ignore=shutil.ignore_patterns("*.safetensors", "unet_raw"))
    weights = load_file(memorised_dir / "unet" / "diffusion_pytorch_model.safetensors")
    torch.save(weights, out / "unet" / "diffusion_pytorch_model.bin")
    return out


def test_a_folder_with_only_pickled_weights_is_refused(pickled_only, capsys):
    for load in (DiffusersTarget.from_pretrained, DiffusersAPI.from_pretrained):
        with pytest.raises(TargetError, match="no .safetensors weights .*never unpickles"):
            load(pickled_only, device="cpu")
    assert main(["attack", "--target", str(pickled_only), "--out", str(pickled_only / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("diffmia: error:") and "never unpickles" in err and len(err.splitlines()) == 1


def test_missing_pieces_get_one_line_errors(memorised_dir, tmp_path):
    out = tmp_path / "t"
    shutil.copytree(memorised_dir, out, ignore=shutil.ignore_patterns("unet_raw", "scheduler"))
    with pytest.raises(TargetError, match="scheduler_config.json missing"):
        DiffusersTarget.from_pretrained(out, device="cpu")
    with pytest.raises(TargetError, match="no raw weights"):
        DiffusersTarget.from_pretrained(out, weights="raw", device="cpu")
    (out / "unet" / "config.json").write_text("{not json")
    with pytest.raises(TargetError, match="cannot read"):
        TargetFolder(out).sample_size()
    assert json.loads((memorised_dir / "unet" / "config.json").read_text())["sample_size"] == 32
