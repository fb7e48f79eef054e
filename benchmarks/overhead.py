"""Overhead of each model-access attack over the bare model forward passes it needs.

For every registered attack with ``access == "model"`` (default parameters): time ``features`` +
``scores`` on N images, count its queries, then time the same number of bare ``target.unet`` forward
passes (same images per pass, same batch size, no attack code around them). The ratio attack / bare is
the attack's overhead (goal: <= 1.2). Learned attacks are timed without their ``fit`` (reported apart
when ``--fit`` is given). Each measurement is repeated ``--repeat`` times and the fastest run is kept
(the machine may be shared).

    python benchmarks/overhead.py [TARGET_FOLDER] [--n 64] [--batch-size 256] [--out overhead.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffmia.attacks import ATTACKS  # noqa: E402
from diffmia.targets import DiffusersTarget  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def bare_forward_seconds(target, x: torch.Tensor, passes: int) -> float:
    """``passes`` forward passes of the UNet over all of ``x`` in batches of ``target.batch_size``."""
    dev = target.device
    x = x.to(dev, target.dtype)
    _sync(dev)
    start = time.perf_counter()
    for p in range(passes):
        t = torch.full((len(x),), (37 * p) % target.num_train_timesteps, dtype=torch.long, device=dev)
        for i in range(0, len(x), target.batch_size):
            target.unet(x[i:i + target.batch_size], t[i:i + target.batch_size]).sample
    _sync(dev)
    return time.perf_counter() - start


def attack_seconds(attack, target, x: torch.Tensor, seeds: np.ndarray):
    target.queries = 0
    target.forward_seconds = 0.0
    _sync(target.device)
    start = time.perf_counter()
    feats = attack.features(target, x, seeds=seeds)
    if not attack.learned:
        attack.scores(feats)
    _sync(target.device)
    return time.perf_counter() - start, target.queries / len(x), target.forward_seconds, feats


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("target", nargs="?", default=str(ROOT / "tests" / "fixtures" / "memorised"))
    ap.add_argument("--n", type=int, default=64, help="images (random, in [-1, 1]; content does not change cost)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--attacks", default="", help="comma-separated names (default: every model-access attack)")
    ap.add_argument("--fit", action="store_true", help="also time fit() of learned attacks (random labels)")
    ap.add_argument("--out", default="", help="JSON file (default: benchmarks/overhead_<target>.json)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    target = DiffusersTarget.from_pretrained(args.target, device=args.device, batch_size=args.batch_size)
    g = torch.Generator().manual_seed(0)
    x = torch.rand((args.n, *target.sample_shape), generator=g) * 2 - 1
    seeds = np.arange(args.n)
    names = [s for s in args.attacks.split(",") if s] or [n for n, c in ATTACKS.items() if c.access == "model"]
    bare_forward_seconds(target, x, 1)                               # warm-up

    rows = []
    print(f"target {args.target}  device {target.device}  threads {torch.get_num_threads()}  "
          f"N {args.n}  batch {target.batch_size}")
    print(f"{'attack':<12}{'queries':>8}{'attack s':>10}{'bare s':>9}{'ratio':>7}{'in eps s':>10}")
    for name in names:
        att = ATTACKS[name]()
        best = None
        for _ in range(args.repeat):
            sec, q, fwd, feats = attack_seconds(att, target, x, seeds)
            passes = int(round(q))
            bare = bare_forward_seconds(target, x, passes)
            cand = (sec, q, fwd, bare)
            best = cand if best is None else (min(best[0], sec), q, min(best[2], fwd), min(best[3], bare))
        sec, q, fwd, bare = best
        row = {"attack": name, "queries_per_sample": q, "declared_queries_per_sample": att.queries_per_sample(target.num_train_timesteps),
               "attack_seconds": sec, "bare_forward_seconds": bare, "ratio": sec / bare,
               "seconds_inside_target_eps": fwd, "images_per_second": args.n / sec}
        if att.learned and args.fit:
            labels = np.arange(args.n) % 2 == 0
            start = time.perf_counter()
            att.fit(feats, labels)
            row["fit_seconds"] = time.perf_counter() - start
        rows.append(row)
        print(f"{name:<12}{q:>8.0f}{sec:>10.2f}{bare:>9.2f}{sec / bare:>7.2f}{fwd:>10.2f}"
              + (f"   fit {row['fit_seconds']:.1f}s" if "fit_seconds" in row else ""))

    out = Path(args.out or ROOT / "benchmarks" / f"overhead_{Path(args.target).name}.json")
    out.write_text(json.dumps({
        "target": str(args.target), "device": str(target.device), "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
        "n_images": args.n, "batch_size": target.batch_size, "repeat": args.repeat, "goal_ratio": 1.2,
        "results": rows}, indent=1))
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    main()
