"""Report of a run: ``report.md`` (table first), ROC figures (linear and log-log), sweeps, warnings; the same as
one self-contained ``report.html`` (report_html.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from . import metrics
from .metrics import fmt


def _ci(r: dict, key: str) -> str:
    ci = r.get(key + "_ci")
    return f" [{fmt(ci[0], 2)}, {fmt(ci[1], 2)}]" if ci and ci[0] is not None else ""


def table_rows(report: dict) -> list[list[str]]:
    rows = []
    for name, r in report["attacks"].items():
        cal = r.get("calibrated", {})
        rows.append([
            name, r.get("threat_model", ""), r.get("variant", ""),
            fmt(r["auc"]) + _ci(r, "auc"),
            fmt(r["tpr_at_1pct_fpr"]) + _ci(r, "tpr_at_1pct_fpr"),
            fmt(r["tpr_at_0.1pct_fpr"]),
            fmt(r["asr_oracle"]), fmt(cal.get("balanced_accuracy")),
            str(r.get("queries_per_sample", "")), fmt(r.get("seconds"), 1),
            fmt(r.get("images_per_second"), 1),
        ])
    return rows


HEADER = ["attack", "access", "variant (chosen on calibration)", "AUC [95% CI]", "TPR@1%FPR [95% CI]",
          "TPR@0.1%FPR", "ASR (oracle)", "calibrated acc.", "queries/sample", "seconds", "img/s"]


COST_HEADER = ["attack", "queries/sample (declared)", "measured", "model calls/sample", "seconds (queries + fit)",
               "img/s", "forward s", "query time / forward"]


def cost_rows(report: dict) -> list[list[str]]:
    return [[name, str(r.get("queries_per_sample")), fmt(r.get("measured_queries_per_sample"), 2),
             fmt(r.get("model_calls_per_sample"), 2),
             f"{fmt(r.get('seconds'), 2)} ({fmt(r.get('query_seconds'), 2)} + {fmt(r.get('fit_seconds'), 2)})",
             fmt(r.get("images_per_second"), 1), fmt(r.get("forward_seconds"), 2), fmt(r.get("overhead_ratio"), 2)]
            for name, r in report["attacks"].items()]


def epsilon_table(report: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the empirical-epsilon bounds; with the accountant's epsilon beside them for a DP target."""
    claimed = (report.get("dp") or {}).get("epsilon")
    head = ["attack", "epsilon lower bound (95%)", "threshold rule (chosen on calibration)", "TPR (test)",
            "FPR (test)", "TPR low / FPR high", "delta"] + (["accountant epsilon"] if claimed is not None else [])
    rows = []
    for name, r in report["attacks"].items():
        e = r.get("empirical_epsilon")
        if e:
            rule = (report.get("epsilon_audit") or {}).get("threshold_rules", {}).get(e["threshold_rule"],
                                                                                      e["threshold_rule"])
            rows.append([name, fmt(e["lower_bound"], 2) + (" (exceeds the accountant!)" if claimed is not None
                                                             and e["lower_bound"] > claimed else ""),
                         rule, fmt(e["tpr"]), fmt(e["fpr"]), f"{fmt(e['tpr_lower'])} / {fmt(e['fpr_upper'])}",
                         f"{e['delta']:.3g}"] + ([f"{claimed:.3g}"] if claimed is not None else []))
    return head, rows


def epsilon_text(report: dict) -> str:
    """What the empirical-epsilon bounds are and how they were made (Markdown)."""
    a = report.get("epsilon_audit") or {}
    text = ("A training algorithm that is (epsilon, delta)-DP keeps every membership test at TPR <= e^epsilon FPR + "
            "delta and TNR <= e^epsilon FNR + delta. Each bound is max(0, ln((TPR_lo - delta) / FPR_hi), "
            "ln((TNR_lo - delta) / FNR_hi)) with one-sided Clopper-Pearson bounds on the test half, at thresholds "
            f"chosen on the calibration half by {len(a.get('threshold_rules', {})) or 'several'} rules "
            "(Bonferroni over the distinct ones, so the largest holds at 95%). It is a lower bound, not an "
            "estimate: with 95% confidence the training is not (epsilon, delta)-DP for any smaller epsilon, and it "
            "may leak much more.")
    if a.get("delta_source"):
        text += f" delta = {a['delta']:.3g}: {a['delta_source']}."
    dp = report.get("dp")
    if dp and dp.get("epsilon") is not None:
        text += (f" The target was trained with DP: the accountant claims epsilon = {dp['epsilon']:.3g} at "
                 f"delta = {dp.get('delta')}" + (f" (noise multiplier {dp['noise_multiplier']})"
                                                 if dp.get("noise_multiplier") is not None else "") + ".")
    return text


def markdown_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def console_table(report: dict) -> str:
    head = ["attack", "AUC", "TPR@1%FPR", "TPR@0.1%FPR", "ASR(oracle)", "q/sample", "seconds"]
    rows = [[n, fmt(r["auc"]), fmt(r["tpr_at_1pct_fpr"]), fmt(r["tpr_at_0.1pct_fpr"]), fmt(r["asr_oracle"]),
             str(r.get("queries_per_sample", "")), fmt(r.get("seconds"), 1)] for n, r in report["attacks"].items()]
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
                     + ([queries_sentence(report)] if report.get("queries") else []))


