"""``make demo``: every registered attack on the shipped reference target, at demo sizes, in minutes on a CPU."""

from __future__ import annotations

import time
from pathlib import Path

from .attacks import ATTACKS
from .errors import TargetError

# Demo-sized parameters (the benchmark uses the papers' defaults on more samples).
DEMO_PARAMS: dict[str, dict] = {
    "forensics": {"grid_stride": 100},
    "forensics_graybox": {},
    "synthetic": {},
    "observers": {},
}
DEMO_SIZES = {"full": (512, 1024), "quick": (64, 64)}


def run_demo(out: str, target: str, quick: bool = False) -> dict:
    from .report import console_table
    from .run import RunConfig, run_attacks

    if not (Path(target) / "unet" / "config.json").exists():
        raise TargetError(f"{target}: the reference target is missing; it ships with the repository "
                          "(targets/fmnist-ddpm) - check out the full repository or pass --target")
    n_mem, n_non = DEMO_SIZES["quick" if quick else "full"]
    attacks = [a for a in ATTACKS if a != "blind"]
    params = {k: v for k, v in DEMO_PARAMS.items() if k in attacks and v}
    cfg = RunConfig(target=target, out=out, attacks=attacks, params=params, n_members=n_mem,
                    n_nonmembers=n_non, device="auto", n_boot=500)
    t0 = time.perf_counter()
    report = run_attacks(cfg, command="diffmia demo --out " + out)
    print()
    print(console_table(report))
    for w in report.get("warnings", []):
        print("WARNING:", w)
    print(f"\n{len(attacks)} attacks in {time.perf_counter() - t0:.0f} s. Report: {Path(out) / 'report.md'}")
    return report
