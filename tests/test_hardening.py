"""A hostile or careless user gets one line ``diffmia: error: ...``, exit 2, and loses nothing computed."""

import errno
import json
from pathlib import Path

import numpy as np
import pytest

import diffmia.features as feats_mod
from diffmia.cli import main

MEMORISED = Path(__file__).resolve().parent / "fixtures" / "memorised"
BASE = ["attack", "--target", str(MEMORISED), "--device", "cpu", "--quiet", "--n-boot", "1",
        "--n-members", "16", "--n-nonmembers", "16"]


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    assert err.startswith("diffmia: error: ") and err.count("\n") == 1, err
    for n in needles:
        assert n in err, (n, err)
    return err


@pytest.mark.parametrize("args, needle", [
    (["--n-nonmembers", "-3"], "--n-nonmembers must be a positive integer, got -3"),
    (["--n-nonmembers", "5000"], "the split has 96 non-members (and 32 members)"),
    (["--calibration-fraction", "-0.2"], "--calibration-fraction must be a number strictly between 0 and 1"),
    (["--n-boot", "0"], "--n-boot must be a positive integer, got 0"),
    (["--workers", "0"], "--workers must be a positive integer, got 0"),
    (["--chunk-size", "0"], "--chunk-size must be a positive integer, got 0"),
    (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    (["--seed", "-1"], "--seed must be a non-negative integer, got -1"),
    (["--device", "gpu7"], "--device must be auto, cpu, cuda or cuda:N"),
    (["--attacks", ","], "--attacks must be a non-empty comma-separated list"),
    (["--attacks", "pia", "--param", "pia.t=1.5"], "pia: t must be"),
    (["--attacks", "pia", "--param", "pia.t=abc"], "pia: t must be"),
    (["--attacks", "sima,fusion", "--param", "fusion.components=sima"], "fusion: components must be"),
])
def test_out_of_range_or_wrong_type_values_are_refused(tmp_path, capsys, args, needle):
    out = tmp_path / "run"
    assert main([*BASE, "--out", str(out), *args]) == 2
    _one_line_error(capsys, needle)
    assert not any(out.glob("features/*/chunk_*.npz"))          # refused before any query


def _rgb_npz(tmp_path, fmnist):
    """The fixture split's members and 16 non-members as 3-channel images, with their own split file."""
    from diffmia.data import MembershipSplit, load_npz

    split = MembershipSplit.load(MEMORISED / "split.json").limit(None, 16)
    ids = np.concatenate([split.members, split.nonmembers])
    grey = fmnist.subset(ids).images
    path = tmp_path / "rgb.npz"
    np.savez(path, images=np.repeat(grey, 3, axis=-1), ids=ids)
    data = load_npz(path)
    MembershipSplit.for_data(data, split.members, split.nonmembers).save(tmp_path / "rgb_split.json")
    return path


def test_three_channel_images_on_a_one_channel_target(tmp_path, capsys, fmnist):
    data = _rgb_npz(tmp_path, fmnist)
    args = [*BASE[:-4], "--data", str(data), "--split", str(tmp_path / "rgb_split.json"), "--attacks", "pia",
            "--no-blind", "--out", str(tmp_path / "run")]
    assert main(args) == 2
    _one_line_error(capsys, "the images are 28x28x3", "takes 1-channel images", "--convert grey")
    assert main([*args, "--convert", "grey"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["attacks"]["pia"]["auc"] > 0.9               # luminance of grey x 3 is the grey image


def test_one_channel_images_on_a_three_channel_target(tmp_path, capsys):
    import torch
    from diffusers import DDPMScheduler, UNet2DModel

    from diffmia.data import MembershipSplit, load_npz

    target = tmp_path / "rgb-target"
    torch.manual_seed(0)
    UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 8), norm_num_groups=4,
                layers_per_block=1, down_block_types=("DownBlock2D",) * 2,
                up_block_types=("UpBlock2D",) * 2).save_pretrained(target / "unet")
    DDPMScheduler(num_train_timesteps=100).save_pretrained(target / "scheduler")
    grey = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "grey.npz", images=grey)
    MembershipSplit.random(load_npz(tmp_path / "grey.npz"), 4, 4).save(target / "split.json")
    args = ["attack", "--target", str(target), "--data", str(tmp_path / "grey.npz"), "--attacks", "loss",
            "--param", "loss.timesteps=10", "--device", "cpu", "--quiet", "--n-boot", "1", "--no-blind",
            "--out", str(tmp_path / "run")]
    assert main(args) == 2
    _one_line_error(capsys, "the images are 8x8x1", "takes 3-channel images", "--convert rgb")
    assert main([*args, "--convert", "rgb"]) == 0


# ----------------------------------------------------------------------------- the output folder
def test_an_output_folder_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "taken"
    f.write_text("not a folder")
    assert main([*BASE, "--attacks", "loss", "--out", str(f)]) == 2
    _one_line_error(capsys, str(f), "cannot write the run folder")


