"""Two continuous-time (VP-SDE) targets on the same utterances: one over mel-spectrograms, one over waveforms.

The controlled version of the PIA paper's text-to-speech comparison (Grad-TTS, which outputs mel-spectrograms,
leaked far more than DiffWave/FastDiff, which output waveforms; the paper notes that those models also differ
in architecture). Here only the output modality differs:

* the same members (the audio corpus' split), the same number of epochs, batch size, learning rate, EMA,
  seed, VP-SDE (beta_min 0.1, beta_max 20) and training objective (:func:`diffmia.train_vpsde.train_vpsde`);
* ``mel``: a 2-D ``diffusers`` ``UNet2DModel`` over 1 x 32 x 32 log-mel segments (channels 16, 32; two
  residual blocks per level; 231,105 parameters);
* ``wave``: :class:`diffmia.wave_unet.WaveUNet1D` over the matching 4,096-sample raw segments (a patch
  convolution of stride 4, then channels 16, 32, 64; 234,225 parameters), served to the attacks as
  1 x 1 x 4,096 samples.

The two networks have about the same number of parameters and cost about the same per step on a CPU core; they
cannot be the same network, since one sees a 2-D time-frequency image and the other a 1-D signal.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from .errors import DiffmiaError

MODALITIES = ("mel", "wave")


def build_model(modality: str, size: int):
    """The network of ``modality`` for samples of ``size`` (mel bands = frames; waveform length)."""
    if modality == "mel":
        from diffusers import UNet2DModel

        return UNet2DModel(sample_size=size, in_channels=1, out_channels=1, block_out_channels=(16, 32),
                           layers_per_block=2, down_block_types=("DownBlock2D", "DownBlock2D"),
                           up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8)
    if modality == "wave":
        from .wave_unet import WaveUNet1D

        return WaveUNet1D(sample_size=size, block_out_channels=(16, 32, 64), patch=4, kernel_size=5)
    raise DiffmiaError(f"--modality must be one of {MODALITIES}, got {modality!r}")


def model_data(corpus, modality: str, scale: float = 1.0) -> np.ndarray:
    """The corpus' samples as the target of ``modality`` takes them: N x 1 x 32 x 32 (mel) or
    N x 1 x 1 x L (waveform; a 1-D sample with H = 1), times ``scale`` (the target's recorded data scale)."""
    x = corpus.mel[:, None] if modality == "mel" else corpus.wave[:, None, None, :]
    return np.ascontiguousarray(x * np.float32(scale), dtype=np.float32)


def steps_for(epochs: int, n_members: int, batch_size: int) -> int:
    """Training steps for ``epochs`` passes over the members (the last batch of an epoch may be partial)."""
    return int(math.ceil(epochs * n_members / batch_size))


def train_audio(corpus_dir, modality: str, out, *, epochs: int = 2000, batch_size: int = 32, lr: float = 1e-3,
                warmup_steps: int = 50, ema_decay: float = 0.995, checkpoint_every: int = 200, seed: int = 0,
                threads: int | None = None, device: str = "cpu", max_steps_this_run: int | None = None,
                progress: bool = True, command: str | None = None, scale: float = 1.0) -> dict:
    """Train the ``modality`` target on the members of the corpus in ``corpus_dir``; rerun to resume. ``scale``
    multiplies every sample (recorded in training.json; attack-audio applies it): e.g. 4 gives the waveforms
    (std 0.11) the mel-spectrograms' spread (std 0.45), to compare the modalities at one signal level."""
    from .data.audio_corpus import load_audio_corpus
    from .train_vpsde import train_vpsde

    if modality not in MODALITIES:
        raise DiffmiaError(f"--modality must be one of {MODALITIES}, got {modality!r}")
    corpus = load_audio_corpus(corpus_dir)
    if not (np.isfinite(scale) and scale > 0):
        raise DiffmiaError(f"--scale must be a positive number, got {scale}")
    data = model_data(corpus, modality, scale)
    members = np.asarray(corpus.members, dtype=np.int64)
    pos = {int(i): k for k, i in enumerate(corpus.ids)}
    rows = np.array([pos[int(i)] for i in members])
    size = data.shape[-1]
    model = build_model(modality, size)
    split_file = Path(corpus_dir) / "split.json"
    split = json.loads(split_file.read_text())
    record = {"modality": modality, "scale": float(scale), "data_std": float(data[rows].std()), "epochs": epochs, "n_members": len(members),
              "corpus": str(Path(corpus_dir).resolve()),
              "corpus_split_sha256": hashlib.sha256(split_file.read_bytes()).hexdigest(),
              "sample_shape": list(data.shape[1:]), "command": command}
    return train_vpsde(model, data[rows], out, ids=members, steps=steps_for(epochs, len(members), batch_size),
                       batch_size=batch_size, lr=lr, warmup_steps=warmup_steps, ema_decay=ema_decay,
                       checkpoint_every=checkpoint_every, seed=seed, max_steps_this_run=max_steps_this_run,
                       threads=threads, device=device, progress=progress, split=split, record=record)
