"""``make demo``: every registered attack on the shipped reference target, at demo sizes, in minutes on a CPU."""

from __future__ import annotations

import time
from pathlib import Path

from .attacks import ATTACKS
from .errors import TargetError
from .targets.folder import TargetFolder

# Demo-sized parameters (the benchmark uses the papers' defaults on more samples).
DEMO_PARAMS: dict[str, dict] = {
    "forensics": {"grid_stride": 100},       # 10 queries instead of 20
    "secmi_nns": {"epochs": 5},              # the paper trains 15 epochs (the benchmark does)
    "ganleaks": {"n_generated": 256},        # the benchmark uses 1000
    "monte_carlo_set": {"n_generated": 256},
}
# members, non-members of the reference target's split used by the demo (the benchmark uses all: 256, 2048)
DEMO_SIZES = {"full": (256, 512), "quick": (48, 48)}


def run_demo(out: str, target: str, quick: bool = False) -> dict:
    from .report import console_table
    from .run import RunConfig, run_attacks

    if TargetFolder(target).sample_size() is None:
        raise TargetError(f"{target}: the reference target is missing; it ships with the repository "
                          "(targets/fmnist-ddpm) - check out the full repository or pass --target")
    n_mem, n_non = DEMO_SIZES["quick" if quick else "full"]
    attacks = [a for a, cls in ATTACKS.items() if a != "blind" and not cls.needs_text]
    params = {k: v for k, v in DEMO_PARAMS.items() if k in attacks and v}
    cfg = RunConfig(target=target, out=out, attacks=attacks, params=params, n_members=n_mem,
                    n_nonmembers=n_non, device="auto", n_boot=500)
    t0 = time.perf_counter()
    report = run_attacks(cfg, command="diffmia demo --out " + out)
    print()
    print(console_table(report))
    for w in report.get("warnings", []):
        print("WARNING:", w)
    print(f"\n{len(attacks)} attacks and the blind baseline in {time.perf_counter() - t0:.0f} s. "
          f"Report: {Path(out) / 'report.md'}")
    return report
