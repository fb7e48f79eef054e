"""Every registered attack on the reference targets under the calibration/test protocol.

    .venv/bin/python benchmarks/run_benchmark.py [--configs fmnist-ddpm-16k,fmnist-sd/caption,...] [--n-nonmembers N]

Configurations (``CONFIGS``): ``fmnist-ddpm-16k`` (the pixel DDPM on its extended split: 256 members and 16,384
non-members, every source-paper attack with a sweep chosen on the calibration half, and the attacks beyond the
papers; refcal needs the reference models of ``diffmia train-references --target targets/fmnist-ddpm --k 4
--out runs/references/fmnist-ddpm``), ``fmnist-ddpm`` (the original 2,048-non-member split, paper defaults) and
``fmnist-sd/<condition>`` (the tiny text-to-image latent target with the samples' captions, the empty prompt,
or the replacement captions). Each configuration writes its own section (benchmarks/results/<name>.md and
.json); benchmarks/RESULTS.md and benchmarks/results.json are assembled from all sections, so rerunning one
configuration keeps the others. Run folders go to runs/benchmark/<configuration> (not committed; a rerun
reuses their cached features). Long: not part of `make test`.
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
NEW_ATTACKS = ("sima", "noise_aggregation", "fusion", "refcal")     # beyond the papers
# text-to-image: one generated set per distinct caption, so fewer images per set than the pixel default 1000
SD_PARAMS = {"ganleaks": {"n_generated": 16}, "monte_carlo_set": {"n_generated": 16}}
REFERENCES = ROOT / "runs" / "references" / "fmnist-ddpm"
# The extended split: each source-paper attack sweeps its own t (chosen on the calibration half, so the
# baseline is the best the papers' attacks do honestly); fusion shares these features (3 components, 15
# queries in all); refcal calibrates SimA at three t's against the reference models.
SWEEP_PARAMS = {
    "loss": {"timesteps": (20, 50, 100, 200)},
    "pia": {"t": (200, 20, 50, 100)},
    "pian": {"t": (200, 50, 100)},
    "secmi": {"t_secs": (50, 100)},
    "forensics": {"grid_stride": 100},
    "fusion": {"components": ("sima", "pia", "loss")},
    "refcal": {"references": str(REFERENCES), "base": "sima", "component_params": {"sima": {"t": (20, 40, 60)}}},
}
CONFIGS = {
    "fmnist-ddpm-16k": {"target": "fmnist-ddpm", "split": TARGETS["fmnist-ddpm"] / "split_16k.json",
                        "params": SWEEP_PARAMS, "skip": ("secmi_nns",),
                        "note": "secmi_nns is left out here: its ResNet would train on 8,320 calibration rows "
                                "(about an hour on 2 cores with cross-fitting); see the fmnist-ddpm section."},
    "fmnist-ddpm": {"target": "fmnist-ddpm", "skip": NEW_ATTACKS},
    "fmnist-sd/caption": {"target": "fmnist-sd", "condition": "caption", "params": SD_PARAMS, "skip": NEW_ATTACKS},
    "fmnist-sd/empty": {"target": "fmnist-sd", "condition": "empty", "params": SD_PARAMS, "skip": NEW_ATTACKS},
    "fmnist-sd/replacement": {"target": "fmnist-sd", "condition": "replacement", "params": SD_PARAMS,
                              "skip": NEW_ATTACKS},
}
ROW_KEYS = ("threat_model", "params", "variant", "auc", "auc_ci", "tpr_at_1pct_fpr", "tpr_at_1pct_fpr_ci",
            "tpr_at_0.1pct_fpr", "tpr_at_0.1pct_fpr_ci", "asr_oracle", "n_members", "n_nonmembers",
            "queries_per_sample", "measured_queries_per_sample", "seconds", "query_seconds", "fit_seconds",
            "images_per_second", "overhead_ratio")


def ci(r, key):
    c = r.get(key + "_ci")
    return f"[{fmt(c[0], 2)}, {fmt(c[1], 2)}]" if c and c[0] is not None else ""


def run_config(name: str, a, command: str) -> tuple[list[dict], dict, float]:
    spec = CONFIGS[name]
    target, condition = spec["target"], spec.get("condition")
    folder = TARGETS[target]
    latent = TargetFolder(folder).is_latent
    skip = set(spec.get("skip", ())) | set(a.skip.split(",") if a.skip else ())
    attacks = [n for n, c in ATTACKS.items() if n != "blind" and (latent or not c.needs_text) and n not in skip]
    params = {k: v for k, v in spec.get("params", {}).items() if k in attacks}
    if "refcal" in params:
        params["refcal"] = {**params["refcal"], "references": a.references}
    cfg = RunConfig(target=str(folder), out=str(ROOT / "runs" / "benchmark" / name), attacks=attacks,
                    params=params, condition=condition, split=str(spec["split"]) if "split" in spec else None,
                    n_members=a.n_members, n_nonmembers=a.n_nonmembers, device=a.device, n_boot=a.n_boot)
    t0 = time.time()
    report = run_attacks(cfg, command=command)
    rows = [{"attack": n, "target": target, "condition": condition, "config": name,
             **{k: r.get(k) for k in ROW_KEYS}} for n, r in report["attacks"].items()]
    return rows, report, time.time() - t0


def section(name: str, rows: list[dict], report: dict, wall: float) -> list[str]:
    target = TARGETS[CONFIGS[name]["target"]]
    rec = TargetFolder(target).training_record()
    params = rec["parameters"] if isinstance(rec["parameters"], int) else rec["parameters"]["unet"]
    lines = [f"## {name}", "",
             f"Target: `{target.relative_to(ROOT)}` ({params} UNet parameters, {rec['steps']} steps on "
             f"{rec['n_members']} members, EMA weights; {report.get('space')} space"
             + (f", condition **{report['condition']}**" if report.get("condition") else "") + ")  ",
             f"Evaluation: {report['n_members']} members + {report['n_nonmembers']} non-members, half calibration / "
             f"half test (seed {report['seed']}); numbers on the test half; 95% CIs by bootstrap. This run took "
             f"{wall:.0f} s; each attack's seconds are those of the run that computed its features (a rerun reuses them).",
             ""] + ([CONFIGS[name]["note"], ""] if CONFIGS[name].get("note") else []) + [
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
    lines += goal_check(rows)
    for w in report.get("warnings", []):
        lines.append(f"> **Warning:** {w}\n")
    if "shift" in report:
        lines.append(f"Shift diagnostic: `{report['shift']}`\n")
    for attack, r in report["attacks"].items():
        if r.get("component_weights"):
            lines += [f"{attack}: share of the logistic weight per component "
                      + ", ".join(f"{k} {v:.2f}" for k, v in r["component_weights"].items()), ""]
        if "sweep" in r and len(r["sweep"]) <= 40:
            lines += [f"### {name}: {attack}, every variant on all samples (oracle selection)", "",
                      "| variant | AUC | TPR@1%FPR |", "|---|---|---|"]
            lines += [f"| {k} | {fmt(v['auc'])} | {fmt(v['tpr_at_1pct_fpr'])} |" for k, v in r["sweep"].items()]
            lines.append("")
    return lines


def goal_check(rows: list[dict]) -> list[str]:
    """Best attack beyond the papers vs best source-paper attack at 1% FPR (test half), when both ran."""
    def best(rs):
        rs = [r for r in rs if r["tpr_at_1pct_fpr"] is not None]
        return max(rs, key=lambda r: r["tpr_at_1pct_fpr"]) if rs else None

    new = best([r for r in rows if r["attack"] in NEW_ATTACKS])
    old = best([r for r in rows if r["attack"] not in NEW_ATTACKS and r["attack"] != "blind"])
    if not new or not old:
        return []
    lo = (new.get("tpr_at_1pct_fpr_ci") or [None])[0]
    ratio = new["tpr_at_1pct_fpr"] / old["tpr_at_1pct_fpr"] if old["tpr_at_1pct_fpr"] else float("inf")
    return [f"Strongest at 1% FPR (test half): beyond the papers **{new['attack']}** ({new['variant']}) "
            f"{fmt(new['tpr_at_1pct_fpr'])} {ci(new, 'tpr_at_1pct_fpr')}, {new['queries_per_sample']} queries to the "
            f"target; source papers **{old['attack']}** ({old['variant']}) {fmt(old['tpr_at_1pct_fpr'])} "
            f"{ci(old, 'tpr_at_1pct_fpr')}: ratio {ratio:.2f}; the lower end of the first interval is "
            + ("above" if lo is not None and lo > old["tpr_at_1pct_fpr"] else "not above")
            + " the second's point estimate.", ""]


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
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}")
    p.add_argument("--n-members", type=int, default=None)
    p.add_argument("--n-nonmembers", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--results", default=str(ROOT / "benchmarks"))
    p.add_argument("--skip", default="", help="comma-separated attacks to leave out of this run (a later run "
                   "without --skip reuses every cached feature)")
    p.add_argument("--references", default=str(REFERENCES),
                   help="refcal's reference models (diffmia train-references --out), default %(default)s")
    a = p.parse_args(argv)
    command = "python benchmarks/run_benchmark.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "torch_threads": torch.get_num_threads(),
               "device": "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() and a.device != "cpu"
               else "cpu"}
    out = Path(a.results)
    parts = out / "results"
    parts.mkdir(exist_ok=True)
    for name in a.configs.split(","):
        if name not in CONFIGS:
            sys.exit(f"unknown configuration {name!r}; configurations: {', '.join(CONFIGS)}")
        rows, report, wall = run_config(name, a, command)
        stem = name.replace("/", "_")
        figure = strongest_figure(name, report, out)
        (parts / f"{stem}.json").write_text(json.dumps(rows, indent=1))
        (parts / f"{stem}.md").write_text("\n".join([f"Command: `{command}`  ", f"Commit: `{git_commit()}`  ",
                                                     f"Machine: {machine['platform']}, {machine['processor']}, "
                                                     f"{machine['device']}, {machine['torch_threads']} torch threads",
                                                     ""] + section(name, rows, report, wall)
                                                    + [f"![ROC, log-log, the five strongest attacks of {name} and the "
                                                       f"blind baseline (test half)]({figure})", ""]) + "\n")
    assemble(out)


def strongest_figure(name: str, report: dict, out: Path, k: int = 5) -> str:
    """A log-log ROC of the ``k`` attacks with the highest test TPR at 1% FPR, and the blind baseline, saved as
    benchmarks/roc_loglog_<configuration>.png; returns its name."""
    import shutil

    from diffmia.report import plot_rocs
    from diffmia.scores import Scores

    run = ROOT / "runs" / "benchmark" / name
    ranked = sorted((n for n in report["attacks"] if n != "blind"),
                    key=lambda n: -(report["attacks"][n]["tpr_at_1pct_fpr"] or 0))[:k]
    scores = {n: Scores.load(run / "scores" / f"{n}.npz") for n in ranked + ["blind"] if n in report["attacks"]}
    tmp = run / "strongest"
    tmp.mkdir(exist_ok=True)
    plot_rocs(report, scores, tmp)
    fn = f"roc_loglog_{name.replace('/', '_')}.png"
    shutil.copy(tmp / "roc_loglog.png", out / fn)
    return fn


def assemble(out: Path) -> None:
    """RESULTS.md and results.json from every configuration's section, in the order of CONFIGS."""
    all_rows, lines = [], []
    for name in CONFIGS:
        stem = name.replace("/", "_")
        md, js = out / "results" / f"{stem}.md", out / "results" / f"{stem}.json"
        if md.exists() and js.exists():
            all_rows += json.loads(js.read_text())
            text = md.read_text().splitlines()
            start = next(i for i, ln in enumerate(text) if ln.startswith("## "))
            pre = text[:start]
            while pre and not pre[-1].strip():
                pre.pop()
            lines += text[start:start + 1] + [""] + pre + text[start + 1:]
    (out / "results.json").write_text(json.dumps(all_rows, indent=1))
    head = ["# Benchmark: every attack on the reference targets", "",
            "Each section says the command, commit and machine it came from "
            "(`python benchmarks/run_benchmark.py --configs NAME` reruns one).", "",
            "query time / bare forward: the time of the attack's query stage divided by the time of the model "
            "forward passes it made (same batch size), for model-access attacks; fitting an attack model (secmi_nns, "
            "observers, clid, fusion, the blind baseline, with 2-fold cross-fitting for honest calibration scores) "
            "makes no queries and is listed after the '+'. API attacks have no noise predictor to compare with (n/r). "
            "GAN-Leaks' time includes generating the set that monte_carlo_set then reuses from the cache (on the "
            "text-to-image target: one set of 16 images per distinct caption). fusion's query time is the time its "
            "components spent (their cached features are shared, no new query); refcal's includes the reference "
            "models' queries.", ""]
    (out / "RESULTS.md").write_text("\n".join(head + lines + cost_section(out / "sd_cost.json")) + "\n")


if __name__ == "__main__":
    main()
