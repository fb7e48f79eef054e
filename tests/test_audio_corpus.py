"""The espeak-ng audio corpus (diffmia/data/audio.py, audio_corpus.py, ``diffmia audio-corpus``): shapes and
ranges, byte-identical rebuilds, the log-mel of known sines, the split's hashes, and the clear errors.
A few sentences and two voices, so it runs in seconds. `make test` installs espeak-ng first (make espeak)."""

import shutil

import numpy as np
import pytest

from diffmia.data import audio
from diffmia.data.audio_corpus import build_corpus, load_audio_corpus, load_sentences
from diffmia.errors import DataError

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="espeak-ng is not installed and could not be installed here (run 'make espeak', or apt-get install "
           "espeak-ng)")
SMALL = dict(sentences=3, voices=("en-us", "en-gb-x-rp+m3"), speeds=(140, 175), n_members=2, seed=1)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed and could not be installed here (run 'make espeak')")
    return build_corpus(tmp_path_factory.mktemp("audio") / "corpus", **SMALL)


def test_committed_sentences():
    s = load_sentences()
    assert 80 <= len(s) <= 120 and len(set(s)) == len(s)
    assert all(5 <= len(x.split()) <= 12 for x in s)
    first = [x.split()[0].strip(",").lower() for x in s]
    assert len(set(first)) == len(first)          # the 0.256 s segments start on different words
    assert load_sentences(3) == s[:3]
    with pytest.raises(DataError, match="ask for 1 to"):
        load_sentences(len(s) + 1)


@needs_espeak
def test_shapes_ranges_and_order(corpus_dir):
    c = load_audio_corpus(corpus_dir)
    n = 3 * 2 * 2
    assert c.wave.shape == (n, 4096) and c.wave.dtype == np.float32
    assert c.mel.shape == (n, 32, 32) and c.mel.dtype == np.float32
    assert c.ids.dtype == np.int64 and c.ids.tolist() == list(range(n))
    assert np.abs(c.wave).max() <= 1 and c.mel.min() >= -1 and c.mel.max() <= 1
    assert c.mel.min() == -1 and c.mel.max() > 0.3                       # fixed reference: speech, not silence
    assert 0.3 < np.abs(c.wave).max() < 1 and c.meta["clipped_samples"] == 0   # one global scale, no clipping
    # sentence-major order; every segment starts at speech, and every utterance is longer than its segment
    s = load_sentences(3)
    assert c.text.tolist() == [t for t in s for _ in range(4)]
    assert c.voice.tolist()[:4] == ["en-us", "en-us", "en-gb-x-rp+m3", "en-gb-x-rp+m3"]
    assert c.speed.tolist()[:4] == [140, 175, 140, 175]
    assert (np.mean(c.wave[:, :audio.ONSET_WINDOW] ** 2, axis=1) >= audio.ONSET_POWER).all()
    assert (np.array(c.meta["utterance_samples"]) >= np.array(c.meta["onset"]) + 4096).all()   # not padded
    assert c.meta["espeak_ng"].startswith("eSpeak NG") and c.meta["versions"]["librosa"]
    # each mel row is the log-mel of its own segment
    np.testing.assert_array_equal(c.mel[5], audio.log_mel(c.wave[5]))


@needs_espeak
def test_rebuild_is_byte_identical(corpus_dir, tmp_path):
    again = build_corpus(tmp_path / "again", **SMALL)
    for name in ("corpus.npz", "split.json", "corpus.json"):
        assert (again / name).read_bytes() == (corpus_dir / name).read_bytes(), name


def _slaney_mel(f):
    """Slaney's mel scale (linear to 1 kHz, logarithmic above), written out here to check librosa's bands."""
    f = np.asarray(f, float)
    return np.where(f < 1000, f / (200 / 3), 15 + np.log(np.maximum(f, 1e-9) / 1000) / (np.log(6.4) / 27))


def _slaney_hz(m):
    m = np.asarray(m, float)
    return np.where(m < 15, m * 200 / 3, 1000 * np.exp((m - 15) * np.log(6.4) / 27))


@pytest.mark.parametrize("band", [1, 6, 13, 20, 27, 30])
def test_sine_peaks_in_its_mel_band(band):
    centres = _slaney_hz(np.linspace(0, _slaney_mel(8000), 34))[1:-1]    # 32 band centres, 0..8000 Hz
    t = np.arange(audio.SEGMENT) / audio.SR
    mel = audio.log_mel((0.5 * np.sin(2 * np.pi * centres[band] * t)).astype(np.float32))
    assert mel.shape == (32, 32)
    profile = mel.mean(axis=1)
    assert profile.argmax() == band
    assert (mel.argmax(axis=0) == band).all()                             # in every frame
    assert profile[band] > 0.5 and profile[band] - np.delete(profile, band).max() > 0.1
    # a louder sine is louder by 20 log10(2) dB: the reference is fixed
    louder = audio.log_mel((1.0 * np.sin(2 * np.pi * centres[band] * t)).astype(np.float32))
    assert louder[band].mean() - mel[band].mean() == pytest.approx(20 * np.log10(2) / 40, abs=2e-3)


