"""The training and data commands of the ``diffmia`` command line: train | train-sd | train-references |
train-features | study | audio-corpus."""

from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import MISSING, fields
from pathlib import Path

from .errors import DiffmiaError


def add_config_args(p: argparse.ArgumentParser, config_class) -> None:
    """One option per field of a training configuration dataclass (nested configurations are skipped)."""
    for f in fields(config_class):
        if f.default is MISSING and f.default_factory is not MISSING:
            continue
        default = f.default if f.default is not MISSING else None
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif isinstance(default, tuple):
            p.add_argument(flag, default=",".join(map(str, default)), metavar="A,B,..",
                           help=f"default {','.join(map(str, default))}")
        else:
            typ = type(default) if default is not None else _optional_type(f)
            p.add_argument(flag, type=typ, default=default, help=f"default {default}")


def _optional_type(f) -> type:
    """int for ``int | None``, float for ``float | None``, else str (annotations are strings here)."""
    kinds = {k.strip() for k in str(f.type).split("|")} - {"None"}
    return {"int": int, "float": float}.get(kinds.pop() if len(kinds) == 1 else "", str)


def cmd_train(a) -> int:
    from .train import TrainConfig, train

    d = {f.name: getattr(a, f.name) for f in fields(TrainConfig)}
    try:
        d["channels"] = tuple(int(c) for c in str(d["channels"]).split(","))
    except ValueError:
        raise DiffmiaError(f"--channels must be integers separated by commas, got {d['channels']!r}") from None
    _check_positive(a, "steps", "batch_size", "n_members", "checkpoint_every")
    if a.quality_samples < 0 or a.quality_samples == 1:
        raise DiffmiaError(f"--quality-samples must be 0 (off) or at least 2, got {a.quality_samples}")
    cfg = TrainConfig.from_dict(d)
    out = train(cfg, a.out, progress=not a.quiet, command="diffmia " + shlex.join(a.argv),
                max_steps_this_run=a.max_steps_this_run)
    return _trained(out, lambda r: f"target written to {out}: {r['steps']} steps, {r['parameters']} parameters, "
                                   f"{r['seconds_per_step']} s/step, final loss "
                                   + ("n/a" if r.get("final_loss") is None else f"{r['final_loss']:.4f}")
                                   + _quality_summary(r.get("quality")) + _privacy(r.get("dp")))


def _privacy(dp: dict | None) -> str:
    if not dp:
        return ""
    return (f"; DP-SGD: epsilon {dp['epsilon']:.3f} spent (target {dp['target_epsilon']:g}), delta {dp['delta']:.2g}, "
            f"noise multiplier {dp['noise_multiplier']:.3f}")


def _quality_summary(q: dict | None) -> str:
    if not q or "kid_mean" not in q:
        return "" if not q else f", no sample quality ({q.get('error')})"
    return f", KID {q['kid_mean']:.4f} +- {q['kid_std']:.4f} ({q['n']} samples, {q['steps']} DDIM steps)"


def _check_positive(a, *names) -> None:
    """Refuse a training option below 1 (a checkpoint interval of 0 would divide by zero)."""
    for n in names + ("max_steps_this_run",):
        v = getattr(a, n, None)
        if v is not None and v < 1:
            raise DiffmiaError(f"--{n.replace('_', '-')} must be at least 1, got {v}")


def _trained(out, summary) -> int:
    """Print what a training command left: the finished target's summary, or how to continue."""
    from .targets import TargetFolder

    folder = TargetFolder(out)
    print(summary(folder.training_record()) if folder.training_json.exists()
          else f"checkpoint saved in {out}; run the same command again to continue")
    return 0


def cmd_train_sd(a) -> int:
    from .train_sd import TrainSDConfig, train_sd

    d = {f.name: getattr(a, f.name) for f in fields(TrainSDConfig) if hasattr(a, f.name)}
    _check_positive(a, "steps", "vae_steps", "batch_size", "n_members", "checkpoint_every")
    out = train_sd(TrainSDConfig(**d), a.out, progress=not a.quiet, command="diffmia " + shlex.join(a.argv),
                   max_steps_this_run=a.max_steps_this_run)
    return _trained(out, lambda r: f"SD target written to {out}: {r['steps']} UNet steps ({r['parameters']['unet']} "
                                   f"parameters), {r['vae_steps']} VAE steps, {r['wall_seconds']} s")


