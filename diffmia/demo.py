"""``make demo``: every registered attack on the shipped reference targets, at demo sizes, in minutes on a CPU:
the pixel DDPM (``runs/demo/``) and the tiny text-to-image latent target with the samples' captions
(``runs/demo/sd/``)."""

from __future__ import annotations

import time
from pathlib import Path

from .attacks import ATTACKS
from .data import MembershipSplit
from .errors import TargetError
from .targets.folder import TargetFolder

# Demo-sized parameters (the benchmark uses the papers' defaults on more samples).
DEMO_PARAMS: dict[str, dict] = {
    "forensics": {"grid_stride": 100},       # 10 queries instead of 20
    "secmi_nns": {"epochs": 5},              # the paper trains 15 epochs (the benchmark does)
    "ganleaks": {"n_generated": 256},        # the benchmark uses 1000
    "monte_carlo_set": {"n_generated": 256},
}
# text-to-image: one generated set per distinct caption (the benchmark uses 16 images per caption)
DEMO_SD_PARAMS = {**DEMO_PARAMS, "ganleaks": {"n_generated": 4}, "monte_carlo_set": {"n_generated": 4}}
# refcal runs in the demo when reference models of the target are there (they are not shipped: about 70
# minutes on 2 CPU cores): diffmia train-references --target targets/fmnist-ddpm --k 4 --out <this folder>
DEMO_REFERENCES = Path(__file__).resolve().parent.parent / "runs" / "references"
# members, non-members of the reference targets' splits used by the demo (the benchmark uses all: 256, 2048)
DEMO_SIZES = {"full": (256, 512), "quick": (48, 48)}
DEMO_SD_SIZES = {"full": (128, 256), "quick": (24, 24)}


def demo_attacks(folder: TargetFolder, target: str) -> tuple[list[str], dict]:
    """The demo's attacks and their demo-sized parameters for one target; refcal only when reference models of
    the target are in DEMO_REFERENCES/<target folder name>."""
    latent = folder.is_latent
    attacks = [a for a, cls in ATTACKS.items() if a not in ("blind", "refcal") and (latent or not cls.needs_text)]
    params = {k: v for k, v in (DEMO_SD_PARAMS if latent else DEMO_PARAMS).items() if k in attacks and v}
    refs = DEMO_REFERENCES / folder.path.name
    if any(refs.glob("ref-*/training.json")):
        attacks.append("refcal")
        params["refcal"] = {"references": str(refs)}
    elif not latent:
        print(f"refcal left out: no reference models in {refs} (make them with: diffmia train-references "
              f"--target {target} --k 4 --out {refs})")
    return attacks, params


def _run(target: str, out: str, quick: bool, condition: str | None):
    from .report import console_table
    from .run import RunConfig, run_attacks

    folder = TargetFolder(target)
    if folder.sample_size() is None:
        raise TargetError(f"{target}: the reference target is missing; it ships with the repository "
                          "(targets/) - check out the full repository or pass --target")
    latent = folder.is_latent
    n_mem, n_non = (DEMO_SD_SIZES if latent else DEMO_SIZES)["quick" if quick else "full"]
    split = MembershipSplit.load(folder.split_path)            # the demo's sizes are caps: a smaller split is used whole
    n_mem, n_non = min(n_mem, len(split.members)), min(n_non, len(split.nonmembers))
    attacks, params = demo_attacks(folder, target)
    cfg = RunConfig(target=target, out=out, attacks=attacks, params=params, n_members=n_mem,
                    n_nonmembers=n_non, condition=condition, device="auto", n_boot=500)
    t0 = time.perf_counter()
    report = run_attacks(cfg, command="diffmia demo --out " + out)
    print(f"\n{target} ({report['space']} space" + (f", condition {condition}" if condition else "") + ")")
    print(console_table(report))
    for w in report.get("warnings", []):
        print("WARNING:", w)
    print(f"\n{len(attacks)} attacks and the blind baseline in {time.perf_counter() - t0:.0f} s. "
          f"Report: {Path(out) / 'report.md'}")
    return report


def run_demo(out: str, target: str, quick: bool = False, sd_target: str | None = None) -> dict:
    """The pixel target into ``out``; the text-to-image target (when given) into ``out/sd``."""
    reports = {"pixel": _run(target, out, quick, None)}
    if sd_target:
        reports["sd"] = _run(sd_target, str(Path(out) / "sd"), quick, "caption")
    return reports
