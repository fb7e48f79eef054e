"""Every registered attack on the reference target under the calibration/test protocol.

    .venv/bin/python benchmarks/run_benchmark.py [--target targets/fmnist-ddpm] [--n-nonmembers 2048]

Writes benchmarks/RESULTS.md and benchmarks/results.json (the run folder itself goes to runs/benchmark,
which is not committed). Long: not part of `make test`.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from diffmia.attacks import ATTACKS  # noqa: E402
from diffmia.metrics import fmt  # noqa: E402
from diffmia.run import RunConfig, run_attacks  # noqa: E402
from diffmia.provenance import git_commit  # noqa: E402
from diffmia.targets import TargetFolder  # noqa: E402


def ci(r, key):
    c = r.get(key + "_ci")
    return f"[{fmt(c[0], 2)}, {fmt(c[1], 2)}]" if c and c[0] is not None else ""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default=str(ROOT / "targets" / "fmnist-ddpm"))
    p.add_argument("--out", default=str(ROOT / "runs" / "benchmark"))
    p.add_argument("--attacks", default=",".join(a for a, c in ATTACKS.items() if a != "blind" and not c.needs_text))
    p.add_argument("--n-members", type=int, default=None)
    p.add_argument("--n-nonmembers", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--results", default=str(ROOT / "benchmarks"))
    a = p.parse_args(argv)
    command = "python benchmarks/run_benchmark.py " + shlex.join(sys.argv[1:] if argv is None else argv)

    cfg = RunConfig(target=a.target, out=a.out, attacks=a.attacks.split(","), n_members=a.n_members,
                    n_nonmembers=a.n_nonmembers, device=a.device, n_boot=a.n_boot)
    t0 = time.time()
    report = run_attacks(cfg, command=command)
    wall = time.time() - t0

    rows = []
    for name, r in report["attacks"].items():
        rows.append({"attack": name, "threat_model": r["threat_model"], "params": r["params"], "variant": r["variant"],
                     "auc": r["auc"], "auc_ci": r.get("auc_ci"),
                     "tpr_at_1pct_fpr": r["tpr_at_1pct_fpr"], "tpr_at_1pct_fpr_ci": r.get("tpr_at_1pct_fpr_ci"),
                     "tpr_at_0.1pct_fpr": r["tpr_at_0.1pct_fpr"],
                     "tpr_at_0.1pct_fpr_ci": r.get("tpr_at_0.1pct_fpr_ci"),
                     "asr_oracle": r["asr_oracle"], "n_members": r["n_members"], "n_nonmembers": r["n_nonmembers"],
                     "queries_per_sample": r["queries_per_sample"],
                     "measured_queries_per_sample": r.get("measured_queries_per_sample"),
                     "seconds": r["seconds"], "query_seconds": r["query_seconds"],
                     "fit_seconds": r["fit_seconds"], "images_per_second": r["images_per_second"],
                     "overhead_ratio": r.get("overhead_ratio")})
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "torch_threads": torch.get_num_threads(),
               "device": "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() and a.device != "cpu"
               else "cpu"}
    training = TargetFolder(a.target).training_record()
    out = Path(a.results)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    lines = [
        "# Benchmark: every attack on the reference target", "",
        f"Command: `{command}`  ", f"Commit: `{git_commit()}`  ",
        f"Machine: {machine['platform']}, {machine['processor']}, {machine['device']}, "
        f"{machine['torch_threads']} torch threads  ",
        f"Target: `{Path(a.target).relative_to(ROOT) if Path(a.target).is_relative_to(ROOT) else a.target}` "
        f"({training['parameters']} parameters, {training['steps']} steps on {training['n_members']} members, "
        f"EMA weights)  ",
        f"Evaluation: {report['n_members']} members + {report['n_nonmembers']} non-members, half calibration / "
        f"half test (seed {report['seed']}); numbers on the test half; 95% CIs by bootstrap "
        f"({a.n_boot} resamples). Total wall time {wall:.0f} s.", "",
        "| attack | access | variant (chosen on calibration) | AUC [95% CI] | TPR@1%FPR [95% CI] | "
        "TPR@0.1%FPR [95% CI] | ASR (oracle) | test members / non-members | queries/sample | seconds (queries + fit) "
        "| img/s | query time / bare forward |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['attack']} | {r['threat_model']} | {r['variant']} | {fmt(r['auc'])} {ci(r, 'auc')} | "
            f"{fmt(r['tpr_at_1pct_fpr'])} {ci(r, 'tpr_at_1pct_fpr')} | {fmt(r['tpr_at_0.1pct_fpr'])} "
            f"{ci(r, 'tpr_at_0.1pct_fpr')} | {fmt(r['asr_oracle'])} | {r['n_members']} / {r['n_nonmembers']} | "
            f"{r['queries_per_sample']} | {fmt(r['seconds'], 1)} ({fmt(r['query_seconds'], 1)} + {fmt(r['fit_seconds'], 1)}) | "
            f"{fmt(r['images_per_second'], 1)} | "
            f"{fmt(r['overhead_ratio'], 2)} |")
    lines += ["", "query time / bare forward: the time of the attack's query stage divided by the time of the model "
              "forward passes it made (same batch size), for model-access attacks; fitting an attack model (secmi_nns, "
              "with 2-fold cross-fitting for honest calibration scores) makes no queries and is listed after the '+'. "
              "API attacks have no noise predictor to compare with (n/r). GAN-Leaks' time includes generating the "
              "1000-image set that monte_carlo_set then reuses from the cache.", ""]
    for w in report.get("warnings", []):
        lines.append(f"> **Warning:** {w}\n")
    if "shift" in report:
        lines.append(f"Shift diagnostic: `{report['shift']}`\n")
    for name, r in report["attacks"].items():
        if "sweep" in r and len(r["sweep"]) <= 40:
            lines += [f"### {name}: every variant on all samples (oracle selection)", "",
                      "| variant | AUC | TPR@1%FPR |", "|---|---|---|"]
            lines += [f"| {k} | {fmt(v['auc'])} | {fmt(v['tpr_at_1pct_fpr'])} |" for k, v in r["sweep"].items()]
            lines.append("")
    (out / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:12 + len(rows)]))


if __name__ == "__main__":
    main()
