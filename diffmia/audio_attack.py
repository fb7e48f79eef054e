"""Attack an audio target (mel-spectrogram or waveform VP-SDE model) on its corpus' members and non-members.

The pipeline is the image runner's, on audio samples: corpus -> target -> per-attack features (cached in the
run folder, keyed by the attack's parameters, the target's weights and the samples) -> score variants ->
the calibration/test protocol (variant and thresholds chosen on a seeded calibration half, numbers on the test
half, bootstrap CIs, empirical epsilon) -> metrics.json, per-sample scores (.npz/.csv), report.md/.html
with ROC figures (the image runner's report writer).
Scores are oriented by each attack's definition (higher = member) and never flipped.

The rows are grouped by sentence (``GROUPS``): a non-member sentence has eight renderings, near-copies of one
another; split row by row, a learned attack could learn a sentence from its calibration renderings and
recognise it in the test half, and a row bootstrap would count eight correlated rows as eight draws.

Is the split itself shifted? As for images, every run adds the blind baseline (``blind``: a logistic
regression fitted on the calibration half, never querying the target) and the MMD permutation test between
member and non-member samples (``shift`` in metrics.json), with a warning when either finds a difference. Both
see each segment's log-mel-spectrogram from the corpus, whichever representation the target models: membership
is a property of the corpus split, so the same rows get the same blind scores on the mel and the waveform target
(a waveform's raw samples, with their arbitrary phase, would make a weaker and so less honest blind baseline).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from . import protocol
from .errors import DiffmiaError
from .scores import Scores, load_npz, save_npz
from .targets.pytorch_ddpm import sha256_file

AUDIO_ATTACKS = ("pia", "pian", "secmi", "loss")
MIN_TEST_SENTENCES = 10     # fewer test sentences on a side than this: a warning in the report
GROUPS = ("by sentence: a sentence's renderings (voices, speeds) are all in the calibration half or all in the test "
          "half, bootstrap CIs resample sentences, the Clopper-Pearson bounds (calibrated rates, empirical epsilon) and "
          "the shift test take one rendering per sentence")


def evaluation_rows(corpus, n_nonmembers: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, is_member): every member of the split and its first ``n_nonmembers`` non-members (all if None)."""
    members = np.asarray(corpus.members, dtype=np.int64)
    nonmembers = np.asarray(corpus.nonmembers, dtype=np.int64)
    if n_nonmembers is not None:
        if not 1 <= n_nonmembers <= len(nonmembers):
            raise DiffmiaError(f"--n-nonmembers must be 1 to {len(nonmembers)} (the corpus split's non-members), "
                               f"got {n_nonmembers}")
        nonmembers = nonmembers[:n_nonmembers]
    ids = np.concatenate([members, nonmembers])
    return ids, np.r_[np.ones(len(members), bool), np.zeros(len(nonmembers), bool)]


