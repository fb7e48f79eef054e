"""``diffmia study FILE.toml``: which defence, at which cost in image quality, makes the attacks fail?

One TOML file names the training recipe shared by every target (``[base]``: ``diffmia train`` options), one
table per defence (``[defences.NAME]``: the options that differ, e.g. ``hflip = true``, ``dp_epsilon = 8``,
``n_members = 128``, ``steps = 4000``), the attacks and the evaluation size::

    out = "runs/study-small"
    attacks = ["pia", "loss", "secmi"]
    n_nonmembers = 256                 # evaluation non-members per target (the same for every target)
    [base]
    n_members = 64
    steps = 600
    [defences.none]
    [defences.hflip]
    hflip = true

Every target is trained on the same members (the first ``n_members`` of one study split; smaller member
sets are prefixes of it) and attacked on the same non-members, with the usual calibration/test protocol.
Each stage is resumable and never redone: a finished target (training.json) is reused, an interrupted one
continues from its checkpoint, an attack run reuses its cached chunks and a finished one (same
configuration) its metrics. Writes ``study.json``, ``STUDY.md`` (one row per defence: AUC and TPR at 1%
FPR with 95% CIs per attack, the empirical-epsilon bound, the DP accountant's epsilon, sample quality,
training time) and ``study.png`` (privacy vs quality).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import DiffmiaError

KEYS = {"out", "attacks", "params", "n_nonmembers", "base", "defences", "data", "data_root", "split_seed",
        "device", "n_boot", "seed", "jobs"}


@dataclass
class StudyConfig:
    out: str
    attacks: list[str]
    defences: dict[str, dict]
    base: dict = field(default_factory=dict)
    params: dict[str, dict] = field(default_factory=dict)
    n_nonmembers: int = 256
    data: str = "fashion-mnist"
    data_root: str | None = None
    split_seed: int = 0
    device: str = "auto"
    n_boot: int = 1000
    seed: int = 0
    jobs: int = 1          # targets trained at once (processes), each on cpu_count // jobs threads


def load_study(path) -> StudyConfig:
    """The study in ``path``, every key and every training option checked before any work."""
    from .config import read_toml
    from .train import TrainConfig

    d = read_toml(path, "study file")
    unknown = set(d) - KEYS
    if unknown:
        raise DiffmiaError(f"{path}: unknown keys {sorted(unknown)}; a study has {sorted(KEYS)}")
    for k in ("out", "attacks", "defences"):
        if k not in d:
            raise DiffmiaError(f"{path}: {k!r} missing")
    if not d["defences"] or not all(isinstance(v, dict) for v in d["defences"].values()):
        raise DiffmiaError(f"{path}: [defences.NAME] tables needed (an empty table = the base recipe)")
    options = {f.name for f in fields(TrainConfig)} - {"split", "data", "data_root", "device"}
    for where, opts in [("base", d.get("base", {}))] + [(f"defences.{n}", o) for n, o in d["defences"].items()]:
        bad = set(opts) - options
        if bad:
            raise DiffmiaError(f"{path}: [{where}] has no training option {sorted(bad)}; options: {sorted(options)}")
    return StudyConfig(**d)


def _train_config(cfg: StudyConfig, name: str, split: Path):
    from .train import TrainConfig

    opts = {**cfg.base, **cfg.defences[name]}
    return TrainConfig.from_dict({**opts, "data": cfg.data, "data_root": cfg.data_root, "split": str(split),
                                  "device": cfg.device})


def study_split(cfg: StudyConfig, out: Path):
    """One split for the whole study: as many members as the largest member set, ``n_nonmembers`` non-members;
    each target trains on a prefix of its members (``splits/members-N.json``)."""
    from .data import MembershipSplit, load_dataset

    sizes = {int({**cfg.base, **o}.get("n_members", 256)) for o in cfg.defences.values()}
    path = out / "split.json"
    if not path.exists():
        data = load_dataset(cfg.data, cfg.data_root)
        MembershipSplit.random(data, max(sizes), cfg.n_nonmembers, seed=cfg.split_seed).save(path)
    split = MembershipSplit.load(path)
    if len(split.members) < max(sizes) or len(split.nonmembers) < cfg.n_nonmembers:
        raise DiffmiaError(f"{path} was made for a smaller study; use another out folder")
    paths = {}
    for n in sorted(sizes):
        p = out / "splits" / f"members-{n}.json"
        if not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
            split.limit(n, cfg.n_nonmembers).save(p)
        paths[n] = p
    return paths


def run_study(path, out: str | None = None, only: list[str] | None = None, progress: bool = True,
              jobs: int | None = None) -> dict:
    from .run import RunConfig, run_attacks
    from .targets import TargetFolder
    from .train import train

    cfg = load_study(path)
    jobs = cfg.jobs if jobs is None else jobs
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise DiffmiaError(f"{path}: jobs must be a positive integer, got {jobs!r}")
    out_dir = Path(out or cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = only or list(cfg.defences)
    missing = set(names) - set(cfg.defences)
    if missing:
        raise DiffmiaError(f"{path}: no defence {sorted(missing)}; defences: {list(cfg.defences)}")
    splits = study_split(cfg, out_dir)
    configs = {n: _train_config(cfg, n, splits[int({**cfg.base, **cfg.defences[n]}.get("n_members", 256))])
               for n in names}
    if jobs > 1:
        train_in_parallel(configs, out_dir, jobs, f"diffmia study {path}")
    rows = {}
    for name in names:
        tc = configs[name]
        tdir = out_dir / "targets" / name
        if not (tdir / "training.json").exists():                 # finished targets are never retrained
            print(f"[study] training {name}")
            train(tc, tdir, progress=progress, command=f"diffmia study {path} (defence {name})")
        rdir = out_dir / "runs" / name
        rc = RunConfig(target=str(tdir), out=str(rdir), attacks=list(cfg.attacks), params=dict(cfg.params),
                       data=cfg.data, data_root=cfg.data_root, device=cfg.device, n_boot=cfg.n_boot,
                       seed=cfg.seed, progress=progress)
        done = rdir / "metrics.json"
        same = done.exists() and json.loads((rdir / "run.json").read_text())["config"] == json.loads(
            json.dumps(asdict(rc), default=str))
        if not same:                                              # finished attack runs are never redone
            print(f"[study] attacking {name}")
            run_attacks(rc, command=f"diffmia study {path} (defence {name})")
        elif "epsilon_audit" not in json.loads(done.read_text()):   # a run made before the audit existed
            from .run import rerun_report

            rerun_report(rdir, n_boot=cfg.n_boot)
        record = TargetFolder(tdir).training_record()
        record["quality"] = target_quality(tdir, record, cfg.device)
        rows[name] = summarise(name, cfg.defences[name], record, json.loads(done.read_text()))
    result = {"study": str(path), "out": str(out_dir), "attacks": cfg.attacks, "base": cfg.base, "rows": rows}
    (out_dir / "study.json").write_text(json.dumps(result, indent=1, default=float))
    write_study_report(out_dir, result)
    return result


def _train_one(tc, tdir: Path, command: str) -> str:
    from .train import train

    train(tc, tdir, progress=False, command=command)
    return tdir.name


def train_in_parallel(configs: dict, out_dir: Path, jobs: int, command: str) -> None:
    """Train the unfinished targets ``jobs`` at a time, each in its own (spawned) process with its configured
    threads or cpu_count // jobs; the costliest first (steps, x1.6 with DP-SGD's per-sample gradients), so
    that the long ones do not finish last alone. Each target is seeded by its own recipe: a target trained
    here has the weights it gets alone with the same thread count."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor
    from dataclasses import replace

    todo = [(n, tc) for n, tc in configs.items() if not (out_dir / "targets" / n / "training.json").exists()]
    if len(todo) < 2:
        return
    per = max(1, (os.cpu_count() or 1) // jobs)
    todo.sort(key=lambda x: -x[1].steps * (1.6 if x[1].dp_epsilon is not None else 1.0))
    print(f"[study] training {', '.join(n for n, _ in todo)} ({jobs} at a time, {per} thread(s) each)")
    with ProcessPoolExecutor(min(jobs, len(todo)), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_train_one, replace(tc, threads=tc.threads or per), out_dir / "targets" / n,
                               f"{command} (defence {n})") for n, tc in todo]
        for f in futures:
            print(f"[study] trained {f.result()}")