def queries_sentence(report: dict) -> str:
    """The run's model queries: what its attacks asked for and what reached the model (the planner answers
    a question another attack already asked; chunks cached by an earlier run cost nothing)."""
    q = report["queries"]
    return (f"Model queries: the attacks asked {q['requested']:,}, {q['model_calls']:,} reached the model "
            "(identical calls are made once; cached chunks are reused).")


def chosen_variant(report: dict, name: str, sc) -> tuple[str, np.ndarray]:
    """(name, scores) of the variant the report chose on calibration, else the scores' first (primary) one."""
    v = report["attacks"].get(name, {}).get("variant")
    if v in sc.variants:
        return v, sc.variants[v]
    return next(iter(sc.variants)), sc.primary


def roc_figure(report: dict, all_scores: dict, log: bool = False):
    """The test-half ROC of every attack (its chosen variant) as a matplotlib figure; ``log``: log-log axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 5))
    # distinct colours without grey (grey dashed = the blind baseline)
    colors = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 7] + \
             [c for i, c in enumerate(plt.get_cmap("tab20").colors) if i % 2 and i != 15]
    for i, (name, sc) in enumerate(all_scores.items()):
        r = report["attacks"][name]
        test = ~sc.calibration
        s = chosen_variant(report, name, sc)[1][test]
        fpr, tpr, _ = metrics.roc(sc.is_member[test], s)
        style = dict(color="grey", ls="--") if name == "blind" else dict(color=colors[i % len(colors)])
        ax.plot(fpr, tpr, label=f"{name} (AUC {r['auc']:.3f})", lw=1.4, **style)
    first = next(iter(all_scores.values()))
    n_neg = int((~first.is_member[~first.calibration]).sum())
    if log:
        lo = 1.0 / max(n_neg, 1)
        grid = np.logspace(np.log10(lo), 0, 100)
        ax.plot(grid, grid, "k:", lw=0.8, label="chance")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, 1)
        ax.set_ylim(lo, 1.02)
        ax.axvline(0.01, color="grey", lw=0.5)
    else:
        ax.plot([0, 1], [0, 1], "k:", lw=0.8, label="chance")
    ax.set_xlabel("false positive rate (test half)")
    ax.set_ylabel("true positive rate (test half)")
    ax.set_title("ROC" + (", log-log" if log else ""))
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def plot_rocs(report: dict, all_scores: dict, folder: Path) -> list[str]:
    """roc.png and roc_loglog.png in ``folder``; returns their names."""
    import matplotlib.pyplot as plt

    files = []
    for log in (False, True):
        fig = roc_figure(report, all_scores, log)
        fn = "roc_loglog.png" if log else "roc.png"
        fig.savefig(Path(folder) / fn, dpi=120)
        plt.close(fig)
        files.append(fn)
    return files


def interpretation(report: dict) -> str:
    res = {k: v for k, v in report["attacks"].items() if k != "blind"}
    if not res:
        return ""
    best = max(res, key=lambda k: res[k]["auc"])
    r = res[best]
    auc_lo = (r.get("auc_ci") or (None,))[0]
    tpr = r["tpr_at_1pct_fpr"]
    b = report["attacks"].get("blind")
    blind_lo = (b.get("auc_ci") or (None,))[0] if b else None
    shifted = blind_lo is not None and blind_lo > 0.5          # the split itself separates the groups
    if b is None:     # no blind baseline (--no-blind): the image shift test stands in for it
        shifted = (report.get("shift") or {}).get("p_value", 1.0) < 0.01
    beaten = b is None or r["auc"] > b["auc"]
    if auc_lo is not None and auc_lo > 0.5 and not shifted and beaten:
        verdict = "leaks membership"
    elif shifted or not beaten:
        why = ("the blind baseline, which never queries the model, is above chance" if shifted and b else
               "the member and non-member images differ in distribution (shift test p < 0.01)" if shifted else
               "the blind baseline, which never queries the model, does as well as the attacks")
        verdict = f"cannot be judged on this split ({why})"
    else:
        verdict = "shows no membership leak that this test can distinguish from chance"
    text = (f"On the held-out test half ({r['n_members']} members, {r['n_nonmembers']} non-members), the target "
            f"{verdict}: the strongest attack, **{best}** ({r['threat_model']}), reaches AUC {r['auc']:.3f}")
    if auc_lo is not None:
        text += f" (95% CI {r['auc_ci'][0]:.3f}-{r['auc_ci'][1]:.3f})"
    if tpr is not None:
        text += (f" and identifies {100 * tpr:.1f}% of members at a 1% false-positive rate, i.e. "
                 f"{'far more than' if tpr > 0.05 else 'about as many as'} the 1% an uninformed guess would flag")
    else:
        text += "; TPR at 1% FPR is not resolvable with this few non-members"
    text += ". Thresholds and variants were chosen on the calibration half only; ASR is an oracle number."
    if "blind" in report["attacks"]:
        b = report["attacks"]["blind"]
        text += (f" The blind baseline, which never queries the model, scores AUC {b['auc']:.3f}; attack AUCs "
                 "should be read against it rather than against 0.5.")
    return text


def shift_space(report: dict) -> str:
    """What the shift test compared: pixels, or an audio run's log-mels (one rendering per sentence)."""
    if report.get("modality"):
        return "log-mel distributions, one rendering per sentence"
    return "pixel distributions"


