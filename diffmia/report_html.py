"""``report.html``: a run's report as one self-contained page (figures inlined as PNG ``data:`` URIs, no script,
no external reference), so it can be mailed or archived as a single file and opened in any browser.

Sections: blind baseline, shift and DP-audit warnings, the attack table and its interpretation, the empirical-epsilon
bounds, ROC (linear and log-log),
score histograms (members vs non-members, test half), sweeps (per variant), cost, the target's samples.
"""

from __future__ import annotations

import base64
import io
import re
from html import escape
from pathlib import Path

import numpy as np

from .metrics import fmt
from .report import (COST_HEADER, HEADER, chosen_variant, cost_rows, epsilon_table, epsilon_text, interpretation,
                     intro, roc_figure, shift_space, table_rows)

STYLE = """
body { font-family: sans-serif; max-width: 1150px; margin: 1.5em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: left; }
th { background: #eee; }
.warn { background: #fff3cd; border-left: 5px solid #e0a800; padding: 0.5em 1em; margin: 0.5em 0; }
.note { background: #eef4fb; border-left: 5px solid #4a7fb5; padding: 0.5em 1em; margin: 0.5em 0; }
.figs { display: flex; flex-wrap: wrap; gap: 0.8em; }
.figs figure { margin: 0; }
img { max-width: 100%; }
img.samples { width: 600px; image-rendering: pixelated; }
"""


def inline(text: str) -> str:
    """Escape ``text``, then turn the reports' Markdown **bold** and `code` into HTML (after escaping, so the
    only tags in the page are ours)."""
    out = escape(str(text))
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def img(png: bytes, alt: str, cls: str = "") -> str:
    klass = f' class="{cls}"' if cls else ""
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" alt="{escape(alt)}"{klass}>'


def figure_png(fig, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (and closed, so a run with many attacks does not keep them all open)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def figure(png: bytes, alt: str) -> str:
    return f"<figure>{img(png, alt)}</figure>"


def histogram_figure(name: str, variant: str, scores: np.ndarray, is_member: np.ndarray):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 2.8))
    ok = np.isfinite(scores)            # a variant may hold inf/nan for some samples; they have no bin
    s, m = scores[ok], is_member[ok]
    bins = np.histogram_bin_edges(s, bins=min(40, max(10, len(s) // 10))) if len(s) else 10
    ax.hist(s[~m], bins=bins, alpha=0.55, density=True, color="tab:blue", label=f"non-members ({(~m).sum()})")
    ax.hist(s[m], bins=bins, alpha=0.55, density=True, color="tab:red", label=f"members ({m.sum()})")
    ax.set_title(name if variant == name else f"{name}: {variant}", fontsize=9)
    ax.set_xlabel("score (higher = member), test half", fontsize=8)
    ax.set_ylabel("density", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def sweep_figure(name: str, sweep: dict, chosen: str | None):
    """AUC and TPR@1%FPR of every variant, in the attack's own order (timesteps are usually listed in order)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(sweep)
    x = np.arange(len(keys))
    nan = lambda v: np.nan if v is None else v  # noqa: E731  (unresolvable TPR leaves a gap)
    fig, ax = plt.subplots(figsize=(max(4.5, 0.28 * len(keys) + 2.5), 3.2))
    ax.plot(x, [nan(sweep[k]["auc"]) for k in keys], "o-", ms=3, label="AUC")
    tpr = [nan(sweep[k]["tpr_at_1pct_fpr"]) for k in keys]
    ax.plot(x, tpr, "s-", ms=3, label="TPR@1%FPR" + (" (n/r: too few non-members)" if np.isnan(tpr).all() else ""))
    if chosen in sweep:
        ax.axvline(keys.index(chosen), color="grey", ls="--", lw=0.8, label="chosen on calibration")
    ax.set_xticks(x)
    ax.set_xticklabels(keys, rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{name}: every variant, all samples (oracle view)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def baseline_and_warnings(report: dict) -> list[str]:
    out = []
    b = report["attacks"].get("blind")
    if b:
        ci = b.get("auc_ci")
        ci_text = f" (95% CI {fmt(ci[0])}-{fmt(ci[1])})" if ci and ci[0] is not None else ""
        out.append(f'<p class="note"><b>Blind baseline</b> (never queries the model): AUC {fmt(b["auc"])}{ci_text}. '
                   "Read attack AUCs against it rather than against 0.5.</p>")
    for w in report.get("warnings") or []:
        out.append(f'<p class="warn"><b>Warning:</b> {inline(w)}</p>')
    shift = report.get("shift")
    if shift:
        items = (", ".join(f"{k} {fmt(v) if isinstance(v, float) else v}" for k, v in shift.items())
                 if isinstance(shift, dict) else str(shift))
        out.append(f'<p class="note">Shift diagnostic (member vs non-member {shift_space(report)}): '
                   f"{escape(items)}</p>")
    return out


def write_html(folder, report: dict, all_scores: dict, samples=None) -> Path:
    """Write ``report.html`` into ``folder`` and return its path; ``samples``: an image of the target's samples,
    embedded when it exists."""
    folder = Path(folder)
    title = f"Membership-inference audit: {report.get('target')}"
    body = [f"<h1>{escape(title)}</h1>", f"<p>{inline(intro(report))}</p>"]
    body += baseline_and_warnings(report)
    body += ["<h2>Attacks</h2>", table(HEADER, table_rows(report))]
    text = interpretation(report)
    if text:
        body.append(f"<p>{inline(text)}</p>")
    head, rows = epsilon_table(report)
    if rows:
        body += ["<h2>Empirical epsilon (a lower bound)</h2>", f"<p>{inline(epsilon_text(report))}</p>",
                 table(head, rows)]
    scored = {n: sc for n, sc in all_scores.items() if n in report["attacks"]}
    if scored:
        body += ["<h2>ROC (test half)</h2>", '<div class="figs">']
        body += [figure(figure_png(roc_figure(report, scored, log)), "ROC log-log" if log else "ROC")
                 for log in (False, True)]
        body += ["</div>", "<h2>Score histograms (test half, chosen variant)</h2>", '<div class="figs">']
        for name, sc in scored.items():
            variant, s = chosen_variant(report, name, sc)
            test = ~sc.calibration
            png = figure_png(histogram_figure(name, variant, s[test], sc.is_member[test]))
            body.append(figure(png, f"score histogram {name}"))
        body.append("</div>")
    sweeps = {n: r for n, r in report["attacks"].items() if r.get("sweep")}
    if sweeps:
        body += ["<h2>Sweeps (per variant)</h2>",
                 "<p>Every variant measured on all samples: picking the best one here is oracle selection; "
                 "the table's numbers use the variant chosen on the calibration half.</p>", '<div class="figs">']
        body += [figure(figure_png(sweep_figure(n, r["sweep"], r.get("variant"))), f"sweep {n}")
                 for n, r in sweeps.items()]
        body.append("</div>")
    body += ["<h2>Cost</h2>", table(COST_HEADER, cost_rows(report))]
    if samples is not None and Path(samples).exists():
        body += ["<h2>Samples from the target</h2>",
                 img(Path(samples).read_bytes(), "samples from the target", "samples")]
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")
    path = folder / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
