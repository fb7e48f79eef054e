"""The espeak-ng audio corpus on disk (``diffmia audio-corpus``): sentences x voices x speeds synthesised
offline (``audio.py``), one 0.256 s segment and its log-mel per utterance, and a seeded membership split.

A corpus folder holds:

* ``corpus.npz`` (no pickles): ``wave`` float32 N x 4096 in [-1, 1] (16 kHz), ``mel`` float32 N x 32 x 32 in
  [-1, 1] (bands x frames), ``ids`` int64 0..N-1, ``text`` / ``voice`` str, ``speed`` int64 (words per
  minute). Items are sentence-major: id = (sentence * n_voices + voice) * n_speeds + speed. The same
  arguments give a byte-identical file on one machine.
* ``corpus.json``: every parameter and constant, the espeak-ng / librosa / scipy / numpy versions, each
  item's speech onset and the SHA-256 of its ``wave`` row's bytes (float32 little-endian).
* ``split.json``: a ``MembershipSplit`` (diffmia/data/splits.py) over the ids, drawn by sentence
  (:func:`draw_split`): one rendering of each of ``n_members`` seeded sentences is a member, every rendering of
  the other sentences a non-member, so no sentence is on both sides; with the same SHA-256 per id.
  ``load_audio_corpus`` checks those hashes against ``corpus.npz``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError, SplitError
from . import audio
from .splits import MembershipSplit

SENTENCES_FILE = Path(__file__).with_name("sentences.txt")
DEFAULT_VOICES = ("en-us", "en-us+f2", "en-gb-x-rp", "en-gb-x-rp+m3")
DEFAULT_SPEEDS = (140, 175)
FORMAT = "diffmia-audio-corpus/1"
KEYS = ("wave", "mel", "ids", "text", "voice", "speed")


def load_sentences(n: int | None = None) -> list[str]:
    """The committed sentences (sentences.txt), all or the first ``n``."""
    lines = [s.strip() for s in SENTENCES_FILE.read_text(encoding="utf-8").splitlines()]
    sentences = [s for s in lines if s and not s.startswith("#")]
    if n is not None and not 1 <= n <= len(sentences):
        raise DataError(f"cannot use {n} sentences: {SENTENCES_FILE} has {len(sentences)}; ask for 1 to "
                        f"{len(sentences)}")
    return sentences if n is None else sentences[:n]


def wave_sha256(wave: np.ndarray) -> list[str]:
    """SHA-256 of each row's float32 little-endian bytes."""
    w = np.ascontiguousarray(wave, dtype="<f4")
    return [hashlib.sha256(row.tobytes()).hexdigest() for row in w]


DRAW = ("sentences in the order of numpy default_rng(seed).permutation(n_sentences): the first n_members each give "
        "one member, the rendering (voice, speed) drawn by the same generator; every rendering of the other "
        "sentences is a non-member (in that order); the other renderings of member sentences are in neither set")


def draw_split(n_sentences: int, renderings: int, n_members: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(member ids, non-member ids) so that no sentence is on both sides: a non-member that is a member's
    sentence in another voice or speed would be a near-duplicate of it (see DRAW)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_sentences)
    members = order[:n_members] * renderings + rng.integers(0, renderings, n_members)
    nonmembers = (order[n_members:, None] * renderings + np.arange(renderings)).ravel()
    return members.astype(np.int64), nonmembers.astype(np.int64)


