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
    return str(row["queries_per_sample"])


def _ci(row: dict, key: str) -> str:
    c = row.get(key + "_ci")
    return f" [{fmt(c[0], 2)}, {fmt(c[1], 2)}]" if c and c[0] is not None else ""


def render(rows: list[dict]) -> str:
    rows = sorted(rows, key=lambda r: (r["attack"] == "blind", -r["auc"]))
    n_mem, n_non = rows[0]["n_members"], rows[0]["n_nonmembers"]
    lines = [f"Test half: {n_mem} members vs {n_non} non-members (the other half calibrates).", "",
             "| attack | access | AUC [95% CI] | TPR@1%FPR | TPR@0.1%FPR | queries/sample |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['attack']} | {_access(r)} | {fmt(r['auc'])}{_ci(r, 'auc')} | {fmt(r['tpr_at_1pct_fpr'])} | "
                     f"{fmt(r['tpr_at_0.1pct_fpr'])} | {_queries(r)} |")
    return "\n".join(lines)


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
