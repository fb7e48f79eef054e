"""Every registered attack on the reference targets under the calibration/test protocol.

    .venv/bin/python benchmarks/run_benchmark.py [--configs fmnist-ddpm,fmnist-sd/caption,...] [--n-nonmembers N]

Configurations: ``fmnist-ddpm`` (the pixel DDPM) and ``fmnist-sd/<condition>`` (the tiny text-to-image latent
target with the samples' captions, the empty prompt, or the replacement captions). Writes
benchmarks/RESULTS.md and benchmarks/results.json (one row per attack and configuration, keyed also by
``target`` and ``condition``); run folders go to runs/benchmark/<configuration> (not committed; a rerun reuses
their cached features). Long: not part of `make test`.
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
from diffmia.provenance import git_commit  # noqa: E402
from diffmia.run import RunConfig, run_attacks  # noqa: E402
from diffmia.targets import TargetFolder  # noqa: E402

TARGETS = {"fmnist-ddpm": ROOT / "targets" / "fmnist-ddpm", "fmnist-sd": ROOT / "targets" / "fmnist-sd"}
CONFIGS = ("fmnist-ddpm", "fmnist-sd/caption", "fmnist-sd/empty", "fmnist-sd/replacement")
# text-to-image: one generated set per distinct caption, so fewer images per set than the pixel default 1000
SD_PARAMS = {"ganleaks": {"n_generated": 16}, "monte_carlo_set": {"n_generated": 16}}
ROW_KEYS = ("threat_model", "params", "variant", "auc", "auc_ci", "tpr_at_1pct_fpr", "tpr_at_1pct_fpr_ci",
            "tpr_at_0.1pct_fpr", "tpr_at_0.1pct_fpr_ci", "asr_oracle", "n_members", "n_nonmembers",
            "queries_per_sample", "measured_queries_per_sample", "seconds", "query_seconds", "fit_seconds",
            "images_per_second", "overhead_ratio")


def ci(r, key):
    c = r.get(key + "_ci")
    return f"[{fmt(c[0], 2)}, {fmt(c[1], 2)}]" if c and c[0] is not None else ""


def run_config(name: str, a, command: str) -> tuple[list[dict], dict, float]:
    target, _, condition = name.partition("/")
    folder = TARGETS[target]
    latent = TargetFolder(folder).is_latent
    attacks = [n for n, c in ATTACKS.items() if n != "blind" and (latent or not c.needs_text)]
    cfg = RunConfig(target=str(folder), out=str(ROOT / "runs" / "benchmark" / name), attacks=attacks,
                    params=SD_PARAMS if latent else {}, condition=condition or None, n_members=a.n_members,
                    n_nonmembers=a.n_nonmembers, device=a.device, n_boot=a.n_boot)
    t0 = time.time()
    report = run_attacks(cfg, command=command)
    rows = [{"attack": n, "target": target, "condition": condition or None, **{k: r.get(k) for k in ROW_KEYS}}
            for n, r in report["attacks"].items()]
    return rows, report, time.time() - t0


def section(name: str, rows: list[dict], report: dict, wall: float) -> list[str]:
    target = TARGETS[name.partition("/")[0]]
    rec = TargetFolder(target).training_record()
    params = rec["parameters"] if isinstance(rec["parameters"], int) else rec["parameters"]["unet"]
    lines = [f"## {name}", "",
             f"Target: `{target.relative_to(ROOT)}` ({params} UNet parameters, {rec['steps']} steps on "
             f"{rec['n_members']} members, EMA weights; {report.get('space')} space"
             + (f", condition **{report['condition']}**" if report.get("condition") else "") + ")  ",
             f"Evaluation: {report['n_members']} members + {report['n_nonmembers']} non-members, half calibration / "
             f"half test (seed {report['seed']}); numbers on the test half; 95% CIs by bootstrap. Wall time {wall:.0f} s.",
             "",
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
            f"{fmt(r['images_per_second'], 1)} | {fmt(r['overhead_ratio'], 2)} |")
    lines.append("")
    for w in report.get("warnings", []):
        lines.append(f"> **Warning:** {w}\n")
    if "shift" in report:
        lines.append(f"Shift diagnostic: `{report['shift']}`\n")
    for attack, r in report["attacks"].items():
        if "sweep" in r and len(r["sweep"]) <= 40:
            lines += [f"### {name}: {attack}, every variant on all samples (oracle selection)", "",
                      "| variant | AUC | TPR@1%FPR |", "|---|---|---|"]
            lines += [f"| {k} | {fmt(v['auc'])} | {fmt(v['tpr_at_1pct_fpr'])} |" for k, v in r["sweep"].items()]
            lines.append("")
    return lines


def cost_section(path: Path) -> list[str]:
    if not path.exists():
        return []
    c = json.loads(path.read_text())
    m = c["machine"]
    per = ", ".join(f"batch {b}: {s:.2f} s" for b, s in c["seconds_per_query"].items())
    lines = ["## What an audit costs on Stable Diffusion 1.5", "",
             f"`{c['command']}` on {m['device']} ({m['platform']}, {m['torch_threads']} threads, {m['dtype']}): a "
             f"UNet2DConditionModel with SD 1.5's configuration ({c['unet_parameters']:,} parameters, random weights) "
             f"takes {per} per query (64 x 64 latents); the VAE encodes a 512 x 512 image in "
             f"{c['vae_encode_seconds_per_image']:.2f} s. At the best batch size, 1,000 images cost:", "",
             "| attack | queries/sample | hours per 1,000 images |", "|---|---|---|"]
    lines += [f"| {k} | {v['queries_per_sample']} | {v['seconds_per_1000_images'] / 3600:.1f} |"
              for k, v in c["attacks"].items()]
    return lines + [""]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--n-members", type=int, default=None)
    p.add_argument("--n-nonmembers", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--results", default=str(ROOT / "benchmarks"))
    a = p.parse_args(argv)
    command = "python benchmarks/run_benchmark.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "torch_threads": torch.get_num_threads(),
               "device": "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() and a.device != "cpu"
               else "cpu"}
    all_rows, lines = [], []
    for name in a.configs.split(","):
        rows, report, wall = run_config(name, a, command)
        all_rows += rows
        lines += section(name, rows, report, wall)
    out = Path(a.results)
    (out / "results.json").write_text(json.dumps(all_rows, indent=1))
    head = ["# Benchmark: every attack on the reference targets", "",
            f"Command: `{command}`  ", f"Commit: `{git_commit()}`  ",
            f"Machine: {machine['platform']}, {machine['processor']}, {machine['device']}, "
            f"{machine['torch_threads']} torch threads", "",
            "query time / bare forward: the time of the attack's query stage divided by the time of the model "
            "forward passes it made (same batch size), for model-access attacks; fitting an attack model (secmi_nns, "
            "observers, clid, the blind baseline, with 2-fold cross-fitting for honest calibration scores) makes no "
            "queries and is listed after the '+'. API attacks have no noise predictor to compare with (n/r). "
            "GAN-Leaks' time includes generating the set that monte_carlo_set then reuses from the cache (on the "
            "text-to-image target: one set of 16 images per distinct caption).", ""]
    (out / "RESULTS.md").write_text("\n".join(head + lines + cost_section(out / "sd_cost.json")) + "\n")
    print("\n".join(head))


if __name__ == "__main__":
    main()
