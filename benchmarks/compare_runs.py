"""Are two runs the same result? For refactors and reruns: every per-sample score bit for bit, every cached
feature, and every metric except the cost columns (which are timings).

    .venv/bin/python benchmarks/compare_runs.py RUN_A RUN_B      # two run folders
    .venv/bin/python benchmarks/compare_runs.py --rescore RUN    # this code's protocol on RUN's cached features

``--rescore`` recomputes every attack's scores (fits included) and metrics from the query results cached
in RUN with the code as it is now, and compares them with what RUN recorded: a check that a change to the
scoring, fitting or evaluation code changed no number. Exit status 1 when anything differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from diffmia import protocol  # noqa: E402
from diffmia.run import make_attack  # noqa: E402
from diffmia.scores import Scores, load_npz  # noqa: E402

COST = {"seconds", "query_seconds", "fit_seconds", "images_per_second", "forward_seconds", "overhead_ratio"}


def _same_scores(a: Scores, b: Scores) -> list[str]:
    bad = [k for k in ("ids", "is_member", "calibration") if not np.array_equal(getattr(a, k), getattr(b, k))]
    if list(a.variants) != list(b.variants):
        bad.append("variant names or order")
    bad += [f"variant {k}" for k in a.variants if k in b.variants and not np.array_equal(a.variants[k], b.variants[k])]
    return bad


def _same_metrics(a: dict, b: dict) -> list[str]:
    keys = (set(a) | set(b)) - COST
    return [k for k in sorted(keys) if json.dumps(a.get(k), sort_keys=True) != json.dumps(b.get(k), sort_keys=True)]


def _features(run: Path, name: str) -> dict[str, np.ndarray]:
    (folder,) = (run / "features").glob(f"{name}-*")
    parts = [load_npz(p)[0] for p in sorted(folder.glob("chunk_*.npz"))]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def compare(run_a: Path, run_b: Path) -> list[str]:
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (run_a, run_b))
    problems = []
    if list(ma["attacks"]) != list(mb["attacks"]):
        problems.append(f"attacks differ: {list(ma['attacks'])} vs {list(mb['attacks'])}")
    for name in ma["attacks"]:
        if name not in mb["attacks"]:
            continue
        sa, sb = (Scores.load(r / "scores" / f"{name}.npz") for r in (run_a, run_b))
        problems += [f"{name}: scores differ in {d}" for d in _same_scores(sa, sb)]
        problems += [f"{name}: metric {k} differs" for k in _same_metrics(ma["attacks"][name], mb["attacks"][name])]
        fa, fb = _features(run_a, name), _features(run_b, name)
        if list(fa) != list(fb) or any(not np.array_equal(fa[k], fb[k]) for k in fa):
            problems.append(f"{name}: cached features differ")
    if json.dumps(ma.get("shift"), sort_keys=True) != json.dumps(mb.get("shift"), sort_keys=True):
        problems.append("shift diagnostic differs")
    return problems


def rescore(run: Path) -> list[str]:
    info = json.loads((run / "run.json").read_text())["config"]
    m = json.loads((run / "metrics.json").read_text())
    problems = []
    for name, rec in m["attacks"].items():
        old = Scores.load(run / "scores" / f"{name}.npz")
        attack = make_attack(name, rec["params"])
        variants = protocol.attack_scores(attack, _features(run, name), old.is_member, old.calibration,
                                          info.get("crossfit_folds", 2), info["seed"])
        new = Scores(name, old.ids, old.is_member, old.calibration, variants, attack.get_params())
        problems += [f"{name}: rescored {d} differs" for d in _same_scores(new, old)]
        ev = protocol.evaluate(variants, old.is_member, old.calibration, info["n_boot"], info["seed"])
        problems += [f"{name}: metric {k} differs" for k in _same_metrics(ev, {k: rec.get(k) for k in ev})]
        print(f"{name}: {len(variants)} variants rescored", flush=True)
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--rescore", action="store_true")
    a = p.parse_args(argv)
    if a.rescore:
        problems = [q for r in a.runs for q in rescore(r)]
    elif len(a.runs) == 2:
        problems = compare(*a.runs)
    else:
        p.error("give two run folders, or --rescore RUN")
    print("\n".join(problems) if problems else "identical: every score, feature and metric (cost columns aside)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