def build_corpus(out: str | os.PathLike, sentences: int | list[str] | None = None,
                 voices=DEFAULT_VOICES, speeds=DEFAULT_SPEEDS, n_members: int = 64, seed: int = 0,
                 progress: bool = False) -> Path:
    """Synthesise the corpus into folder ``out`` (corpus.npz, corpus.json, split.json); returns ``out``.
    ``sentences``: None (all committed ones), the first N of them, or a list of sentences."""
    texts = load_sentences(sentences) if sentences is None or isinstance(sentences, int) else list(sentences)
    voices, speeds = [str(v) for v in voices], [int(s) for s in speeds]
    for what, vals in (("sentences", texts), ("voices", voices), ("speeds", speeds)):
        if not vals:
            raise DataError(f"the audio corpus needs at least one of {what}")
        if len(set(vals)) != len(vals):
            raise DataError(f"the {what} list has repeats: {vals}")
    n = len(texts) * len(voices) * len(speeds)
    if not 1 <= n_members < len(texts):
        raise DataError(f"cannot draw {n_members} members from {len(texts)} sentences: ask for 1 to "
                        f"{len(texts) - 1} (one rendering of each member sentence is a member; every rendering of "
                        "the other sentences is a non-member)")
    exe = audio.espeak_path()
    version = audio.espeak_version(exe)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    items = [(t, v, s) for t in texts for v in voices for s in speeds]
    waves = np.zeros((n, audio.SEGMENT), np.float32)
    onsets, lengths, clipped = [], [], 0
    bar = _progress(items, progress)
    for i, (t, v, s) in enumerate(bar):
        x = audio.synthesise(t, v, s, exe=exe)
        seg, start, c = audio.to_segment(x)
        waves[i], clipped = seg, clipped + c
        onsets.append(start)
        lengths.append(len(x))
    mels = np.stack([audio.log_mel(w) for w in waves]).astype(np.float32)
    hashes = wave_sha256(waves)
    seen: dict[str, int] = {}
    for i, h in enumerate(hashes):
        if h in seen:
            raise DataError(f"items {seen[h]} and {i} have identical waveforms ({items[seen[h]]} and "
                            f"{items[i]}); use other sentences or voices")
        seen[h] = i

    arrays = {"wave": waves, "mel": mels, "ids": np.arange(n, dtype=np.int64),
              "text": np.array([t for t, _, _ in items], dtype=str),
              "voice": np.array([v for _, v, _ in items], dtype=str),
              "speed": np.array([s for _, _, s in items], dtype=np.int64)}
    _atomic(out / "corpus.npz", lambda f: np.savez(f, **arrays), binary=True)

    members, nonmembers = draw_split(len(texts), len(voices) * len(speeds), n_members, seed)
    split = MembershipSplit(members, nonmembers, dataset="espeak-audio", seed=seed,
                            member_sha256=[hashes[i] for i in members],
                            nonmember_sha256=[hashes[i] for i in nonmembers],
                            meta={"corpus": "corpus.npz", "n_items": n,
                                  "draw": DRAW})
    _atomic(out / "split.json", lambda f: f.write(json.dumps(split.to_dict())))      # as MembershipSplit.save
    import librosa
    import scipy

    record = {
        "format": FORMAT, "n_items": n, "n_members": n_members, "seed": seed,
        "sentences": texts, "voices": voices, "speeds": speeds,
        "order": "sentence-major: id = (sentence * n_voices + voice) * n_speeds + speed",
        "espeak_ng": version,
        "versions": {"python": sys.version.split()[0], "numpy": np.__version__, "scipy": scipy.__version__,
                     "librosa": librosa.__version__},
        "constants": {"espeak_sample_rate": audio.ESPEAK_SR, "sample_rate": audio.SR,
                      "resample_poly": [audio.RESAMPLE_UP, audio.RESAMPLE_DOWN], "wave_scale": audio.WAVE_SCALE,
                      "onset_window": audio.ONSET_WINDOW, "onset_power": audio.ONSET_POWER,
                      "segment": audio.SEGMENT, "n_fft": audio.N_FFT, "hop": audio.HOP, "window": "hann (periodic)",
                      "center": "reflect", "n_mels": audio.N_MELS, "n_frames": audio.N_FRAMES,
                      "fmin": audio.FMIN, "fmax": audio.FMAX, "mel_filters": "librosa.filters.mel (slaney)",
                      "ref_power": audio.ref_power(), "db_range": [-audio.DB_RANGE, 0.0],
                      "mel_scaling": "dB / 80 * 2 + 1: -80 dB -> -1, 0 dB -> 1"},
        "clipped_samples": clipped, "onset": onsets, "utterance_samples": lengths, "wave_sha256": hashes,
    }
    _atomic(out / "corpus.json", lambda f: f.write(json.dumps(record, indent=1)))
    return out


