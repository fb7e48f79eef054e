"""Speech synthesised offline with espeak-ng, cut to one fixed-length segment per utterance, and its
log-mel spectrogram: the signal side of the audio corpus (the corpus files are ``audio_corpus.py``).

Conventions (the only place they are set):

* espeak-ng writes 22,050 Hz 16-bit mono; that is resampled to ``SR`` = 16,000 Hz by
  ``scipy.signal.resample_poly`` (up 320, down 441, its default Kaiser window) and scaled by the one fixed
  constant ``WAVE_SCALE`` = 0.9/32768 (int16 full scale -> 0.9). The 10% headroom is for the resampler's
  ringing: espeak-ng's loudest samples sit at int16 full scale and resampled they reach up to 1.019 x full
  scale (measured on the default corpus), so nothing is clipped; a clip to [-1, 1] stays as a guard and
  corpus.json records how many samples it changed.
* The segment: speech onset = start of the first 10 ms window (``ONSET_WINDOW`` samples) whose mean power
  is at least ``ONSET_POWER`` (RMS 0.01, -40 dB full scale); the ``SEGMENT`` = 4096 samples (0.256 s) from
  there, zero-padded at the end if the utterance is shorter.
* The mel spectrogram of exactly that segment: a ``N_FFT`` = 512 point STFT, hop ``HOP`` = 128, periodic Hann
  window, centred frames with reflect padding (33 frames; the first ``N_FRAMES`` = 32 are kept), power
  |X|^2, ``N_MELS`` = 32 bands of ``librosa.filters.mel(sr=16000, n_fft=512, n_mels=32, fmin=0, fmax=8000)``
  (Slaney mel scale and area normalisation, librosa's defaults). dB = 10 log10(mel / ``ref_power()``), where
  0 dB is the largest band power a full-scale (amplitude 1) sine can give; clipped to [-80, 0] dB
  (``DB_RANGE``) and mapped linearly to [-1, 1] (-80 dB -> -1, 0 dB -> 1). The reference is fixed: no item
  is normalised on its own.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ..errors import DataError

ESPEAK_SR = 22050
SR = 16000
RESAMPLE_UP, RESAMPLE_DOWN = 320, 441          # 16000 / 22050 = 320 / 441
WAVE_SCALE = 0.9 / 32768.0                     # int16 full scale -> 0.9 (headroom for resampling overshoot)
ONSET_WINDOW = 160                             # 10 ms at 16 kHz
ONSET_POWER = 1e-4                             # mean power of a 10 ms window (RMS 0.01, -40 dBFS)
SEGMENT = 4096                                 # 0.256 s at 16 kHz
N_FFT, HOP, N_MELS, N_FRAMES = 512, 128, 32, 32
FMIN, FMAX = 0.0, 8000.0
DB_RANGE = 80.0
SPEED_RANGE = (80, 450)                        # words per minute espeak-ng accepts

INSTALL_HINT = ("install the Debian package espeak-ng (sudo apt-get install espeak-ng, or 'make espeak'); "
                "elsewhere see https://github.com/espeak-ng/espeak-ng")


def espeak_path() -> str:
    """The espeak-ng executable on PATH, or a DataError saying how to install it."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise DataError(f"espeak-ng not found on PATH: {INSTALL_HINT}")
    return exe


def espeak_version(exe: str | None = None) -> str:
    """The first line of ``espeak-ng --version``, e.g. 'eSpeak NG text-to-speech: 1.51  Data at: ...'."""
    out = subprocess.run([exe or espeak_path(), "--version"], capture_output=True, text=True, timeout=30)
    return " ".join(out.stdout.split())