def attack_audio(target_dir, corpus_dir, out, *, attacks=AUDIO_ATTACKS, params: dict | None = None,
                 n_nonmembers: int | None = None, calibration_fraction: float = 0.5, seed: int = 0,
                 n_boot: int = 1000, weights: str = "ema", batch_size: int = 256, device: str = "cpu",
                 blind: bool = True) -> dict:
    """Run ``attacks`` on the audio target in ``target_dir``; results in ``out`` (rerun: cached features reused).
    ``blind``: add the blind baseline (on the segments' log-mels; see the module docstring)."""
    from .data.audio_corpus import load_audio_corpus
    from .report import write_report
    from .run import epsilon_audit, make_attack
    from .targets.vpsde import VPSDETarget
    from .train_audio import model_data

    target_dir, out = Path(target_dir), Path(out)
    record_file = target_dir / "training.json"
    if not record_file.exists():
        raise DiffmiaError(f"{target_dir}: not a trained audio target (training.json missing)")
    record = json.loads(record_file.read_text())
    modality = record.get("modality") or record.get("record", {}).get("modality")
    if modality is None:
        raise DiffmiaError(f"{record_file}: no 'modality' recorded; train the target with diffmia train-audio")
    corpus = load_audio_corpus(corpus_dir)
    split_file = Path(corpus_dir) / "split.json"
    trained_on = record.get("corpus_split_sha256")
    if trained_on and hashlib.sha256(split_file.read_bytes()).hexdigest() != trained_on:
        raise DiffmiaError(f"{target_dir} was trained on another corpus split than {split_file} (its training.json "
                           f"records split SHA-256 {trained_on[:12]}...; corpus {record.get('corpus')}): its members "
                           "would be scored as the wrong ones; pass the corpus it was trained on")
    ids, is_member = evaluation_rows(corpus, n_nonmembers)
    pos = {int(i): k for k, i in enumerate(corpus.ids)}
    rows = [pos[int(i)] for i in ids]
    data = model_data(corpus, modality, float(record.get("scale", 1.0)))[rows]
    mels = model_data(corpus, "mel")[rows]                     # what the blind baseline and the shift test see
    groups = np.unique(corpus.text[rows], return_inverse=True)[1]   # the sentence of each row
    target = VPSDETarget.from_pretrained(target_dir, weights=weights, device=device, batch_size=batch_size)
    if tuple(data.shape[1:]) != tuple(target.sample_shape):
        raise DiffmiaError(f"{target_dir}: the target takes samples of shape {tuple(target.sample_shape)}, the "
                           f"corpus' {modality} samples are {tuple(data.shape[1:])}")
    weights_file = next(iter(sorted((target_dir / ("unet" if weights == "ema" else "unet_raw")).glob("*.safetensors"))))
    key_base = {"weights": sha256_file(weights_file), "samples": hashlib.sha256(data.tobytes()).hexdigest(),
                "ids": hashlib.sha256(ids.tobytes()).hexdigest()}
    (out / "features").mkdir(parents=True, exist_ok=True)
    calib = protocol.calibration_split(is_member, calibration_fraction, seed, groups=groups)
    report = {"target": str(target_dir), "modality": modality, "scale": float(record.get("scale", 1.0)),
              "corpus": str(corpus_dir), "data": str(corpus_dir), "split": str(split_file), "weights": weights,
              "calibration_fraction": calibration_fraction, "epsilon_audit": epsilon_audit(None),
              "n_members": int(is_member.sum()), "n_nonmembers": int((~is_member).sum()),
              "sample_shape": list(data.shape[1:]), "seed": seed, "groups": GROUPS, "attacks": {}}
    all_scores = {}
    attacks = [n for n in attacks if n != "blind"] + (["blind"] if blind or "blind" in attacks else [])
    for name in attacks:
        atk = make_attack(name, (params or {}).get(name))
        key = {**key_base, "attack": name, "params": atk.get_params()}
        if name == "blind":     # never queries the target: keyed by the log-mels it sees, not by the weights
            key = {"attack": name, "params": atk.get_params(), "samples": hashlib.sha256(mels.tobytes()).hexdigest(),
                   "ids": key_base["ids"]}
        cache = out / "features" / f"{name}.npz"
        feats, meta = None, {}
        if cache.exists():
            arrays, meta = load_npz(cache)
            feats = arrays if meta.get("key") == key else None
        start = time.perf_counter()
        if feats is None:
            target.queries = 0
            feats = atk.features(None, mels, seeds=ids) if name == "blind" else atk.features(target, data, seeds=ids)
            bad = [k for k, v in feats.items() if not np.isfinite(np.asarray(v, dtype=np.float64)).all()]
            if bad:
                raise DiffmiaError(f"{name}: the model at {target_dir} answered non-finite values ({bad[0]}); "
                                   "the other attacks' cached features are kept")
            meta = {"key": key, "queries": target.queries}
            save_npz(cache, feats, meta)
        variants = protocol.attack_scores(atk, feats, is_member, calib, seed=seed, groups=groups)
        sc = Scores(name, ids, is_member, calib, variants, atk.get_params())
        sc.save(out)
        all_scores[name] = sc
        r = protocol.evaluate(variants, is_member, calib, n_boot=n_boot, seed=seed, groups=groups)
        r.update({"paper": atk.paper, "threat_model": atk.threat_model, "access": atk.access,
                  "params": atk.get_params(), "learned": atk.learned,
                  "queries_per_sample": atk.queries_per_sample(target.num_train_timesteps),
                  "measured_queries_per_sample": meta["queries"] / len(ids) if atk.access == "model" else None,
                  "seconds": round(time.perf_counter() - start, 2)})     # features from the cache: fit and scoring
        report["attacks"][name] = r
    report.update(protocol.shift_check(mels, is_member, report["attacks"], groups=groups))
    few = {side: len(np.unique(groups[~calib & (is_member if side == "member" else ~is_member)]))
           for side in ("member", "non-member")}
    report["warnings"] += [f"The test half holds only {k} {side} sentence{'s' * (k != 1)}: its CIs and epsilon bounds "
                           f"rest on {k} independent draw{'s' * (k != 1)}." for side, k in few.items() if k < MIN_TEST_SENTENCES]
    (out / "metrics.json").write_text(json.dumps(report, indent=1, default=float))
    write_report(out, report, all_scores)                  # report.md, report.html, roc.png, roc_loglog.png
    return report