def _progress(items, on: bool):
    if not on:
        return items
    from tqdm import tqdm

    return tqdm(items, desc="espeak-ng", unit="utt")


def _atomic(path: Path, write, binary: bool = False) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
        write(f)
    os.replace(tmp, path)


@dataclass
class AudioCorpus:
    """A loaded corpus: arrays as in corpus.npz, the split's member and non-member ids, corpus.json."""

    wave: np.ndarray
    mel: np.ndarray
    ids: np.ndarray
    text: np.ndarray
    voice: np.ndarray
    speed: np.ndarray
    members: np.ndarray
    nonmembers: np.ndarray
    path: Path
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def is_member(self, ids) -> np.ndarray:
        """True for each id that the split lists as a member."""
        return np.isin(np.asarray(ids, dtype=np.int64), self.members)


def load_audio_corpus(path: str | os.PathLike) -> AudioCorpus:
    """Read a corpus folder (or its corpus.npz) and check it: keys, shapes, dtypes, ranges, and the split's
    SHA-256 of every item. Any problem is one DataError naming the file."""
    path = Path(path)
    folder = path.parent if path.suffix == ".npz" else path
    npz, split_file, meta_file = folder / "corpus.npz", folder / "split.json", folder / "corpus.json"
    for f in (npz, split_file):
        if not f.is_file():
            raise DataError(f"{f}: file not found (make the corpus with 'diffmia audio-corpus --out {folder}')")
    try:
        with np.load(npz, allow_pickle=False) as z:
            missing = [k for k in KEYS if k not in z.files]
            if missing:
                raise DataError(f"{npz}: missing arrays {missing} (has {sorted(z.files)})")
            a = {k: z[k] for k in KEYS}
    except DataError:
        raise
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{npz}: not a readable .npz file ({e})") from None
    n = len(a["ids"])
    want = {"wave": ((n, audio.SEGMENT), "float32"), "mel": ((n, audio.N_MELS, audio.N_FRAMES), "float32"),
            "ids": ((n,), "int64"), "text": ((n,), "str"), "voice": ((n,), "str"), "speed": ((n,), "int64")}
    for k, (shape, dtype) in want.items():
        ok = a[k].dtype.kind == "U" if dtype == "str" else a[k].dtype == np.dtype(dtype)
        if a[k].shape != shape or not ok:
            raise DataError(f"{npz}: '{k}' has shape {a[k].shape} and dtype {a[k].dtype}; expected {shape} {dtype}")
    if not np.array_equal(a["ids"], np.arange(n)):
        raise DataError(f"{npz}: 'ids' must be 0..{n - 1} in order")
    for k in ("wave", "mel"):
        if n and not (np.isfinite(a[k]).all() and np.abs(a[k]).max() <= 1.0):
            raise DataError(f"{npz}: '{k}' has values outside [-1, 1] or not finite")
    try:
        split = MembershipSplit.load(split_file)
    except SplitError as e:
        raise DataError(str(e)) from None
    ids = split.ids
    if ids.max() >= n:
        raise DataError(f"{split_file}: lists id {int(ids.max())} but {npz} has {n} items")
    if split.member_sha256 is None or split.nonmember_sha256 is None:
        raise DataError(f"{split_file}: no SHA-256 per item, so it cannot be checked against {npz}")
    have = wave_sha256(a["wave"][ids])
    bad = [int(i) for i, h, w in zip(ids, have, split.member_sha256 + split.nonmember_sha256) if h != w]
    if bad:
        raise DataError(f"{npz}: {len(bad)} items differ from the SHA-256 in {split_file} (ids {bad[:5]}); "
                        "the corpus was changed or the split belongs to another corpus")
    try:
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    except ValueError as e:
        raise DataError(f"{meta_file}: not valid JSON ({e})") from None
    return AudioCorpus(a["wave"], a["mel"], a["ids"], a["text"], a["voice"], a["speed"],
                       split.members, split.nonmembers, folder, meta)