def target_quality(tdir: Path, record: dict, device: str) -> dict | None:
    """The sample quality of the training record, or, for a target trained without one, the same measure
    (256 samples, 50 DDIM steps, the training seed) computed once and kept in ``quality.json``."""
    q = record.get("quality")
    if q and "kid_mean" in q:
        return q
    path = tdir / "quality.json"
    if not path.exists():
        from .quality import sample_quality

        seed = int((record.get("config") or {}).get("seed", 0))
        path.write_text(json.dumps(sample_quality(tdir, n=256, steps=50, seed=seed, device=device), default=float))
    return json.loads(path.read_text())


def summarise(name: str, overrides: dict, record: dict, metrics: dict) -> dict:
    """One study row: per attack AUC/TPR with CIs and the empirical-epsilon bound; quality, DP, cost."""
    attacks = {}
    for a, r in metrics["attacks"].items():
        attacks[a] = {"auc": r["auc"], "auc_ci": r.get("auc_ci"), "tpr_at_1pct_fpr": r.get("tpr_at_1pct_fpr"),
                      "tpr_ci": r.get("tpr_at_1pct_fpr_ci"),
                      "epsilon_lower_bound": (r.get("empirical_epsilon") or {}).get("lower_bound")}
    quality = record.get("quality") or {}
    dp = record.get("dp") or {}
    return {"defence": name, "overrides": overrides, "attacks": attacks,
            "quality": quality.get("kid_mean"), "quality_std": quality.get("kid_std"),
            "dp_epsilon": dp.get("epsilon"), "train_seconds": record.get("wall_seconds"),
            "steps": record.get("steps"), "n_members": record.get("n_members"),
            "test_half": [next(iter(metrics["attacks"].values())).get(k) for k in ("n_members", "n_nonmembers")]}