def test_stft_matches_torch_and_silence_is_the_floor():
    import torch

    x = np.random.default_rng(0).uniform(-1, 1, audio.SEGMENT)
    spec = torch.stft(torch.from_numpy(x), audio.N_FFT, audio.HOP, center=True, pad_mode="reflect",
                      window=torch.hann_window(audio.N_FFT, dtype=torch.float64), return_complex=True).abs() ** 2
    np.testing.assert_allclose(audio.mel_power(x), audio.mel_filterbank() @ spec.numpy(), rtol=1e-9, atol=1e-12)
    assert spec.shape[1] == 33
    assert (audio.log_mel(np.zeros(audio.SEGMENT, np.float32)) == -1).all()
    # a full-scale sine never passes 0 dB (the reference is the loudest band such a sine gives)
    t = np.arange(audio.SEGMENT) / audio.SR
    assert audio.log_mel(np.sin(2 * np.pi * 1234.5 * t).astype(np.float32)).max() <= 1.0


@needs_espeak
def test_split_hashes_verify_and_changed_item_is_refused(corpus_dir, tmp_path):
    c = load_audio_corpus(corpus_dir / "corpus.npz")
    # one rendering of each of 2 member sentences; all 4 renderings of the third sentence are non-members
    order = np.random.default_rng(1).permutation(3)
    assert len(c.members) == 2 and c.nonmembers.tolist() == list(range(4 * order[2], 4 * order[2] + 4))
    assert (c.members // 4).tolist() == order[:2].tolist()
    assert not set(c.text[c.members]) & set(c.text[c.nonmembers])      # no sentence on both sides
    assert c.is_member(c.members).all() and not c.is_member(c.nonmembers).any()
    bad = tmp_path / "bad"
    shutil.copytree(corpus_dir, bad)
    with np.load(bad / "corpus.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["wave"][int(c.nonmembers[0]), 100] += 1e-3
    np.savez(bad / "corpus.npz", **arrays)
    with pytest.raises(DataError, match=r"corpus\.npz: 1 items differ from the SHA-256 in .*split\.json") as e:
        load_audio_corpus(bad)
    assert "\n" not in str(e.value)

    arrays["wave"] = arrays["wave"][:, :2048]
    np.savez(bad / "corpus.npz", **arrays)
    with pytest.raises(DataError, match=r"corpus\.npz: 'wave' has shape \(12, 2048\)"):
        load_audio_corpus(bad)
    (bad / "split.json").unlink()
    with pytest.raises(DataError, match=r"split\.json: file not found"):
        load_audio_corpus(bad)


def test_members_need_a_sentence_left_for_the_non_members(tmp_path):
    with pytest.raises(DataError, match="cannot draw 3 members from 3 sentences: ask for 1 to 2"):
        build_corpus(tmp_path / "c", sentences=3, voices=("en-us",), speeds=(140,), n_members=3)


def test_espeak_missing_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))                            # no espeak-ng on PATH
    with pytest.raises(DataError, match=r"espeak-ng not found on PATH: install the Debian package espeak-ng "
                                        r"\(sudo apt-get install espeak-ng"):
        build_corpus(tmp_path / "c", sentences=2, voices=("en-us",), speeds=(140,), n_members=1)
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    with pytest.raises(DataError, match="apt-get install espeak-ng"):
        audio.espeak_path()


def test_cli_writes_the_files_and_errors_are_one_line(tmp_path, capsys, monkeypatch):
    from diffmia.cli import main

    if shutil.which("espeak-ng") is not None:
        out = tmp_path / "c"
        assert main(["audio-corpus", "--out", str(out), "--sentences", "2", "--voices", "en-us",
                     "--speeds", "160", "--n-members", "1", "--seed", "3", "--quiet"]) == 0
        said = capsys.readouterr().out
        assert f"written to {out}" in said and "2 items" in said and " s" in said
        c = load_audio_corpus(out)
        assert len(c) == 2 and c.speed.tolist() == [160, 160] and c.meta["seed"] == 3
        assert main(["audio-corpus", "--out", str(out), "--voices", "zz-no-such-voice", "--sentences", "2",
                     "--n-members", "1", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("diffmia: error: espeak-ng -v zz-no-such-voice") and err.count("\n") == 1
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["audio-corpus", "--out", str(tmp_path / "d"), "--sentences", "2", "--n-members", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("diffmia: error: espeak-ng not found") and err.count("\n") == 1
