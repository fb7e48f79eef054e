"""Wall time of one `diffmia attack` run at 1, 2, ... ranks (torchrun), each rank with cores/N threads, and
whether the scores agree. Writes benchmarks/results/scale-<label>.json and .md.

    python benchmarks/scale.py --ranks 1,2 --label cpu-2core              # this machine, CPU
    python benchmarks/scale.py --ranks 1 --device cuda --label h100       # one GPU
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from diffmia.scores import Scores  # noqa: E402




def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default=str(ROOT / "targets" / "fmnist-ddpm"))
    ap.add_argument("--attacks", default="pia,secmi,loss")
    ap.add_argument("--split", default=None, help="default: the target's split.json")
    ap.add_argument("--n-members", type=int, default=256)
    ap.add_argument("--n-nonmembers", type=int, default=768)
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--cores", type=int, default=os.cpu_count())
    ap.add_argument("--label", default="cpu")
    ap.add_argument("--out", default=str(ROOT / "runs" / "scale"))
    a = ap.parse_args()
    rows, scores = [], {}
    for n in [int(r) for r in a.ranks.split(",")]:
        out = Path(a.out) / f"{a.label}-ranks{n}"
        shutil.rmtree(out, ignore_errors=True)
        args = ["attack", "--target", a.target, "--attacks", a.attacks, "--n-members", str(a.n_members),
                "--n-nonmembers", str(a.n_nonmembers), "--device", a.device, "--chunk-size", str(a.chunk_size),
                "--batch-size", str(a.batch_size), *(["--split", a.split] if a.split else []), "--no-blind", "--quiet", "--n-boot", "100", "--out", str(out)]
        launch = ([sys.executable, "-m", "diffmia"] if n == 1 else
                  [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
                   "-m", "diffmia"])
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, a.cores // n)), "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        t0 = time.perf_counter()
        timer = ["/usr/bin/time", "-f", "%M"] if Path("/usr/bin/time").exists() else []   # peak RSS, KB
        p = subprocess.run([*timer, *launch, *args], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            raise SystemExit(p.stderr[-3000:])
        info = json.loads((out / "run.json").read_text())
        m = json.loads((out / "metrics.json").read_text())
        ranks = sorted({r for c in info["chunks"].values() for r in c.values()})
        sc = {k: Scores.load(out / "scores" / f"{k}.npz").primary for k in a.attacks.split(",")}
        scores[n] = sc
        rows.append({"ranks": n, "threads_per_rank": max(1, a.cores // n), "wall_seconds": round(wall, 1),
                     "ranks_that_computed_chunks": ranks, "queries": m["queries"],
                     "max_rss_mb_of_largest_process": (round(int(p.stderr.strip().splitlines()[-1]) / 1024, 1)
                                                       if timer else None),
                     "auc": {k: round(m["attacks"][k]["auc"], 4) for k in sc}})
        print(rows[-1], flush=True)
    base = scores[min(scores)]
    for r in rows:
        r["max_abs_score_difference_vs_fewest_ranks"] = float(max(np.max(np.abs(scores[r["ranks"]][k] - base[k]))
                                                                  for k in base))
    res = {"label": a.label, "target": a.target, "attacks": a.attacks, "device": a.device,
           "samples": a.n_members + a.n_nonmembers, "chunk_size": a.chunk_size, "cores": a.cores, "rows": rows}
    dest = ROOT / "benchmarks" / "results"
    (dest / f"scale-{a.label}.json").write_text(json.dumps(res, indent=1))
    md = [f"# Ranks: {a.attacks} on {res['samples']} samples, {a.device}, {a.cores} cores ({a.label})", "",
          "| ranks | threads/rank | wall s | ranks that computed chunks | model calls | peak RSS of largest process, MB | max score diff |",
          "|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['ranks']} | {r['threads_per_rank']} | {r['wall_seconds']} | {r['ranks_that_computed_chunks']} | "
                  f"{r['queries']['model_calls']} | {r['max_rss_mb_of_largest_process']} | "
                  f"{r['max_abs_score_difference_vs_fewest_ranks']:.2g} |")
    (dest / f"scale-{a.label}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