def _f(v, d=3) -> str:
    return "-" if v is None else f"{v:.{d}f}"


def write_study_report(out_dir: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = [a for a in result["attacks"]]
    head = ["defence", "options", "members", "test half (m / n)", "train s", "KID (± std)", "DP eps"]
    head += [f"{a} AUC [95% CI] / TPR@1%FPR" for a in attacks] + ["empirical eps >= (best)"]
    md = ["# Defence study", "", f"Study file `{result['study']}`; base recipe `{json.dumps(result['base'])}`. "
          "Attack numbers on each target's test half (its size per row); KID of 256 samples on diffmia's "
          "Fashion-MNIST feature network (lower = better samples; real images score about 0); the empirical "
          "epsilon is a 95% lower bound from thresholds chosen on the calibration half.", "",
          "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"].values():
        cells = [r["defence"], ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "(base)",
                 str(r["n_members"]), " / ".join(map(str, r.get("test_half") or ("-", "-"))), _f(r["train_seconds"], 0),
                 "-" if r["quality"] is None else f"{r['quality']:.1f} ± {_f(r['quality_std'], 1)}",
                 _f(r["dp_epsilon"], 2)]
        for a in attacks:
            x = r["attacks"].get(a, {})
            ci = x.get("auc_ci") or (None, None)
            cells.append(f"{_f(x.get('auc'))} [{_f(ci[0], 2)}, {_f(ci[1], 2)}] / {_f(x.get('tpr_at_1pct_fpr'))}")
        bounds = [x["epsilon_lower_bound"] for x in r["attacks"].values() if x.get("epsilon_lower_bound") is not None]
        cells.append(_f(max(bounds), 2) if bounds else "-")
        md.append("| " + " | ".join(cells) + " |")
    md += ["", "![privacy vs quality](study.png)", ""]
    (out_dir / "STUDY.md").write_text("\n".join(md) + "\n")

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in result["rows"].values():
        best = max((x["auc"] for n, x in r["attacks"].items() if n != "blind"), default=None)
        if best is None or r["quality"] is None:
            continue
        ax.scatter(r["quality"], best)
        ax.annotate(r["defence"], (r["quality"], best), fontsize=8, xytext=(3, 3), textcoords="offset points")
    ax.axhline(0.5, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("KID of 256 samples (lower is better; real images about 0)")
    ax.set_ylabel("best attack AUC (test half)")
    ax.set_title("Privacy vs quality per defence")
    fig.tight_layout()
    fig.savefig(out_dir / "study.png", dpi=120)
    plt.close(fig)