def _space(report: dict) -> str:
    if report.get("modality"):
        return (f" Audio target ({report['modality']}): a sentence's renderings are all in one half, the bootstrap "
                "resamples sentences, and the blind baseline sees each segment's log-mel.")
    if report.get("space") != "latent":
        return ""
    g = report.get("guidance_scale")
    return (f" Model-access attacks work in the target's latent space, conditioned on the samples' "
            f"**{report.get('condition')}** prompts" + (f" with guidance scale {g:g}" if g not in (None, 1.0) else "")
            + ".")


def intro(report: dict) -> str:
    """The report's first paragraph (Markdown): what was audited, on which split, how to read the numbers."""
    return (f"Target `{report.get('target')}` ({report.get('weights')} weights), data `{report.get('data')}`, "
            f"split `{report.get('split')}`: {report['n_members']} members and {report['n_nonmembers']} non-members, "
            f"split {report.get('calibration_fraction')} calibration / rest test (seed {report.get('seed')}). "
            "Numbers are on the test half; 95% CIs by seeded bootstrap; n/r = not resolvable "
            "(fewer than 1/alpha test non-members)." + _space(report))


def write_report(folder, report: dict, all_scores: dict, samples: Path | None = None) -> Path:
    """Write report.md, report.html and the ROC figures into ``folder``; ``samples``: an image of the target's
    samples (copied beside the report when it exists)."""
    folder = Path(folder)
    figs = plot_rocs(report, all_scores, folder)
    md = ["# Membership-inference audit", "", intro(report), ""]
    for w in report.get("warnings", []):
        md.append(f"> **Warning:** {w}\n")
    md += [markdown_table(HEADER, table_rows(report)), "", interpretation(report), ""]
    if "shift" in report:
        md.append(f"Shift diagnostic (member vs non-member {shift_space(report)}): `{report['shift']}`\n")
    md += ["## ROC (test half)", "", f"![ROC]({figs[0]}) ![ROC log-log]({figs[1]})", ""]
    if samples is not None and Path(samples).exists():
        shutil.copy(samples, folder / "target_samples.png")
        md += ["## Samples from the target", "", "![samples](target_samples.png)", ""]
    md += ["## Calibrated decisions (threshold from the calibration half, applied to the test half)", "",
           "| attack | threshold rule | balanced acc. | TPR [95% CI] | FPR [95% CI] |", "|---|---|---|---|---|"]
    for name, r in report["attacks"].items():
        for rule, key in (("best balanced accuracy", "calibrated"), ("FPR <= 1% on calibration", "calibrated_at_1pct_fpr")):
            c = r.get(key)
            if c:
                md.append(f"| {name} | {rule} | {fmt(c['balanced_accuracy'])} | {fmt(c['tpr'])} "
                          f"[{fmt(c['tpr_ci'][0], 2)}, {fmt(c['tpr_ci'][1], 2)}] | {fmt(c['fpr'])} "
                          f"[{fmt(c['fpr_ci'][0], 2)}, {fmt(c['fpr_ci'][1], 2)}] |")
    md.append("")
    head, rows = epsilon_table(report)
    if rows:
        md += ["## Empirical epsilon (a lower bound)", "", epsilon_text(report), "", markdown_table(head, rows), ""]
    for name, r in report["attacks"].items():
        if r.get("component_weights"):
            md += [f"## What carries {name}'s weight", "",
                   "Share of the logistic regression's absolute weight (standardised columns), per component: "
                   + ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["component_weights"].items(), key=lambda kv: -kv[1]))
                   + ". Largest columns: "
                   + ", ".join(f"{k} {v:+.2f}" for k, v in sorted(r["column_weights"].items(),
                                                                    key=lambda kv: -abs(kv[1]))[:5]) + ".", ""]
        if "sweep" in r:
            md += [f"## Sweep: {name} (oracle selection: every variant on all samples)", "",
                   "| variant | AUC | TPR@1%FPR | calibration AUC |", "|---|---|---|---|"]
            for k, v in r["sweep"].items():
                md.append(f"| {k} | {fmt(v['auc'])} | {fmt(v['tpr_at_1pct_fpr'])} | {fmt(v['calibration_auc'])} |")
            md.append("")
    md += ["## Cost", "", markdown_table(COST_HEADER, cost_rows(report))]
    if report.get("queries"):
        md += ["", queries_sentence(report)]
    (folder / "report.md").write_text("\n".join(md) + "\n")
    from .report_html import write_html

    write_html(folder, report, all_scores, samples)       # the same run as one self-contained page
    return folder / "report.md"
