"""The readable loop: data -> target -> attacks -> features (cached per chunk) -> protocol (fit on
calibration, choose, measure on test) -> metrics -> report. Each stage has its own module; this one only
orchestrates.

``run_attacks(RunConfig(...))`` writes a run folder:
  features/<attack>-<key>/chunk_*.npz   query results; a rerun skips finished chunks (features.py)
  scores/<attack>.npz|.csv              every score variant per sample id (scores.py)
  metrics.json                          per attack: headline (test half), calibrated rates, empirical
                                        epsilon lower bound, sweep, cost; the target's DP record if any
  report.md, roc.png, roc_loglog.png    (report.py)
  report.html                           the same as one self-contained page (report_html.py)
  run.json                              the resolved configuration (and its --config file), command,
                                        versions, commit, world size, the rank that computed each chunk
  fingerprints.json                     SHA-256 of the target's files (read once; keyed by size and mtime)
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path



from . import protocol
from .attacks import ATTACKS
from .config import RunConfig, check_config  # noqa: F401  (RunConfig: the run's public entry)
from .errors import DiffmiaError
from .inputs import model_input, prepare_data, prompts_for
from .metrics import DEFAULT_DELTA
from .distributed import run_workers
from .features import Chunks, Engine, Stage, cache_key, check_chunks, fingerprint, merge, plan, warn
from .provenance import git_commit, library_versions
from .scores import Scores
from .targets import TargetFolder


def make_attack(name: str, params: dict | None = None):
    """The registered attack ``name`` with ``params``, checked before any work."""
    if name not in ATTACKS:
        raise DiffmiaError(f"unknown attack {name!r}; known: {', '.join(sorted(ATTACKS))}")
    cls = ATTACKS[name]
    params = dict(params or {})
    allowed = cls._param_names()
    unknown = set(params) - set(allowed)
    if unknown:
        raise DiffmiaError(f"attack {name!r} has no parameter {sorted(unknown)}; its parameters: {allowed}")
    attack = cls(**params)
    attack.check_params()
    return attack


def share_component_params(attack, params: dict) -> None:
    """Composite attacks (fusion, refcal) use their components with the run's ``--param`` of those attacks
    (unless given explicitly), so a component's features are the same cached chunks as its own run's."""
    if not hasattr(attack, "component_attacks"):
        return
    own = dict(attack.component_params or {})
    names = attack.components if hasattr(attack, "components") else [attack.base]
    for n in names:
        if n in params and n not in own:
            own[n] = dict(params[n])
    attack.component_params = own or None
    attack.component_attacks()            # check the components now, before any work
    if hasattr(attack, "reference_folders"):
        attack.reference_folders()        # and that the reference models exist


# ----------------------------------------------------------------------------- the run
def run_attacks(cfg: RunConfig, command: str | None = None) -> dict | None:
    """Run ``cfg``; returns the report (metrics.json) on rank 0, None on the other torchrun ranks."""
    from . import distributed

    rank, world = distributed.init(cfg.device)
    check_config(cfg)
    if world > 1 and cfg.workers > 1:
        raise DiffmiaError("--workers N and torchrun are two ways to start N scoring processes; use one of them")
    out = Path(cfg.out)
    _make_run_folder(out)
    folder = TargetFolder.open(cfg.target)
    dp = dp_of(folder)                    # a DP-trained target's accountant: its delta is the audit's
    audit = epsilon_audit(dp)
    names = list(dict.fromkeys(cfg.attacks))
    if cfg.blind and "blind" in ATTACKS and "blind" not in names:
        names.append("blind")
    attacks = {n: make_attack(n, cfg.params.get(n)) for n in names}   # validate all before any work
    for a in attacks.values():   # a composite attack's components take the run's --param of that attack
        share_component_params(a, cfg.params)
    unknown = set(cfg.params) - set(names)
    if unknown:
        raise DiffmiaError(f"--param given for attacks not in this run: {sorted(unknown)}")
    text_only = [n for n, a in attacks.items() if a.needs_text and not folder.is_latent]
    if text_only:
        raise DiffmiaError(f"{', '.join(text_only)} needs a text-conditioned (latent) target; {cfg.target} is a "
                           "pixel model")

    data, is_member, split_path = prepare_data(cfg)
    condition, prompts = prompts_for(cfg, folder, data)
    images = model_input(data, folder, cfg)
    ids = data.ids
    calib = protocol.calibration_split(is_member, cfg.calibration_fraction, cfg.seed)
    run_info = {"config": asdict(cfg), "command": command, "split": split_path, "git_commit": git_commit(),
                "versions": library_versions(), "n_samples": len(ids), "world_size": max(world, cfg.workers)}

    # the features of every attack (fusion: of its components), one cache folder each
    fp_store = out / "fingerprints.json"
    target_fp = fingerprint(cfg.target, cfg.weights, fp_store if rank == 0 else None)
    stages: dict[str, Stage] = {}

    def stage_of(name, attack) -> str:
        key = {"params": attack.get_params(), "ids": cache_key(ids.tolist())}
        if attack.access != "none":                 # what the answers depend on: the weights' content
            key.update(target=target_fp, weights=cfg.weights)
        if prompts is not None and attack.access != "none":
            key.update(prompts=cache_key(prompts.tolist()), guidance_scale=cfg.guidance_scale)
        if hasattr(attack, "reference_folders"):    # and, for refcal, the reference models' weights
            key["references"] = [fingerprint(f, attack.weights, fp_store if rank == 0 else None)
                                 for f in attack.reference_folders()]
        st = Stage(f"{name}-{cache_key(key)}", attack, out / "features" / f"{name}-{cache_key(key)}")
        stages.setdefault(st.name, st)
        return st.name

    parts_of = {n: ({c: stage_of(c, comp) for c, comp in a.component_attacks().items()} if hasattr(a, "combine")
                    else {n: stage_of(n, a)}) for n, a in attacks.items()}
    chunks = Chunks(images, ids, prompts if prompts is not None else None, cfg.chunk_size)
    if rank == 0:
        (out / "run.json").write_text(json.dumps(run_info, indent=1, default=str))
        for line in check_chunks(list(stages.values()), chunks):
            warn(line)
    distributed.barrier()                     # every rank plans from the same files
    compute_all(list(stages.values()), chunks, plan(list(stages.values()), chunks), cfg, rank, world)
    distributed.barrier()                     # rank 0 merges once every rank has written its chunks
    if rank != 0:
        distributed.finish()
        return None

    merged = {name: merge(st, chunks) for name, st in stages.items()}
    run_info["chunks"] = {name: {str(s): r for s, r in m[2].items()} for name, m in merged.items()}
    (out / "run.json").write_text(json.dumps(run_info, indent=1, default=str))
    results, all_scores = {}, {}
    for name, attack in attacks.items():
        parts = {c: merged[st] for c, st in parts_of[name].items()}
        if hasattr(attack, "combine"):      # fusion: its components' own cached chunks, no new queries
            feats = attack.combine({c: f for c, (f, _, _) in parts.items()})
        else:
            feats = parts[name][0]
        cost = {k: sum(c[k] for _, c, _ in parts.values()) for k in ("seconds", "queries", "forward_seconds",
                                                                       "model_calls")}
        t0 = time.perf_counter()
        variants = protocol.attack_scores(attack, feats, is_member, calib, cfg.crossfit_folds, cfg.seed)
        cost["fit_seconds"] = time.perf_counter() - t0        # fitting (learned attacks) and scoring
        sc = Scores(name, ids, is_member, calib, variants, attack.get_params())
        sc.save(out / "scores")
        all_scores[name] = sc
        results[name] = describe(attack, sc, cost, cfg, folder.num_train_timesteps(), audit["delta"])
    model_stages = [m for name, m in merged.items() if stages[name].attack.access == "model"]
    report = {"target": cfg.target, "weights": cfg.weights, "data": cfg.data, "split": split_path,
              "space": "latent" if folder.is_latent else "pixel", "condition": condition,
              "guidance_scale": cfg.guidance_scale if folder.is_latent else None,
              "calibration_fraction": cfg.calibration_fraction, "seed": cfg.seed,
              "n_members": int(is_member.sum()), "n_nonmembers": int((~is_member).sum()),
              # the run's model queries: what its distinct feature stages asked for, and what reached the model
              "queries": {"requested": int(sum(c["queries"] for _, c, _ in model_stages)),
                          "model_calls": int(sum(c["model_calls"] for _, c, _ in model_stages))},
              "epsilon_audit": audit, **({"dp": dp} if dp else {}), "attacks": results}
    report.update(protocol.shift_check(images, is_member, results))
    report["warnings"] = protocol.dp_audit_warnings(report) + report["warnings"]
    (out / "metrics.json").write_text(json.dumps(report, indent=1, default=float))
    from .report import write_report

    write_report(out, report, all_scores, samples=folder.samples_png)
    distributed.finish()
    return report


def _make_run_folder(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise DiffmiaError(f"{out}: cannot write the run folder here ({e.strerror or e})") from None


def compute_all(stages: list[Stage], chunks: Chunks, todo, cfg: RunConfig, rank: int, world: int) -> None:
    """This process's share of ``todo``: all of it (one process), handed to --workers processes, or
    todo[rank::world] under torchrun."""
    from tqdm.auto import tqdm

    from . import distributed

    mine = todo[rank::world]
    bar = tqdm(total=sum(len(chunks.part(i)[0]) for i, _ in mine), desc=f"rank {rank}" if world > 1 else "queries",
               unit="img", disable=not cfg.progress or not mine, dynamic_ncols=True, leave=True)
    engine_args = (cfg.target, cfg.weights, distributed.device_for_rank(cfg.device), cfg.batch_size,
                   cfg.guidance_scale)
    needs_model = any(st.attack.access != "none" for st in stages if any(st.name in n for _, n in mine))
    if cfg.workers > 1 and needs_model and len(mine) > 1:
        run_workers(cfg.workers, engine_args, stages, chunks, mine, bar)
    else:
        engine = Engine(*engine_args, rank=rank, world=world)
        for i, names in mine:
            bar.update(engine.compute(stages, chunks, i, names))
    bar.close()


def dp_of(folder: TargetFolder) -> dict | None:
    """The ``dp`` entry of the target's training.json (written by DP training), or None."""
    if not folder.training_json.exists():
        return None
    dp = folder.training_record().get("dp")
    return dp if isinstance(dp, dict) else None


