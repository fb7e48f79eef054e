"""The README's results table, generated from benchmarks/results.json (never copied by hand).

    .venv/bin/python benchmarks/readme_table.py          # print the table
    .venv/bin/python benchmarks/readme_table.py --write  # replace it in README.md

The table sits between the markers ``<!-- results:begin -->`` and ``<!-- results:end -->``;
tests/test_readme.py fails when it differs from what this script renders.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from diffmia.attacks import ATTACKS  # noqa: E402
from diffmia.metrics import fmt  # noqa: E402

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
API_DETAIL = {"transform": "img2img API", "generate": "samples only"}


def _access(row: dict) -> str:
    cls = ATTACKS[row["attack"]]
    if cls.access == "none":
        return "none"
    detail = ", ".join(API_DETAIL.get(c, c) for c in cls.api_calls)
    return f"{row['threat_model']} ({detail})" if detail else row["threat_model"]


def _queries(row: dict) -> str:
    cls = ATTACKS[row["attack"]]
    if cls.access == "api" and "generate" in cls.api_calls:
        n = (row.get("params") or {}).get("n_generated")
        return f"0 ({n} generated, shared)" if n else "0"
    if cls.access == "api":
        return f"{row['queries_per_sample']} API call"
    if row["attack"] == "refcal":
        return f"{row['queries_per_sample']} (+ as many to each reference model)"
    if row["attack"] == "fusion":
        return f"{row['queries_per_sample']} (its components', none new)"
    return str(row["queries_per_sample"])


def _ci(row: dict, key: str) -> str:
    c = row.get(key + "_ci")
    return f" [{fmt(c[0], 2)}, {fmt(c[1], 2)}]" if c and c[0] is not None else ""


def render(rows: list[dict]) -> str:
    """The pixel target's table, then (when the results have them) the text-to-image target's AUCs per
    condition."""
    sd = [r for r in rows if r.get("target") == "fmnist-sd"]
    pixel = [r for r in rows if r.get("target", "fmnist-ddpm") == "fmnist-ddpm"]
    config = "fmnist-ddpm-16k" if any(r.get("config") == "fmnist-ddpm-16k" for r in pixel) else "fmnist-ddpm"
    rows = sorted((r for r in pixel if r.get("config", "fmnist-ddpm") == config),
                  key=lambda r: (r["attack"] == "blind", -(r["tpr_at_1pct_fpr"] or 0), -r["auc"]))
    n_mem, n_non = rows[0]["n_members"], rows[0]["n_nonmembers"]
    split = "split_16k.json" if config.endswith("16k") else "split.json"
    lines = [f"`targets/fmnist-ddpm` with `{split}`, test half: {n_mem} members vs {n_non} non-members (the other "
             "half calibrates); sorted by TPR at 1% FPR.", "",
             "| attack | access | AUC [95% CI] | TPR@1%FPR | TPR@0.1%FPR | queries/sample |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['attack']} | {_access(r)} | {fmt(r['auc'])}{_ci(r, 'auc')} | {fmt(r['tpr_at_1pct_fpr'])} | "
                     f"{fmt(r['tpr_at_0.1pct_fpr'])} | {_queries(r)} |")
    left_out = [r for r in pixel if r.get("config", "fmnist-ddpm") != config and r["attack"] not in {x["attack"] for x in rows}]
    if left_out:
        lines += ["", "Left out of the extended split (its network would train on 8,320 calibration rows), on the original "
                  "split (2,048 non-members): " + "; ".join(
                      f"{r['attack']} AUC {fmt(r['auc'])}{_ci(r, 'auc')}, TPR@1%FPR {fmt(r['tpr_at_1pct_fpr'])}"
                      for r in left_out) + "."]
    return "\n".join(lines + (_sd_table(sd) if sd else []))


def _sd_table(rows: list[dict]) -> list[str]:
    conds = list(dict.fromkeys(r["condition"] for r in rows))
    by = {(r["attack"], r["condition"]): r for r in rows}
    attacks = sorted(dict.fromkeys(r["attack"] for r in rows),
                     key=lambda a: (a == "blind", -by.get((a, conds[0]), {"auc": 0})["auc"]))
    n_mem, n_non = rows[0]["n_members"], rows[0]["n_nonmembers"]
    lines = ["", f"`targets/fmnist-sd` (latent, text-conditioned), test half: {n_mem} members vs {n_non} non-members; "
             "AUC [95% CI] and TPR@1%FPR under each condition:", "",
             "| attack | access | " + " | ".join(conds) + " | queries/sample |",
             "|---|---|" + "---|" * len(conds) + "---|"]
    for a in attacks:
        r0 = next(by[(a, c)] for c in conds if (a, c) in by)
        cells = [f"{fmt(by[(a, c)]['auc'])}{_ci(by[(a, c)], 'auc')} / {fmt(by[(a, c)]['tpr_at_1pct_fpr'])}"
                 if (a, c) in by else "" for c in conds]
        lines.append(f"| {a} | {_access(r0)} | " + " | ".join(cells) + f" | {_queries(r0)} |")
    return lines


def extract(readme: str) -> str:
    """The generated block of a README text (between the markers)."""
    if BEGIN not in readme or END not in readme:
        raise ValueError(f"README has no {BEGIN} ... {END} block")
    return readme.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results.json"))
    p.add_argument("--readme", default=str(ROOT / "README.md"))
    p.add_argument("--write", action="store_true", help="replace the table in the README")
    a = p.parse_args(argv)
    table = render(json.loads(Path(a.results).read_text()))
    if not a.write:
        print(table)
        return 0
    readme = Path(a.readme).read_text()
    extract(readme)                                               # the markers are there
    head, rest = readme.split(BEGIN, 1)
    Path(a.readme).write_text(f"{head}{BEGIN}\n{table}\n{END}{rest.split(END, 1)[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