def synthesise(text: str, voice: str, speed: int, workdir: str | Path | None = None,
               exe: str | None = None) -> np.ndarray:
    """``text`` spoken by espeak-ng ``voice`` at ``speed`` words per minute: float32 at ``SR`` Hz, in [-1, 1]
    after ``WAVE_SCALE`` (not yet clipped: see ``to_segment``)."""
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    exe = exe or espeak_path()
    if not text.strip() or text.lstrip().startswith("-"):
        raise DataError(f"cannot speak {text!r}: empty, or starts with '-' (espeak-ng would read an option)")
    if not SPEED_RANGE[0] <= int(speed) <= SPEED_RANGE[1]:
        raise DataError(f"speed {speed} words per minute is outside espeak-ng's {SPEED_RANGE[0]}-{SPEED_RANGE[1]}")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        wav = Path(tmp) / "utterance.wav"
        r = subprocess.run([exe, "-v", voice, "-s", str(int(speed)), "-w", str(wav), text],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0 or not wav.exists():
            msg = " ".join((r.stderr or r.stdout).split()) or f"exit status {r.returncode}"
            raise DataError(f"espeak-ng -v {voice} -s {speed} failed: {msg} (voices: espeak-ng --voices=en)")
        sr, x = wavfile.read(wav)
    if sr != ESPEAK_SR or x.dtype != np.int16 or x.ndim != 1:
        raise DataError(f"espeak-ng wrote {sr} Hz {x.dtype} with shape {x.shape}; expected {ESPEAK_SR} Hz "
                        "16-bit mono")
    y = resample_poly(x.astype(np.float64), RESAMPLE_UP, RESAMPLE_DOWN)
    return (y * WAVE_SCALE).astype(np.float32)


def onset(x: np.ndarray) -> int:
    """Start of the first ``ONSET_WINDOW``-sample window whose mean power reaches ``ONSET_POWER``; 0 for
    a signal with none (silence)."""
    x = np.asarray(x, np.float64)
    if len(x) < ONSET_WINDOW:
        return 0
    power = np.convolve(x * x, np.full(ONSET_WINDOW, 1.0 / ONSET_WINDOW), mode="valid")
    loud = np.flatnonzero(power >= ONSET_POWER)
    return int(loud[0]) if len(loud) else 0


def to_segment(x: np.ndarray) -> tuple[np.ndarray, int, int]:
    """(the ``SEGMENT`` samples from the speech onset, clipped to [-1, 1] and zero-padded if short; the
    onset; how many samples clipping changed)."""
    start = onset(x)
    seg = np.zeros(SEGMENT, np.float32)
    piece = np.asarray(x[start:start + SEGMENT], np.float32)
    seg[:len(piece)] = piece
    clipped = int(np.count_nonzero(np.abs(seg) > 1.0))
    return np.clip(seg, -1.0, 1.0), start, clipped


@functools.lru_cache(maxsize=1)
def mel_filterbank() -> np.ndarray:
    """``N_MELS`` x (``N_FFT``/2 + 1) float64 filters from librosa (Slaney scale and normalisation)."""
    import librosa

    return librosa.filters.mel(sr=SR, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN, fmax=FMAX, dtype=np.float64)


def _window() -> np.ndarray:
    n = np.arange(N_FFT)
    return 0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)          # periodic Hann (scipy/librosa 'hann')


def mel_power(x: np.ndarray) -> np.ndarray:
    """Mel-band power, ``N_MELS`` x frames, of a 1-D signal (centred frames, reflect padding, all frames)."""
    x = np.asarray(x, np.float64)
    padded = np.pad(x, N_FFT // 2, mode="reflect")
    n_frames = 1 + (len(padded) - N_FFT) // HOP
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(n_frames)[:, None]
    spec = np.abs(np.fft.rfft(padded[idx] * _window(), axis=1)) ** 2          # frames x bins
    return mel_filterbank() @ spec.T


@functools.lru_cache(maxsize=1)
def ref_power() -> float:
    """The 0 dB reference: the largest mel-band power that a full-scale sine gives, over sines at every
    frequency of a 1 Hz grid from 1 Hz to 7999 Hz (about 233.76 for these settings; computed, not tuned)."""
    t = np.arange(N_FFT) / SR
    freqs = np.arange(1.0, SR / 2)
    frames = np.sin(2 * np.pi * freqs[:, None] * t[None, :]) * _window()     # one frame per frequency
    spec = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    return float((spec @ mel_filterbank().T).max())


def log_mel(segment: np.ndarray) -> np.ndarray:
    """The ``N_MELS`` x ``N_FRAMES`` log-mel of a ``SEGMENT``-sample segment, float32 in [-1, 1]."""
    if np.shape(segment) != (SEGMENT,):
        raise DataError(f"a segment has {SEGMENT} samples, got shape {np.shape(segment)}")
    p = mel_power(segment)[:, :N_FRAMES]
    db = 10.0 * np.log10(np.maximum(p, 1e-30) / ref_power())
    db = np.clip(db, -DB_RANGE, 0.0)
    return (db / DB_RANGE * 2.0 + 1.0).astype(np.float32)