def epsilon_audit(dp: dict | None) -> dict:
    """How the runs' empirical-epsilon bounds are made: delta (and where it comes from), level, threshold rules."""
    delta, source = protocol.audit_delta(dp)
    return {"delta": delta, "delta_source": source, "confidence": 0.95, "threshold_rules": protocol.EPSILON_RULES}


def describe(attack, sc: Scores, cost: dict, cfg: RunConfig, num_train_timesteps: int | None = None,
             delta: float = DEFAULT_DELTA) -> dict:
    ev = protocol.evaluate(sc.variants, sc.is_member, sc.calibration, cfg.n_boot, cfg.seed, delta)
    n = len(sc.ids)
    total = cost["seconds"] + cost.get("fit_seconds", 0.0)
    if hasattr(attack, "component_weights") and getattr(attack, "weights_", None):
        ev["component_weights"] = {k: round(v, 4) for k, v in attack.component_weights().items()}
        ev["column_weights"] = {k: round(v, 4) for k, v in attack.weights_.items()}
    ev.update({
        "paper": attack.paper, "threat_model": attack.threat_model, "access": attack.access,
        "params": attack.get_params(), "learned": attack.learned,
        "queries_per_sample": attack.queries_per_sample(num_train_timesteps),
        "measured_queries_per_sample": cost["queries"] / n if attack.access == "model" else None,
        # what reached the model when the chunks were computed (queries another attack of the run had
        # already asked are answered by the planner: the first attack to ask pays)
        "model_calls_per_sample": cost["model_calls"] / n if attack.access == "model" else None,
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


def unfinished_check(run_dir: Path) -> dict:
    """run.json of a finished run; for what a killed run leaves, a one-line error that says what is
    missing and the command that finishes it (its cached chunks are reused)."""
    try:
        info = json.loads((run_dir / "run.json").read_text())
        RunConfig(**info["config"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise DiffmiaError(f"{run_dir}: not a run folder (run.json missing or unreadable)") from None
    missing = [] if (run_dir / "metrics.json").exists() else ["metrics.json"]
    try:
        names = list(json.loads((run_dir / "metrics.json").read_text())["attacks"]) if not missing else []
    except (json.JSONDecodeError, KeyError):
        names, missing = [], ["a readable metrics.json"]
    missing += [f"scores/{n}.npz" for n in names if not (run_dir / "scores" / f"{n}.npz").exists()]
    if missing:
        chunks = len(list(run_dir.glob("features/*/chunk_*.npz")))
        cmd = info.get("command") or "the diffmia attack command that made it"
        raise DiffmiaError(f"{run_dir}: the run did not finish ({', '.join(missing)} missing; {chunks} feature "
                           f"chunks are cached); finish it by running the same command again: {cmd}")
    return info


def rerun_report(run_dir, n_boot: int = 1000, seed: int | None = None) -> dict:
    """Recompute metrics and the report from a run folder's saved scores (no model needed)."""
    run_dir = Path(run_dir)
    info = unfinished_check(run_dir)
    cfg = RunConfig(**info["config"])
    cfg.n_boot = n_boot
    old = json.loads((run_dir / "metrics.json").read_text())
    # the DP record the run saw (a run from before the audit: the target's, if it is still there)
    dp = old.get("dp") if "epsilon_audit" in old else dp_of(TargetFolder(cfg.target))
    old.update({"epsilon_audit": epsilon_audit(dp), **({"dp": dp} if dp else {})})
    results, all_scores = {}, {}
    for name, r in old["attacks"].items():
        sc = Scores.load(run_dir / "scores" / f"{name}.npz")
        all_scores[name] = sc
        ev = protocol.evaluate(sc.variants, sc.is_member, sc.calibration, n_boot, cfg.seed if seed is None else seed,
                               old["epsilon_audit"]["delta"])
        results[name] = {**r, **ev}
    old["attacks"] = results
    old["warnings"] = protocol.dp_audit_warnings(old) + [w for w in old.get("warnings", [])
                                                         if not w.startswith(protocol.DP_WARNING)]
    (run_dir / "metrics.json").write_text(json.dumps(old, indent=1, default=float))
    from .report import write_report

    write_report(run_dir, old, all_scores, samples=TargetFolder(cfg.target).samples_png)
    return old
