"""The readable loop: data -> target -> features (cached per chunk) -> fit on calibration -> scores ->
metrics -> report.

``run_attacks(RunConfig(...))`` writes a run folder:
  features/<attack>-<key>/chunk_*.npz   query results; a rerun skips finished chunks (resume)
  scores/<attack>.npz|.csv              every score variant per sample id
  metrics.json                          per attack: headline (test half), calibrated rates, sweep, cost
  report.md, roc.png, roc_loglog.png    (report.py)
  run.json                              the configuration, command, versions and commit
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import metrics
from .attacks import ATTACKS
from .data import MembershipSplit, load_dataset, to_model_input
from .errors import DiffmiaError, TargetError
from .scores import Scores, load_npz, save_npz


@dataclass
class RunConfig:
    target: str
    out: str
    attacks: list[str] = field(default_factory=lambda: ["loss"])
    params: dict[str, dict] = field(default_factory=dict)   # attack name -> constructor kwargs
    data: str = "fashion-mnist"
    data_root: str | None = None
    split: str | None = None          # default: <target>/split.json
    n_members: int | None = None      # use only the first n members / non-members of the split
    n_nonmembers: int | None = None
    weights: str = "ema"
    device: str = "auto"
    batch_size: int = 256
    chunk_size: int = 256
    workers: int = 1
    calibration_fraction: float = 0.5
    seed: int = 0
    n_boot: int = 1000
    crossfit_folds: int = 2           # learned attacks: out-of-fold scores on the calibration half
    blind: bool = True                # add the blind baseline to every run
    progress: bool = True


def make_attack(name: str, params: dict | None = None):
    if name not in ATTACKS:
        raise DiffmiaError(f"unknown attack {name!r}; known: {', '.join(sorted(ATTACKS))}")
    cls = ATTACKS[name]
    params = dict(params or {})
    allowed = cls._param_names()
    unknown = set(params) - set(allowed)
    if unknown:
        raise DiffmiaError(f"attack {name!r} has no parameter {sorted(unknown)}; its parameters: {allowed}")
    return cls(**params)


def load_target(folder: str, access: str, weights: str = "ema", device: str = "auto", batch_size: int = 256):
    """The object an attack of this access kind may touch (never more)."""
    if access == "none":
        return None
    if access == "model":
        from .targets import DiffusersTarget

        return DiffusersTarget.from_pretrained(folder, weights=weights, device=device, batch_size=batch_size)
    if access == "api":
        from .targets.api import DiffusersAPI

        return DiffusersAPI.from_pretrained(folder, weights=weights, device=device, batch_size=batch_size)
    raise TargetError(f"unknown access kind {access!r}")


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


# ----------------------------------------------------------------------------- feature computation
_WORKER: dict = {}


def _worker_init(folder, access, weights, device, batch_size, threads):
    torch.set_num_threads(threads)
    _WORKER["target"] = load_target(folder, access, weights, device, batch_size)


def _compute_chunk(attack, target, images: np.ndarray, seeds: np.ndarray, path: Path) -> dict:
    q0 = getattr(target, "queries", 0)
    f0 = getattr(target, "forward_seconds", 0.0)
    t0 = time.perf_counter()
    feats = attack.features(target, torch.from_numpy(images), None, seeds)
    meta = {"seconds": time.perf_counter() - t0, "n": len(images),
            "queries": getattr(target, "queries", 0) - q0,
            "forward_seconds": getattr(target, "forward_seconds", 0.0) - f0}
    for k, v in feats.items():
        if len(v) != len(images):
            raise RuntimeError(f"{attack.name}: feature {k!r} has {len(v)} rows for {len(images)} images")
    save_npz(path, feats, meta)
    return meta


def _worker_chunk(attack, images, seeds, path):
    return _compute_chunk(attack, _WORKER["target"], images, seeds, Path(path))


def compute_features(attack, cfg: RunConfig, images: np.ndarray, ids: np.ndarray, folder: Path,
                     target=None) -> tuple[dict[str, np.ndarray], dict]:
    """Features for all images, computed chunk by chunk into ``folder`` (finished chunks are reused)."""
    from tqdm.auto import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    starts = list(range(0, len(images), cfg.chunk_size))
    paths = [folder / f"chunk_{s:07d}.npz" for s in starts]
    todo = [i for i, p in enumerate(paths) if not p.exists()]
    bar = tqdm(total=len(images), initial=len(images) - sum(min(cfg.chunk_size, len(images) - starts[i]) for i in todo),
               desc=attack.name, unit="img", disable=not cfg.progress, dynamic_ncols=True, leave=True)
    sl = [slice(s, s + cfg.chunk_size) for s in starts]
    if todo and cfg.workers > 1 and attack.access != "none":
        import multiprocessing as mp

        threads = max(1, (os.cpu_count() or 1) // cfg.workers)
        with ProcessPoolExecutor(cfg.workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                 initargs=(cfg.target, attack.access, cfg.weights, cfg.device,
                                           cfg.batch_size, threads)) as ex:
            futs = {ex.submit(_worker_chunk, attack, images[sl[i]], ids[sl[i]], str(paths[i])): i for i in todo}
            for fut in futs:
                fut.result()
                bar.update(len(images[sl[futs[fut]]]))
    elif todo:
        if target is None and attack.access != "none":
            target = load_target(cfg.target, attack.access, cfg.weights, cfg.device, cfg.batch_size)
        for i in todo:
            _compute_chunk(attack, target, images[sl[i]], ids[sl[i]], paths[i])
            bar.update(len(images[sl[i]]))
    bar.close()
    parts, metas = zip(*(load_npz(p) for p in paths))
    feats = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    cost = {k: float(sum(m[k] for m in metas)) for k in ("seconds", "queries", "forward_seconds")}
    return feats, cost


# ----------------------------------------------------------------------------- the run
def prepare_data(cfg: RunConfig):
    split_path = cfg.split or str(Path(cfg.target) / "split.json")
    split = MembershipSplit.load(split_path).limit(cfg.n_members, cfg.n_nonmembers)
    data = load_dataset(cfg.data, cfg.data_root)
    sub, is_member = split.select(data)
    return sub, is_member, split_path


def image_size_of(folder: str) -> int | None:
    cfg = Path(folder) / "unet" / "config.json"
    if cfg.exists():
        s = json.loads(cfg.read_text()).get("sample_size")
        return s if isinstance(s, int) else s[0]
    return None


def run_attacks(cfg: RunConfig, command: str | None = None) -> dict:
    from .train import git_commit, library_versions

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if not Path(cfg.target).is_dir():
        raise TargetError(f"{cfg.target}: target folder not found")
    names = list(dict.fromkeys(cfg.attacks))
    if cfg.blind and "blind" in ATTACKS and "blind" not in names:
        names.append("blind")
    attacks = {n: make_attack(n, cfg.params.get(n)) for n in names}   # validate all before any work
    unknown = set(cfg.params) - set(names)
    if unknown:
        raise DiffmiaError(f"--param given for attacks not in this run: {sorted(unknown)}")

    data, is_member, split_path = prepare_data(cfg)
    images = to_model_input(data.images, image_size_of(cfg.target)).numpy()
    ids = data.ids
    calib = metrics.calibration_split(is_member, cfg.calibration_fraction, cfg.seed)
    run_info = {"config": asdict(cfg), "command": command, "split": split_path, "git_commit": git_commit(),
                "versions": library_versions(), "n_samples": len(ids)}
    (out / "run.json").write_text(json.dumps(run_info, indent=1, default=str))

    results, all_scores = {}, {}
    targets: dict[str, object] = {}
    for name, attack in attacks.items():
        key = _key({"params": attack.get_params(), "target": os.path.abspath(cfg.target), "weights": cfg.weights,
                    "ids": _key(ids.tolist()), "data": cfg.data})
        if cfg.workers <= 1 and attack.access not in targets and attack.access != "none":
            targets[attack.access] = load_target(cfg.target, attack.access, cfg.weights, cfg.device, cfg.batch_size)
        feats, cost = compute_features(attack, cfg, images, ids, out / "features" / f"{name}-{key}",
                                       targets.get(attack.access))
        t0 = time.perf_counter()
        variants = fit_and_score(attack, feats, is_member, calib, cfg) if attack.learned else attack.scores(feats)
        cost["fit_seconds"] = time.perf_counter() - t0        # fitting (learned attacks) and scoring
        sc = Scores(name, ids, is_member, calib, variants, attack.get_params())
        sc.save(out / "scores")
        all_scores[name] = sc
        results[name] = describe(attack, sc, cost, cfg)
    report = {"target": cfg.target, "weights": cfg.weights, "data": cfg.data, "split": split_path,
              "calibration_fraction": cfg.calibration_fraction, "seed": cfg.seed,
              "n_members": int(is_member.sum()), "n_nonmembers": int((~is_member).sum()),
              "attacks": results}
    if "blind" in attacks:
        report.update(shift_check(attacks["blind"], images, is_member, results))
    (out / "metrics.json").write_text(json.dumps(report, indent=1, default=float))
    from .report import write_report

    write_report(out, report, all_scores, target_folder=cfg.target)
    return report


def fit_and_score(attack, feats: dict, is_member: np.ndarray, calib: np.ndarray, cfg: RunConfig) -> dict:
    """Scores of a learned attack that never score a row the model was trained on.

    Test rows: the attack fitted on all calibration rows. Calibration rows: cross-fitted
    (``cfg.crossfit_folds`` stratified folds: fit on the other folds, score the held-out one), so that
    choosing a variant or a threshold on calibration scores is not fooled by in-sample fit (an unpruned
    decision tree is perfect on its own training rows).
    """
    rows = lambda m: {k: v[m] for k, v in feats.items()}  # noqa: E731
    attack.fit(rows(calib), is_member[calib])
    full = attack.scores(feats)
    out = {k: np.array(v, dtype=np.float64, copy=True) for k, v in full.items()}
    rng = np.random.default_rng(cfg.seed + 1)
    fold = np.full(len(is_member), -1)
    for grp in (np.flatnonzero(calib & is_member), np.flatnonzero(calib & ~is_member)):
        fold[rng.permutation(grp)] = np.arange(len(grp)) % cfg.crossfit_folds
    for f in range(cfg.crossfit_folds):
        train_rows, held = calib & (fold != f), fold == f
        if not held.any() or is_member[train_rows].all() or not is_member[train_rows].any():
            raise DiffmiaError(f"{attack.name}: too few calibration samples for {cfg.crossfit_folds}-fold cross-fitting")
        clone = type(attack)(**attack.get_params()).fit(rows(train_rows), is_member[train_rows])
        part = clone.scores(rows(held))
        for k in out:
            out[k][held] = part[k]
    return out


def describe(attack, sc: Scores, cost: dict, cfg: RunConfig) -> dict:
    ev = metrics.evaluate(sc.variants, sc.is_member, sc.calibration, cfg.n_boot, cfg.seed)
    n = len(sc.ids)
    total = cost["seconds"] + cost.get("fit_seconds", 0.0)
    ev.update({
        "paper": attack.paper, "threat_model": attack.threat_model, "access": attack.access,
        "params": attack.get_params(), "learned": attack.learned,
        "queries_per_sample": attack.queries_per_sample(),
        "measured_queries_per_sample": cost["queries"] / n if attack.access == "model" else None,
        "seconds": round(total, 3),
        "query_seconds": round(cost["seconds"], 3),
        "fit_seconds": round(cost["fit_seconds"], 3),
        "images_per_second": round(n / total, 2) if total > 0 else None,
        "forward_seconds": round(cost["forward_seconds"], 3) if attack.access == "model" else None,
        # query stage / its bare model forward passes (fitting an attack model makes no queries)
        "overhead_ratio": (round(cost["seconds"] / cost["forward_seconds"], 3)
                           if attack.access == "model" and cost["forward_seconds"] > 0 else None),
    })
    return ev


def shift_check(blind, images: np.ndarray, is_member: np.ndarray, results: dict) -> dict:
    """Warn when the blind baseline finds a shift, or an attack does not beat it."""
    warnings = []
    b = results["blind"]
    lo = (b.get("auc_ci") or (None, None))[0]
    if lo is not None and lo > 0.5:
        warnings.append(f"The blind baseline (never queries the target) reaches AUC {b['auc']:.3f} "
                        f"(95% CI low {lo:.3f} > 0.5): members and non-members differ in distribution, so "
                        "attack numbers on this split overstate the leak.")
    for name, r in results.items():
        if name != "blind" and r["auc"] <= b["auc"]:
            warnings.append(f"{name}: AUC {r['auc']:.3f} does not beat the blind baseline ({b['auc']:.3f}).")
    out = {"warnings": warnings}
    try:
        from .attacks.blind import shift_distance

        flat = images.reshape(len(images), -1)
        out["shift"] = shift_distance(flat[is_member], flat[~is_member])
    except ImportError:
        pass
    return out


def rerun_report(run_dir, n_boot: int = 1000, seed: int | None = None) -> dict:
    """Recompute metrics and the report from a run folder's saved scores (no model needed)."""
    run_dir = Path(run_dir)
    info = json.loads((run_dir / "run.json").read_text())
    cfg = RunConfig(**info["config"])
    cfg.n_boot = n_boot
    old = json.loads((run_dir / "metrics.json").read_text())
    results, all_scores = {}, {}
    for name, r in old["attacks"].items():
        sc = Scores.load(run_dir / "scores" / f"{name}.npz")
        all_scores[name] = sc
        ev = metrics.evaluate(sc.variants, sc.is_member, sc.calibration, n_boot, cfg.seed if seed is None else seed)
        results[name] = {**r, **ev}
    old["attacks"] = results
    (run_dir / "metrics.json").write_text(json.dumps(old, indent=1, default=float))
    from .report import write_report

    write_report(run_dir, old, all_scores, target_folder=cfg.target)
    return old