def cmd_train_references(a) -> int:
    from .references import finished_references, train_references

    _check_positive(a)
    out = train_references(a.target, a.k, a.out, device=a.device, threads=a.threads, progress=not a.quiet,
                           max_steps_this_run=a.max_steps_this_run)
    done = [p.name for p in finished_references(out)] if any(out.glob("ref-*/training.json")) else []
    print(f"{len(done)} of {a.k} reference models finished in {out}"
          + ("" if len(done) == a.k else "; run the same command again to continue"))
    return 0


def cmd_study(a) -> int:
    from .study import run_study

    result = run_study(a.file, out=a.out, only=[s for s in (a.only or "").split(",") if s] or None,
                       progress=not a.quiet, jobs=a.jobs)
    print(f"{len(result['rows'])} defences: {Path(result['out']) / 'STUDY.md'}, study.png, study.json")
    return 0


def add_train_features(sub) -> None:
    """``diffmia train-features``: the feature network of the sample-quality measure (diffmia/quality.py)."""
    from .quality import FEATURES_FILE

    p = sub.add_parser("train-features", help="train the Fashion-MNIST feature network of the sample-quality KID")
    p.add_argument("--out", default=str(FEATURES_FILE), help="weights file (.safetensors; its record beside it)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=None, help="Fashion-MNIST IDX folder")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_train_features)


def cmd_train_features(a) -> int:
    from .quality_train import train_feature_net

    _check_positive(a, "epochs")
    r = train_feature_net(a.out, epochs=a.epochs, seed=a.seed, data_root=a.data_root, threads=a.threads,
                          command="diffmia " + shlex.join(a.argv), progress=not a.quiet)
    print(f"feature network written to {a.out}: test accuracy {r['test_accuracy']:.4f}, {r['parameters']} "
          f"parameters, {r['bytes']} bytes, {r['seconds']} s, sha256 {r['sha256'][:12]}...")
    return 0


def add_audio_corpus(sub) -> None:
    """``diffmia audio-corpus``: speech synthesised offline with espeak-ng (diffmia/data/audio_corpus.py)."""
    from .data.audio_corpus import DEFAULT_SPEEDS, DEFAULT_VOICES

    p = sub.add_parser("audio-corpus", help="synthesise the espeak-ng speech corpus (waveform + log-mel, split)")
    p.add_argument("--out", required=True, help="folder for corpus.npz, corpus.json and split.json")
    p.add_argument("--voices", default=",".join(DEFAULT_VOICES), metavar="V,V,..",
                   help=f"espeak-ng voices (see espeak-ng --voices=en); default {','.join(DEFAULT_VOICES)}")
    p.add_argument("--speeds", default=",".join(map(str, DEFAULT_SPEEDS)), metavar="WPM,..",
                   help=f"words per minute; default {','.join(map(str, DEFAULT_SPEEDS))}")
    p.add_argument("--sentences", type=int, default=None, help="use the first N committed sentences (default all)")
    p.add_argument("--n-members", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_audio_corpus)


def cmd_audio_corpus(a) -> int:
    import time

    from .data.audio_corpus import build_corpus

    voices = [v for v in a.voices.split(",") if v]
    try:
        speeds = [int(s) for s in a.speeds.split(",") if s]
    except ValueError:
        raise DiffmiaError(f"--speeds must be integers separated by commas, got {a.speeds!r}") from None
    t0 = time.perf_counter()
    out = build_corpus(a.out, sentences=a.sentences, voices=voices, speeds=speeds, n_members=a.n_members,
                       seed=a.seed, progress=not a.quiet)
    n = len(json.loads((out / "split.json").read_text())["members"])
    total = json.loads((out / "corpus.json").read_text())["n_items"]
    print(f"audio corpus written to {out} (corpus.npz, corpus.json, split.json): {total} items, {n} members, "
          f"{time.perf_counter() - t0:.1f} s")
    return 0
