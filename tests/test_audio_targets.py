"""The two audio targets (diffmia/train_audio.py, wave_unet.py) and the audio attack run (audio_attack.py,
``diffmia train-audio`` / ``attack-audio``) on a corpus of 16 utterances (4 members; 8 non-members: 4 sentences x 2 speeds). The attacks' separation
on continuous-time targets is tested on the memorised VP-SDE fixture (tests/test_vpsde.py); the size of the
mel vs waveform effect is a benchmark (benchmarks/AUDIO.md), not a test."""

import json
import shutil

import numpy as np
import pytest
import torch

from diffmia.cli import main
from diffmia.scores import Scores
from diffmia.train_audio import build_model, model_data, steps_for, train_audio
from diffmia.wave_unet import WaveUNet1D

SMALL = dict(sentences=8, voices=("en-us",), speeds=(140, 175), n_members=4, seed=3)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed and could not be installed here (run 'make espeak')")
    from diffmia.data.audio_corpus import build_corpus

    return build_corpus(tmp_path_factory.mktemp("audio") / "corpus", **SMALL)


@pytest.fixture(scope="module")
def targets(corpus_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("targets")
    for m in ("mel", "wave"):
        train_audio(corpus_dir, m, out / m, epochs=3, batch_size=4, checkpoint_every=2, seed=0, threads=1,
                    progress=False)
    return out


def test_the_two_networks_match_in_size_not_in_shape():
    mel, wave = build_model("mel", 32), build_model("wave", 4096)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert (n(mel), n(wave)) == (231_105, 234_225)            # the numbers the module docstring states
    t = torch.tensor([0.3, 0.7]) * 1000
    assert mel(torch.zeros(2, 1, 32, 32), t).sample.shape == (2, 1, 32, 32)
    assert wave(torch.zeros(2, 1, 4096), t).sample.shape == (2, 1, 4096)
    with pytest.raises(Exception, match="modality"):
        build_model("spectrogram", 32)


def test_wave_unet_saves_loads_and_sees_time(tmp_path):
    torch.manual_seed(0)
    m = WaveUNet1D(sample_size=256, block_out_channels=(8, 16), patch=4).eval()
    x = torch.randn(3, 1, 256)
    with torch.no_grad():
        a = m(x, torch.tensor([100.0, 100.0, 100.0])).sample
        b = m(x, torch.tensor([900.0, 900.0, 900.0])).sample
    assert not torch.allclose(a, b)                            # the timestep changes the prediction
    m.save_pretrained(tmp_path / "unet")
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").exists()
    back = WaveUNet1D.from_pretrained(tmp_path / "unet").eval()
    with torch.no_grad():
        assert torch.equal(back(x, torch.tensor([100.0] * 3)).sample, a)


def test_both_targets_train_on_the_same_members_for_the_same_epochs(corpus_dir, targets):
    from diffmia.data.audio_corpus import load_audio_corpus
    from diffmia.targets.vpsde import VPSDETarget

    c = load_audio_corpus(corpus_dir)
    recs = {m: json.loads((targets / m / "training.json").read_text()) for m in ("mel", "wave")}
    assert recs["mel"]["modality"] == "mel" and recs["wave"]["modality"] == "wave"
    assert recs["mel"]["steps"] == recs["wave"]["steps"] == steps_for(3, 4, 4) == 3
    assert recs["mel"]["epochs"] == recs["wave"]["epochs"] == 3
    for m in ("mel", "wave"):
        split = json.loads((targets / m / "split.json").read_text())
        assert sorted(split["members"]) == sorted(c.members.tolist())
    shapes = {m: VPSDETarget.from_pretrained(targets / m, device="cpu").sample_shape for m in ("mel", "wave")}
    assert tuple(shapes["mel"]) == (1, 32, 32) and tuple(shapes["wave"]) == (1, 1, 4096)
    assert model_data(c, "wave").shape == (16, 1, 1, 4096) and model_data(c, "mel").shape == (16, 1, 32, 32)


def test_attack_audio_runs_every_attack_and_resumes_from_cache(corpus_dir, targets, tmp_path, monkeypatch, capsys):
    from diffmia.targets.vpsde import VPSDETarget

    run = tmp_path / "run"
    args = ["attack-audio", "--target", str(targets / "wave"), "--corpus", str(corpus_dir), "--out", str(run),
            "--n-boot", "20", "--threads", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    r = json.loads((run / "metrics.json").read_text())
    assert r["modality"] == "wave" and r["n_members"] == 4 and r["n_nonmembers"] == 8
    assert set(r["attacks"]) == {"pia", "pian", "secmi", "loss", "blind"} and "pia" in out and "shift test" in out
    first = {n: Scores.load(run / f"{n}.npz").variants[r["attacks"][n]["variant"]] for n in r["attacks"]}
    calls = []
    orig = VPSDETarget.eps
    monkeypatch.setattr(VPSDETarget, "eps", lambda self, *a, **k: calls.append(1) or orig(self, *a, **k))
    assert main(args) == 0
    assert calls == []                                         # every attack's features came from the cache
    again = json.loads((run / "metrics.json").read_text())
    for n in r["attacks"]:
        assert np.array_equal(Scores.load(run / f"{n}.npz").variants[again["attacks"][n]["variant"]], first[n])
    assert "The test half holds only 2 non-member sentences" in " ".join(r["warnings"])   # 4 sentences, half each
    assert (run / "roc_loglog.png").exists() and (run / "report.html").exists()
    md = (run / "report.md").read_text()        # the image runner's report, told the rows are grouped by sentence
    assert "Audio target (wave)" in md and "log-mel distributions, one rendering per sentence" in md
    assert r["attacks"]["pia"]["measured_queries_per_sample"] == r["attacks"]["pia"]["queries_per_sample"]


def test_attack_audio_refuses_bad_input_in_one_line(corpus_dir, targets, memorised_dir, tmp_path, capsys):
    base = ["--corpus", str(corpus_dir), "--out", str(tmp_path / "r"), "--n-boot", "5"]
    assert main(["attack-audio", "--target", str(targets / "mel"), "--n-nonmembers", "50", *base]) == 2
    assert "--n-nonmembers must be 1 to 8" in capsys.readouterr().err
    assert main(["attack-audio", "--target", str(targets / "mel"), "--n-nonmembers", "2", *base]) == 2
    err = capsys.readouterr().err                               # 2 renderings of 1 sentence: no test sentence
    assert "(4 members, 2 non-members in 4 and 1 groups, each kept whole)" in err and len(err.strip().splitlines()) == 1
    assert main(["attack-audio", "--target", str(memorised_dir), *base]) == 2   # an image DDPM, not audio
    err = capsys.readouterr().err
    assert err.startswith("diffmia: error:") and "train-audio" in err and len(err.strip().splitlines()) == 1
    assert main(["train-audio", "--corpus", str(corpus_dir), "--modality", "mel", "--out", str(tmp_path / "t"),
                 "--epochs", "0"]) == 2
    assert "--epochs must be at least 1" in capsys.readouterr().err


def test_image_attack_on_a_waveform_target_points_to_attack_audio(targets, tmp_path, capsys):
    assert main(["attack", "--target", str(targets / "wave"), "--attacks", "pia", "--out", str(tmp_path / "r"),
                 "--n-boot", "1"]) == 2
    err = capsys.readouterr().err
    assert "a 1-D (waveform) target takes audio, not images" in err and "attack-audio" in err


def test_a_scaled_waveform_target_is_trained_and_attacked_at_its_scale(corpus_dir, tmp_path, monkeypatch):
    """--scale 4 multiplies the waveforms for training (recorded) and attack-audio feeds the model the same
    scaled samples."""
    from diffmia.data.audio_corpus import load_audio_corpus
    from diffmia.targets.vpsde import VPSDETarget

    c = load_audio_corpus(corpus_dir)
    t = tmp_path / "wave4"
    assert main(["train-audio", "--corpus", str(corpus_dir), "--modality", "wave", "--out", str(t), "--epochs", "1",
                 "--batch-size", "4", "--scale", "4", "--threads", "1", "--quiet"]) == 0
    rec = json.loads((t / "training.json").read_text())
    members = np.sort(c.members)
    assert rec["scale"] == 4.0 and rec["data_std"] == pytest.approx(4 * float(c.wave[members].std()), rel=1e-5)
    seen = []
    orig = VPSDETarget.eps
    monkeypatch.setattr(VPSDETarget, "eps", lambda self, x, *a, **k: seen.append(float(x.abs().max()))
                        or orig(self, x, *a, **k))
    assert main(["attack-audio", "--target", str(t), "--corpus", str(corpus_dir), "--out", str(tmp_path / "r"),
                 "--attacks", "pia", "--n-boot", "5", "--batch-size", "64"]) == 0
    rows = np.r_[c.members, c.nonmembers]
    assert seen[0] == pytest.approx(4 * float(np.abs(c.wave[rows]).max()), rel=1e-6)   # PIA's eps(x0, 0) query
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["scale"] == 4.0
    assert main(["train-audio", "--corpus", str(corpus_dir), "--modality", "wave", "--out", str(tmp_path / "x"),
                 "--scale", "0"]) == 2


def test_train_audio_stopped_early_says_how_to_continue(corpus_dir, tmp_path, capsys):
    args = ["train-audio", "--corpus", str(corpus_dir), "--modality", "mel", "--out", str(tmp_path / "m"),
            "--epochs", "2", "--batch-size", "4", "--checkpoint-every", "1", "--threads", "1", "--quiet"]
    assert main(args + ["--max-steps-this-run", "1"]) == 0
    assert "at step 1; run the same command again to continue" in capsys.readouterr().out
    assert not (tmp_path / "m" / "unet").exists()
    assert main(args) == 0
    assert "mel target written to" in capsys.readouterr().out and (tmp_path / "m" / "unet").is_dir()


def test_attack_audio_refuses_a_corpus_whose_split_the_target_was_not_trained_on(corpus_dir, targets, tmp_path,
                                                                                  capsys):
    other = tmp_path / "other"
    shutil.copytree(corpus_dir, other)
    split = json.loads((other / "split.json").read_text())
    for a, b in (("members", "nonmembers"), ("member_sha256", "nonmember_sha256")):
        split[a], split[b] = split[b], split[a]                   # a valid split, but not the target's
    (other / "split.json").write_text(json.dumps(split))
    assert main(["attack-audio", "--target", str(targets / "mel"), "--corpus", str(other), "--out",
                 str(tmp_path / "r"), "--n-boot", "5"]) == 2
    err = capsys.readouterr().err
    assert "was trained on another corpus split" in err and len(err.strip().splitlines()) == 1


def test_attack_audio_names_a_nan_model_and_keeps_finished_features(corpus_dir, targets, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "nan"
    shutil.copytree(targets / "mel", bad)
    f = bad / "unet" / "diffusion_pytorch_model.safetensors"
    w = load_file(f)
    w["conv_out.bias"] = torch.full_like(w["conv_out.bias"], float("nan"))
    save_file(w, f)
    run = tmp_path / "r"
    assert main(["attack-audio", "--target", str(bad), "--corpus", str(corpus_dir), "--out", str(run),
                 "--n-boot", "5"]) == 2
    err = capsys.readouterr().err
    assert "pia: the model" in err and "non-finite" in err and len(err.strip().splitlines()) == 1
    assert not (run / "features" / "pia.npz").exists()          # nothing wrong is cached


def test_audio_blind_baseline_sees_the_log_mels_never_the_model_and_keeps_sentences_whole(corpus_dir, targets,
                                                                                          tmp_path, monkeypatch):
    """The blind baseline and the shift test see each segment's log-mel whichever target is attacked (same rows,
    same scores on the mel and the waveform target), never query it, and a sentence's renderings are all in the
    calibration half or all in the test half."""
    from diffmia import protocol
    from diffmia.audio_attack import attack_audio
    from diffmia.data.audio_corpus import load_audio_corpus
    from diffmia.targets.vpsde import VPSDETarget

    def no_queries(*a, **k):
        raise AssertionError("the blind baseline queried the target")

    monkeypatch.setattr(VPSDETarget, "eps", no_queries)
    r = {m: attack_audio(targets / m, corpus_dir, tmp_path / m, attacks=("blind",), n_boot=20) for m in ("mel", "wave")}
    s = {m: Scores.load(tmp_path / m / "blind.npz") for m in ("mel", "wave")}
    assert np.array_equal(s["mel"].variants["blind"], s["wave"].variants["blind"])
    assert r["mel"]["shift"] == r["wave"]["shift"] and r["mel"]["shift"]["one_row_per_group"]
    c = load_audio_corpus(corpus_dir)
    text = dict(zip(c.ids.tolist(), c.text.tolist()))
    half = {}
    for i, cal in zip(s["mel"].ids.tolist(), s["mel"].calibration.tolist()):
        assert half.setdefault(text[i], cal) == cal              # never one rendering in each half
    rows = [int(np.flatnonzero(c.ids == i)[0]) for i in s["mel"].ids]
    mel = c.mel[rows].reshape(len(rows), -1)
    groups = np.unique(c.text[rows], return_inverse=True)[1]
    expect = protocol.shift_check(mel, s["mel"].is_member, {}, groups=groups)["shift"]
    assert r["mel"]["shift"]["mmd2"] == pytest.approx(expect["mmd2"])
    monkeypatch.undo()
    plain = attack_audio(targets / "mel", corpus_dir, tmp_path / "nb", attacks=("loss",), blind=False, n_boot=20)
    assert set(plain["attacks"]) == {"loss"} and plain["shift"]["mmd2"] == r["mel"]["shift"]["mmd2"]