@pytest.mark.parametrize("code, text", [(errno.ENOSPC, "No space left on device"),
                                        (errno.EROFS, "Read-only file system")])
def test_a_full_or_read_only_disk_keeps_the_finished_chunks(tmp_path, capsys, monkeypatch, request, code, text):
    real = feats_mod.save_npz
    written = []

    def save(path, *a, **k):
        if written:                      # the first chunk lands, the second hits the full disk
            raise OSError(code, text, str(path))
        written.append(path)
        return real(path, *a, **k)

    monkeypatch.setattr(feats_mod, "save_npz", save)
    args = [*BASE, "--attacks", "loss", "--no-blind", "--chunk-size", "8", "--out", str(tmp_path / "run")]
    assert main(args) == 2
    _one_line_error(capsys, text, "chunk_0000008.npz")
    monkeypatch.setattr(feats_mod, "save_npz", real)
    calls = request.getfixturevalue("chunk_calls")
    assert main(args) == 0
    assert len(calls) == 3                               # 4 chunks, the first one kept


def test_report_on_a_half_written_run_says_how_to_finish_it(tmp_path, capsys, monkeypatch):
    import diffmia.run as run_mod

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_mod.protocol, "attack_scores", killed)   # killed after the queries
    args = [*BASE, "--attacks", "loss", "--no-blind", "--out", str(tmp_path / "run")]
    assert main(args) == 130
    capsys.readouterr()
    assert main(["report", str(tmp_path / "run")]) == 2
    _one_line_error(capsys, "the run did not finish (metrics.json missing; 1 feature chunks are cached)",
                    "running the same command again: diffmia attack")
    assert main(["report", str(tmp_path / "nothing")]) == 2
    _one_line_error(capsys, "not a run folder")


# ----------------------------------------------------------------------------- blind baseline and headline
def test_no_blind_still_runs_the_shift_test(tmp_path):
    assert main([*BASE, "--attacks", "loss", "--no-blind", "--out", str(tmp_path / "run")]) == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "blind" not in m["attacks"] and m["shift"]["statistic"] == "mmd2_rbf"


def _report(attack_auc, blind_auc=None, blind_lo=None, shift_p=0.5):
    r = {"auc": attack_auc, "auc_ci": (attack_auc - 0.05, attack_auc + 0.05), "tpr_at_1pct_fpr": 0.3,
         "n_members": 50, "n_nonmembers": 500, "threat_model": "white-box"}
    attacks = {"pia": r}
    if blind_auc is not None:
        attacks["blind"] = {**r, "auc": blind_auc, "auc_ci": (blind_lo, blind_auc + 0.05)}
    return {"attacks": attacks, "shift": {"p_value": shift_p}}


@pytest.mark.parametrize("report, leaks", [
    (_report(0.9, 0.5, 0.45), True),
    (_report(0.9, 0.7, 0.62), False),       # the split itself is shifted
    (_report(0.6, 0.65, 0.48), False),      # the attack does not beat the blind baseline
    (_report(0.9), True),                   # --no-blind, no image shift
    (_report(0.9, shift_p=0.001), False),   # --no-blind, the images are shifted
])
def test_the_headline_never_claims_a_leak_the_blind_baseline_explains(report, leaks):
    from diffmia.report import interpretation

    text = interpretation(report)
    assert ("leaks membership" in text) == leaks
    assert leaks or "cannot be judged on this split" in text


# ----------------------------------------------------------------------------- --config FILE.toml
def test_a_configuration_file_with_flags_overriding_it(tmp_path, capsys):
    toml = tmp_path / "audit.toml"
    toml.write_text(f'target = "{MEMORISED}"\nout = "{tmp_path / "run"}"\nattacks = ["pia", "loss"]\n'
                    'n-members = 16\nn_nonmembers = 8\ndevice = "cpu"\nn-boot = 1\nno-blind = true\nquiet = true\n'
                    '[param.pia]\nt = [100, 200]\n')
    assert main(["attack", "--config", str(toml), "--n-nonmembers", "16", "--param", "loss.timesteps=50"]) == 0
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    c = info["config"]
    assert c["attacks"] == ["pia", "loss"] and c["n_members"] == 16 and c["n_nonmembers"] == 16
    assert c["params"] == {"pia": {"t": [100, 200]}, "loss": {"timesteps": 50}} and c["blind"] is False
    assert c["config_file"] == str(toml)
    toml.write_text('target = "x"\nn-boots = 3\n')
    assert main(["attack", "--config", str(toml)]) == 2
    _one_line_error(capsys, "unknown key 'n-boots'")
    toml.write_text('target = "x"\nn-boot = "many"\n')
    assert main(["attack", "--config", str(toml)]) == 2
    _one_line_error(capsys, "n-boot must be int, got 'many'")
    toml.write_text('target = [')
    assert main(["attack", "--config", str(toml)]) == 2
    _one_line_error(capsys, "not a valid TOML file")
