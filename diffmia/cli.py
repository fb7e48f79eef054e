"""``diffmia`` command line: train | train-sd | train-references | train-features | study | audio-corpus |
train-audio | attack-audio | attack | report | list | split | convert | demo.

A user mistake (missing file, unknown attack, bad option) prints one line ``diffmia: error: ...`` and
exits with status 2; nothing already computed is lost (features are cached per chunk in the run folder).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from .cli_audio import add_audio_commands
from .cli_train import (add_audio_corpus, add_config_args, add_train_features, cmd_study, cmd_train,
                        cmd_train_references, cmd_train_sd)
from .errors import DiffmiaError

DEMO_TARGET = Path(__file__).resolve().parent.parent / "targets" / "fmnist-ddpm"
DEMO_SD_TARGET = Path(__file__).resolve().parent.parent / "targets" / "fmnist-sd"


def _parse_value(s: str):
    """'100' -> 100, '0.5' -> 0.5, '100,200' -> [100, 200], 'none' -> None, 'true' -> True."""
    if "," in s:
        return [_parse_value(x) for x in s.split(",") if x != ""]
    low = s.lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for typ in (int, float):
        try:
            return typ(s)
        except ValueError:
            pass
    return s


def parse_params(items: list[str]) -> dict[str, dict]:
    """``--param pia.t=100,200`` -> {"pia": {"t": [100, 200]}}."""
    out: dict[str, dict] = {}
    for item in items or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise DiffmiaError(f"--param {item!r}: expected ATTACK.NAME=VALUE, e.g. pia.t=100,200")
        key, value = item.split("=", 1)
        attack, name = key.split(".", 1)
        v = _parse_value(value)
        out.setdefault(attack, {})[name] = tuple(v) if isinstance(v, list) else v
    return out


def cmd_attack(a) -> int:
    from .report import console_table
    from .run import RunConfig, run_attacks

    missing = [f for f in ("target", "out") if not getattr(a, f)]
    if missing:
        raise DiffmiaError(f"{', '.join('--' + f for f in missing)} required (a flag, or a key of --config)")
    cfg = RunConfig(target=a.target, out=a.out, attacks=[s for s in a.attacks.split(",") if s],
                    params=parse_params(a.param), data=a.data, data_root=a.data_root, split=a.split,
                    n_members=a.n_members, n_nonmembers=a.n_nonmembers, weights=a.weights,
                    condition=a.condition, captions=a.captions, replacement_captions=a.replacement_captions,
                    guidance_scale=a.guidance_scale, convert=a.convert, device=a.device,
                    batch_size=a.batch_size, chunk_size=a.chunk_size, workers=a.workers,
                    calibration_fraction=a.calibration_fraction, seed=a.seed, n_boot=a.n_boot,
                    blind=not a.no_blind, progress=not a.quiet, config_file=a.config)
    report = run_attacks(cfg, command="diffmia " + shlex.join(a.argv))
    if report is None:                 # a torchrun rank other than 0: rank 0 reports
        return 0
    print(console_table(report))
    for w in report.get("warnings", []):
        print("WARNING:", w)
    print(f"\nrun folder: {a.out} (metrics.json, report.md, report.html, scores/)")
    return 0


def cmd_report(a) -> int:
    from .report import console_table
    from .run import rerun_report

    print(console_table(rerun_report(a.run, n_boot=a.n_boot)))
    return 0


def cmd_list(a) -> int:
    from .attacks import ATTACKS

    for name, cls in ATTACKS.items():
        params = cls().get_params()
        print(f"{name:18s} {cls.threat_model:10s} {cls.paper}")
        print(" " * 19 + ", ".join(f"{k}={v}" for k, v in params.items()))
    return 0


def cmd_split(a) -> int:
    from .data import MembershipSplit, load_dataset

    fmt = a.format or ("secmi" if a.out.endswith(".npz") else "json")
    if (fmt == "secmi") != a.out.endswith(".npz"):
        raise DiffmiaError(f"--format {fmt} writes {'an .npz' if fmt == 'secmi' else 'a .json'} file; "
                           f"--out {a.out!r} has another suffix")
    data = load_dataset(a.data, a.data_root)
    if a.extend:
        from .references import extend_split

        if a.n_nonmembers is None:
            raise DiffmiaError("--extend needs --n-nonmembers (the new total)")
        split = extend_split(MembershipSplit.load(a.extend), data, a.n_nonmembers, seed=a.seed)
    elif a.n_members is None:
        raise DiffmiaError("--n-members is required (or --extend SPLIT to add non-members to a split)")
    else:
        split = MembershipSplit.random(data, a.n_members, a.n_nonmembers, seed=a.seed)
    split.save(a.out)
    print(f"{a.out}: {len(split.members)} members, {len(split.nonmembers)} non-members of {data.name}"
          + (" (SecMI/PIA format: mia_train_idxs, mia_eval_idxs)" if fmt == "secmi" else ""))
    return 0


def cmd_convert(a) -> int:
    from .targets.pytorch_ddpm import convert

    folder = convert(a.checkpoint, a.out, weights=a.weights, image_size=a.image_size, split=a.split)
    rec = json.loads(folder.conversion_json.read_text())
    print(f"target written to {folder.path}: {', '.join(f'{folder.unet_dir(w).name}/ <- {k}' for w, k in rec['weights'].items())}"
          f" (source sha256 {rec['source_sha256'][:12]}...)")
    return 0


def cmd_demo(a) -> int:
    from .demo import run_demo

    run_demo(a.out, target=a.target, quick=a.quick, sd_target=None if a.no_sd else a.sd_target)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .train import TrainConfig
    from .train_sd import TrainSDConfig

    p = argparse.ArgumentParser(prog="diffmia", description="Membership-inference audits of diffusion models.")
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train a DDPM target on the members of a split")
    t.add_argument("--out", required=True, help="output folder (a target); rerun to resume")
    t.add_argument("--max-steps-this-run", type=int, default=None, help="stop after this many steps (resume later)")
    t.add_argument("--quiet", action="store_true")
    add_config_args(t, TrainConfig)
    t.set_defaults(fn=cmd_train)

    ts = sub.add_parser("train-sd", help="train the tiny text-to-image latent (Stable Diffusion-style) target")
    ts.add_argument("--out", required=True, help="output folder (a StableDiffusionPipeline folder); rerun to resume")
    ts.add_argument("--max-steps-this-run", type=int, default=None, help="stop after this many steps (resume later)")
    ts.add_argument("--quiet", action="store_true")
    add_config_args(ts, TrainSDConfig)
    ts.set_defaults(fn=cmd_train_sd)

    tr = sub.add_parser("train-references", help="train reference models (the target's recipe, none of its "
                        "candidates) for the refcal attack")
    tr.add_argument("--target", required=True, help="the target folder (its training.json gives the recipe)")
    tr.add_argument("--k", type=int, default=4, help="number of reference models (default 4)")
    tr.add_argument("--out", required=True, help="output folder (ref-0, ref-1, ...); rerun to resume")
    tr.add_argument("--device", default="auto")
    tr.add_argument("--threads", type=int, default=None)
    tr.add_argument("--max-steps-this-run", type=int, default=None, help="stop after this many steps (resume later)")
    tr.add_argument("--quiet", action="store_true")
    tr.set_defaults(fn=cmd_train_references)
    add_train_features(sub)
    add_audio_commands(sub)
    add_audio_corpus(sub)

    st = sub.add_parser("study", help="train a grid of defended targets (one TOML file) and attack each")
    st.add_argument("file", help="the study file (see benchmarks/study_small.toml)")
    st.add_argument("--out", default=None, help="output folder (default: the file's out); rerun to resume")
    st.add_argument("--only", default=None, help="comma-separated defences to run (default: all)")
    st.add_argument("--jobs", type=int, default=None, help="targets trained at once (default: the file's jobs, 1)")
    st.add_argument("--quiet", action="store_true")
    st.set_defaults(fn=cmd_study)

    at = sub.add_parser("attack", help="score a split's samples with attacks and evaluate them")
    at.add_argument("--config", default=None, metavar="FILE.toml",
                    help="a TOML file whose keys are these flags (flags given here override it)")
    at.add_argument("--target", default=None, help="target folder (unet/, scheduler/, split.json); required")
    at.add_argument("--attacks", default="loss", help="comma-separated attack names (see 'diffmia list')")
    at.add_argument("--param", action="append", default=[], metavar="ATTACK.NAME=VALUE",
                    help="attack parameter, e.g. pia.t=100,200 (repeatable)")
    at.add_argument("--out", default=None, help="run folder (rerun to resume); required")
    at.add_argument("--data", default="fashion-mnist",
                    help="fashion-mnist[:test], cifar10, cifar100, stl10[:unlabeled], an image folder or an .npz")
    at.add_argument("--data-root", default=None,
                    help="Fashion-MNIST IDX folder, or the CIFAR/STL-10 binary archive (.tar.gz) or its folder")
    at.add_argument("--split", default=None, help="split file (.json or SecMI .npz); default <target>/split.json")
    at.add_argument("--n-members", type=int, default=None, help="use the first N members of the split")
    at.add_argument("--n-nonmembers", type=int, default=None, help="use the first N non-members of the split")
    at.add_argument("--weights", choices=("ema", "raw"), default="ema")
    at.add_argument("--condition", choices=("caption", "empty", "replacement"), default=None,
                    help="text-conditioned targets: each sample's own caption (default), the empty prompt, or "
                         "captions written by another captioner")
    at.add_argument("--captions", default=None, help="captions file (id,caption CSV or JSON); "
                    "default <target>/captions.csv or the image folder's captions")
    at.add_argument("--replacement-captions", default=None,
                    help="captions of --condition replacement; default <target>/replacement_captions.csv")
    at.add_argument("--guidance-scale", type=float, default=1.0,
                    help="classifier-free guidance of text-conditioned targets (1: conditional only; "
                         "other values cost two queries)")
    at.add_argument("--convert", choices=("grey", "rgb"), default=None,
                    help="convert the images to the target's channels: grey (RGB -> luminance) or rgb (grey "
                         "repeated); without it, images whose channels differ from the target's are refused")
    at.add_argument("--device", default="auto", help="cpu, cuda or auto")
    at.add_argument("--batch-size", type=int, default=256)
    at.add_argument("--chunk-size", type=int, default=256, help="samples per cached chunk")
    at.add_argument("--workers", type=int, default=1, help="scoring processes")
    at.add_argument("--calibration-fraction", type=float, default=0.5)
    at.add_argument("--seed", type=int, default=0)
    at.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for CIs")
    at.add_argument("--no-blind", action="store_true", help="do not add the blind baseline")
    at.add_argument("--quiet", action="store_true")
    at.set_defaults(fn=cmd_attack)

    r = sub.add_parser("report", help="recompute metrics and report of a run folder from its saved scores")
    r.add_argument("run")
    r.add_argument("--n-boot", type=int, default=1000)
    r.set_defaults(fn=cmd_report)

    ls = sub.add_parser("list", help="list attacks and their parameters")
    ls.set_defaults(fn=cmd_list)

    sp = sub.add_parser("split", help="draw a seeded membership split of a data set")
    sp.add_argument("--data", default="fashion-mnist")
    sp.add_argument("--data-root", default=None)
    sp.add_argument("--n-members", type=int, default=None)
    sp.add_argument("--extend", default=None, metavar="SPLIT",
                    help="keep this split's members and non-members and draw more non-members from the unused "
                         "images, up to --n-nonmembers in all")
    sp.add_argument("--n-nonmembers", type=int, default=None)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", required=True, help="split file (.json, or .npz for the SecMI/PIA format)")
    sp.add_argument("--format", choices=("json", "secmi"), default=None,
                    help="json (ids + SHA-256 of every image) or secmi (.npz: mia_train_idxs, mia_eval_idxs); "
                         "default from the suffix of --out")
    sp.set_defaults(fn=cmd_split)

    cv = sub.add_parser("convert", help="turn a released checkpoint into a target folder")
    cv.add_argument("format", choices=("pytorch-ddpm",), help="checkpoint format (SecMI's and PIA's DDPMs)")
    cv.add_argument("checkpoint", help="the checkpoint file (read with torch.load(weights_only=True))")
    cv.add_argument("--out", required=True, help="target folder to write")
    cv.add_argument("--weights", choices=("ema", "raw"), default="ema",
                    help="ema: unet/ <- ema_model and unet_raw/ <- net_model; raw: unet/ <- net_model")
    cv.add_argument("--image-size", type=int, default=32, help="the model's input size (default 32)")
    cv.add_argument("--split", default=None, help="a split file (SecMI/PIA .npz or .json) to store as split.json")
    cv.set_defaults(fn=cmd_convert)

    d = sub.add_parser("demo", help="the main job: every attack on the shipped reference target")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--target", default=str(DEMO_TARGET))
    d.add_argument("--sd-target", default=str(DEMO_SD_TARGET), help="the text-to-image target (runs/demo/sd)")
    d.add_argument("--no-sd", action="store_true", help="skip the text-to-image target")
    d.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    d.set_defaults(fn=cmd_demo)
    p.attack_parser = at
    return p


def main(argv=None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    a = parser.parse_args(argv)
    a.argv = argv                          # the command as given, recorded in run.json / training.json
    try:
        if getattr(a, "config", None):     # the file's keys become defaults; flags given here override them
            from .config import read_config_file

            parser.attack_parser.set_defaults(**read_config_file(a.config, parser.attack_parser))
            a = parser.parse_args(argv)
            a.argv = argv
        return a.fn(a)
    except DiffmiaError as e:
        print(f"diffmia: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:                  # an output folder that is a file, unwritable, read-only or full
        where = f"{e.filename}: " if e.filename else ""
        print(f"diffmia: error: {where}{e.strerror or e}; finished chunks and checkpoints are kept", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("diffmia: interrupted; finished chunks and checkpoints are kept, rerun to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
