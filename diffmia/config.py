"""A run's configuration: the ``RunConfig`` dataclass, its range checks, and ``--config FILE.toml``.

A configuration file holds the flags of ``diffmia attack`` as keys (``n-members`` or ``n_members``), e.g.::

    target = "targets/fmnist-ddpm"
    out = "runs/audit"
    attacks = ["pia", "secmi", "loss"]
    n-nonmembers = 1024
    [param.pia]
    t = [100, 200]

Flags given on the command line override the file; the resolved configuration is saved in run.json.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field

import numpy as np

from .errors import DiffmiaError


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
    condition: str | None = None      # latent targets: caption | empty | replacement (default caption)
    captions: str | None = None       # captions file (default <target>/captions.csv, or the data's captions)
    replacement_captions: str | None = None   # default <target>/replacement_captions.csv
    guidance_scale: float = 1.0       # latent targets: classifier-free guidance (w != 1 costs 2 queries)
    convert: str | None = None        # grey | rgb: change the images' channels to the target's (else refused)
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
    config_file: str | None = None    # the --config file this configuration was resolved from


def check_config(cfg: RunConfig) -> None:
    """Refuse out-of-range or wrong-type settings before any work (never clamp or truncate them)."""
    def bad(flag, want, v):
        raise DiffmiaError(f"{flag} must be {want}, got {v!r}")

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    if not cfg.attacks or not all(isinstance(a, str) and a for a in cfg.attacks):
        bad("--attacks", "a non-empty comma-separated list of attack names (see diffmia list)", cfg.attacks)
    for flag, v in (("--n-members", cfg.n_members), ("--n-nonmembers", cfg.n_nonmembers)):
        if v is not None and (not is_int(v) or v < 1):
            bad(flag, "a positive integer", v)
    for flag, v in (("--batch-size", cfg.batch_size), ("--chunk-size", cfg.chunk_size), ("--workers", cfg.workers),
                    ("--n-boot", cfg.n_boot), ("crossfit_folds", cfg.crossfit_folds)):
        if not is_int(v) or v < 1:
            bad(flag, "a positive integer", v)
    if not is_int(cfg.seed) or cfg.seed < 0:
        bad("--seed", "a non-negative integer", cfg.seed)
    f = cfg.calibration_fraction
    if not isinstance(f, (int, float)) or isinstance(f, bool) or not 0 < f < 1:
        bad("--calibration-fraction", "a number strictly between 0 and 1", f)
    if cfg.convert not in (None, "grey", "rgb"):
        bad("--convert", "grey or rgb", cfg.convert)
    if cfg.weights not in ("ema", "raw"):
        bad("--weights", "ema or raw", cfg.weights)
    g = cfg.guidance_scale
    if not isinstance(g, (int, float)) or isinstance(g, bool) or not np.isfinite(g) or g < 0:
        bad("--guidance-scale", "a finite number >= 0", g)
    from .targets.base import resolve_device

    try:
        resolve_device(cfg.device)
    except RuntimeError:
        bad("--device", "auto, cpu, cuda or cuda:N (a torch device)", cfg.device)


def read_toml(path, what: str = "configuration file") -> dict:
    """A TOML file's contents; a missing, unreadable or invalid file is a one-line error naming it."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise DiffmiaError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    except tomllib.TOMLDecodeError as e:
        raise DiffmiaError(f"{path}: not a valid TOML file ({e})") from None


def read_config_file(path: str, parser) -> dict:
    """The ``diffmia attack`` defaults a TOML file sets: {argparse dest: value}, each key and type checked."""
    data = read_toml(path)
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config", "fn")}
    out = {}
    for key, v in data.items():
        dest = key.replace("-", "_")
        if dest not in actions:
            flags = ", ".join(sorted(k.replace("_", "-") for k in actions))
            raise DiffmiaError(f"{path}: unknown key {key!r}; the keys are the flags of diffmia attack: {flags}")
        act = actions[dest]
        if dest == "param":
            v = _param_items(path, v)
        elif dest == "attacks" and isinstance(v, list):
            v = ",".join(map(str, v))
        want = act.type if act.type in (int, float) else (bool if act.nargs == 0 else str)
        if dest != "param" and not _fits(v, want):
            raise DiffmiaError(f"{path}: {key} must be {want.__name__}, got {v!r}")
        if act.choices is not None and v not in act.choices:
            raise DiffmiaError(f"{path}: {key} must be one of {list(act.choices)}, got {v!r}")
        out[dest] = v
    return out


def _fits(v, want) -> bool:
    if want is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if want is int:
        return isinstance(v, int) and not isinstance(v, bool)
    return isinstance(v, want)


def _param_items(path: str, v) -> list[str]:
    """``param`` as a list of "ATTACK.NAME=VALUE" strings or a table {attack: {name: value}}."""
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return list(v)
    if not isinstance(v, dict) or not all(isinstance(p, dict) for p in v.values()):
        raise DiffmiaError(f"{path}: param must be a table [param.ATTACK] or a list of \"ATTACK.NAME=VALUE\" strings")

    def text(x):
        if isinstance(x, list):
            return ",".join(text(y) for y in x) + ("," if len(x) == 1 else "")
        return str(x).lower() if isinstance(x, bool) else str(x)
    return [f"{a}.{n}={text(x)}" for a, ps in v.items() for n, x in ps.items()]
