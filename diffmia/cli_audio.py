"""The audio commands of the ``diffmia`` command line: train-audio | attack-audio (audio-corpus builds the corpus)."""

from __future__ import annotations

import shlex

from .errors import DiffmiaError


def add_audio_commands(sub) -> None:
    from .audio_attack import AUDIO_ATTACKS
    from .train_audio import MODALITIES

    t = sub.add_parser("train-audio", help="train a continuous-time (VP-SDE) audio target, mel-spectrogram or "
                                           "waveform, on the members of an audio corpus (rerun to resume)")
    t.add_argument("--corpus", required=True, help="folder written by diffmia audio-corpus")
    t.add_argument("--modality", required=True, choices=MODALITIES)
    t.add_argument("--out", required=True, help="target folder")
    t.add_argument("--epochs", type=int, default=2000, help="passes over the members (default 2000)")
    t.add_argument("--scale", type=float, default=1.0, help="multiply every sample by this (default 1; e.g. 4 gives "
                                                            "the waveforms the mel-spectrograms' std)")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--warmup-steps", type=int, default=50)
    t.add_argument("--ema-decay", type=float, default=0.995)
    t.add_argument("--checkpoint-every", type=int, default=200)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--device", default="cpu")
    t.add_argument("--max-steps-this-run", type=int, default=None)
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(fn=cmd_train_audio)

    a = sub.add_parser("attack-audio", help="attack an audio target on its corpus' members and non-members")
    a.add_argument("--target", required=True)
    a.add_argument("--corpus", required=True)
    a.add_argument("--out", required=True, help="run folder (rerun: cached features are reused)")
    a.add_argument("--attacks", default=",".join(AUDIO_ATTACKS), help=f"default {','.join(AUDIO_ATTACKS)}")
    a.add_argument("--param", action="append", default=[], metavar="ATTACK.NAME=VALUE",
                   help="attack parameter, e.g. pia.t=0.01,0.05,0.2 (timesteps as fractions of T); repeatable")
    a.add_argument("--n-nonmembers", type=int, default=None, help="default: every non-member of the split")
    a.add_argument("--calibration-fraction", type=float, default=0.5)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--n-boot", type=int, default=1000)
    a.add_argument("--weights", choices=("ema", "raw"), default="ema")
    a.add_argument("--no-blind", action="store_true", help="do not add the blind baseline (which never queries "
                   "the target; the MMD shift test still runs)")
    a.add_argument("--batch-size", type=int, default=256)
    a.add_argument("--device", default="cpu")
    a.add_argument("--threads", type=int, default=None)
    a.set_defaults(fn=cmd_attack_audio)


def _positive(a, *names) -> None:
    for n in names:
        v = getattr(a, n)
        if v is not None and v < 1:
            raise DiffmiaError(f"--{n.replace('_', '-')} must be at least 1, got {v}")


def cmd_train_audio(a) -> int:
    from .train_audio import train_audio

    _positive(a, "epochs", "batch_size", "checkpoint_every", "max_steps_this_run", "threads")
    r = train_audio(a.corpus, a.modality, a.out, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr,
                    warmup_steps=a.warmup_steps, ema_decay=a.ema_decay, checkpoint_every=a.checkpoint_every,
                    seed=a.seed, threads=a.threads, device=a.device, max_steps_this_run=a.max_steps_this_run,
                    progress=not a.quiet, command="diffmia " + shlex.join(a.argv), scale=a.scale)
    if r["complete"]:
        print(f"{a.modality} target written to {a.out}: {r['steps']} steps, {r['parameters']} parameters")
    else:
        print(f"checkpoint saved in {a.out} at step {r['steps']}; run the same command again to continue")
    return 0


def cmd_attack_audio(a) -> int:
    import torch

    from .audio_attack import attack_audio
    from .cli import parse_params
    from .metrics import fmt

    _positive(a, "n_boot", "batch_size", "threads")
    if not 0 < a.calibration_fraction < 1:
        raise DiffmiaError("--calibration-fraction must be a number strictly between 0 and 1")
    if a.threads:
        torch.set_num_threads(a.threads)
    attacks = [s.strip() for s in a.attacks.split(",") if s.strip()]
    if not attacks:
        raise DiffmiaError("--attacks must be a non-empty comma-separated list of attack names")
    r = attack_audio(a.target, a.corpus, a.out, attacks=attacks, params=parse_params(a.param), n_nonmembers=a.n_nonmembers,
                     calibration_fraction=a.calibration_fraction, seed=a.seed, n_boot=a.n_boot,
                     weights=a.weights, batch_size=a.batch_size, device=a.device, blind=not a.no_blind)
    print(f"{r['modality']} target {a.target}: {r['n_members']} members, {r['n_nonmembers']} non-members "
          f"(half of each for calibration)")
    for name, m in r["attacks"].items():
        lo, hi = m["auc_ci"]
        print(f"  {name:6s} AUC {fmt(m['auc'])} [{fmt(lo, 2)}, {fmt(hi, 2)}]  TPR@1%FPR {fmt(m['tpr_at_1pct_fpr'])}  "
              f"({m['variant']})")
    sh = r["shift"]
    print(f"  shift test (log-mels, members vs non-members): MMD^2 {sh['mmd2']:.2e}, permutation p = {sh['p_value']:.3f}")
    for w in r["warnings"]:
        print(f"WARNING: {w}")
    print(f"results in {a.out}/report.html, report.md, metrics.json")
    return 0
