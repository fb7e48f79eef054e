"""The training machinery shared by ``diffmia train`` (pixel DDPM) and ``diffmia train-sd`` (tiny SD):
batches that depend only on (seed, step), checkpoints (the latest and the one before it, which a resume falls back
to when the latest cannot be read), and one resumable training loop."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

LOG_EVERY = 10      # steps per point of the loss curve


def batch_positions(step: int, batch: int, n: int, seed: int) -> np.ndarray:
    """Member positions of a step's batch: consecutive slices of per-epoch seeded permutations."""
    start = step * batch
    out = []
    while len(out) < batch:
        epoch, off = divmod(start + len(out), n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        out.extend(perm[off:off + batch - len(out)].tolist())
    return np.asarray(out)


def start_run(folder, cfg, free: tuple[str, ...] = ("steps", "device", "threads", "checkpoint_every")):
    """Prepare ``folder`` (a TargetFolder) for training with configuration ``cfg`` (a dataclass): a folder that
    holds a run with other settings (except the ``free`` ones, which a rerun may change) is refused; the
    configuration is recorded. An option the folder's record lacks (written before the option existed) counts
    as its default. Sets the torch threads and returns the device."""
    from dataclasses import MISSING, asdict, fields

    from .errors import DiffmiaError
    from .targets.base import resolve_device

    folder.path.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    now = asdict(cfg)
    if folder.train_config_json.exists():
        before = json.loads(folder.train_config_json.read_text())
        default = {f.name: None if f.default is MISSING else f.default for f in fields(cfg)}
        differ = {k for k in now
                  if k not in free and json.dumps(before.get(k, default[k])) != json.dumps(now[k])}
        if differ:
            raise DiffmiaError(f"{folder.path} holds a run with other settings ({sorted(differ)}); "
                               "use another output folder or the same options")
    folder.train_config_json.write_text(json.dumps(now, indent=1))
    return resolve_device(cfg.device)


def _sibling(ck: Path, suffix: str) -> Path:
    return ck.with_name(ck.name + suffix)


def save_checkpoint(ck: Path, modules: dict, opt, state: dict) -> None:
    """Write the checkpoint folder ``ck`` (each module's weights as safetensors, the optimiser state, a JSON
    state) and keep the one it replaces as ``<ck>.prev``: written completely into ``<ck>.tmp`` first, then
    renamed, so a kill at any moment leaves at least one complete checkpoint."""
    from safetensors.torch import save_file

    tmp, prev = _sibling(ck, ".tmp"), _sibling(ck, ".prev")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, module in modules.items():
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, tmp / f"{name}.safetensors")
    torch.save(opt.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state))
    if ck.exists():
        shutil.rmtree(prev, ignore_errors=True)
        ck.rename(prev)
    tmp.rename(ck)
    shutil.rmtree(_sibling(ck, ".old"), ignore_errors=True)       # left by earlier versions, killed mid-save


def _candidates(ck: Path) -> list[Path]:
    """The checkpoint folders to resume from, newest first (``.old``: left by earlier diffmia versions)."""
    return [c for c in (ck, _sibling(ck, ".prev"), _sibling(ck, ".old")) if c.is_dir()]


def _why(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:120]}" if text else type(e).__name__


class _Broken(Exception):
    """One checkpoint folder cannot be used; the message names the file and why."""


def _read_state(path: Path) -> dict:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise _Broken(f"{path} cannot be read ({_why(e)})") from None
    ok = (isinstance(state, dict) and isinstance(state.get("step"), int) and state["step"] >= 0
          and isinstance(state.get("loss_curve"), list) and isinstance(state.get("seconds"), (int, float)))
    if not ok:
        raise _Broken(f"{path} is not a training state (step, loss_curve, seconds)")
    return state


def _load_one(ck: Path, modules: dict, opt, stateful: dict) -> dict:
    """Restore ``modules``, ``opt`` and ``stateful`` from one checkpoint folder (every file is read before any is
    applied)."""
    from safetensors.torch import load_file

    state = _read_state(ck / "state.json")
    for name in stateful:
        if not isinstance(state.get(name), dict):
            raise _Broken(f"{ck / 'state.json'} lacks the {name} state")
    weights = {}
    for name in modules:
        try:
            weights[name] = load_file(ck / f"{name}.safetensors")
        except Exception as e:       # safetensors raises its own SafetensorError for a truncated file
            raise _Broken(f"{ck / f'{name}.safetensors'} cannot be read ({_why(e)})") from None
    try:
        opt_state = torch.load(ck / "optimizer.pt", weights_only=True)
    except Exception as e:           # RuntimeError, EOFError, UnpicklingError, OSError ...
        raise _Broken(f"{ck / 'optimizer.pt'} cannot be read ({_why(e)})") from None
    for name, module in modules.items():
        try:
            module.load_state_dict(weights[name])
        except RuntimeError as e:
            raise _Broken(f"{ck / f'{name}.safetensors'} does not fit the model ({_why(e)})") from None
    try:
        opt.load_state_dict(opt_state)
    except (ValueError, KeyError, TypeError) as e:
        raise _Broken(f"{ck / 'optimizer.pt'} does not fit the optimiser ({_why(e)})") from None
    for name, obj in stateful.items():
        try:
            obj.load_state_dict(state.pop(name))
        except (ValueError, KeyError, TypeError) as e:
            raise _Broken(f"{ck / 'state.json'}: its {name} state cannot be used ({_why(e)})") from None
    return state


def checkpoint_step(checkpoint: Path) -> int:
    """The step a resume would start from, judged by the state files only (0 when there is none)."""
    for ck in _candidates(checkpoint):
        try:
            return _read_state(ck / "state.json")["step"]
        except _Broken:
            pass
    return 0


def load_checkpoint(checkpoint: Path, modules: dict, opt, stateful: dict | None = None) -> dict | None:
    """The state of the newest loadable checkpoint (modules, optimiser and ``stateful`` objects restored), or None
    when there is none. ``stateful``: name -> an object with ``state_dict()`` / ``load_state_dict()`` whose state
    is JSON (DP-SGD's privacy accountant), kept in state.json under that name.

    A checkpoint that cannot be loaded (truncated weights, unreadable optimiser state, bad state.json) is
    renamed ``<folder>.corrupt`` and the previous one is used, with a one-line warning on stderr that names
    the file and the step training goes on from. When checkpoints exist but none loads, a TargetError says
    so and nothing is deleted: the user decides whether to remove them and train from step 0."""
    import sys

    from .errors import TargetError

    broken = []
    for ck in _candidates(checkpoint):
        try:
            state = _load_one(ck, modules, opt, stateful or {})
        except _Broken as e:
            broken.append((ck, str(e)))
            continue
        for bad, _ in broken:
            shutil.rmtree(_sibling(bad, ".corrupt"), ignore_errors=True)
            bad.rename(_sibling(bad, ".corrupt"))
        if broken:
            print(f"diffmia: warning: {'; '.join(why for _, why in broken)}; continuing from {ck} "
                  f"(step {state['step']}); the unreadable checkpoint is kept as "
                  f"{', '.join(_sibling(b, '.corrupt').name for b, _ in broken)}", file=sys.stderr)
        return state
    if broken:
        raise TargetError(f"no checkpoint can be loaded: {'; '.join(why for _, why in broken)}. Delete "
                          f"{' and '.join(str(b) for b, _ in broken)} to train again from step 0")
    return None


def training_loop(name: str, model, opt, step_loss, *, steps: int, lr: float, warmup: int, checkpoint: Path,
                  modules: dict, ema=None, ema_decay: float = 0.0, grad_clip: float = 0.0, every: int = 500,
                  max_steps: int | None = None, progress: bool = True, stateful: dict | None = None) -> dict:
    """Steps ``state['step']`` .. ``steps`` of one model, resumed from ``checkpoint``: linear warm-up of the
    learning rate, ``step_loss(step)`` (everything random in it comes from (seed, step)), gradient clipping,
    an EMA copy, a loss curve of the mean loss over every LOG_EVERY steps (and over the last, shorter stretch
    when ``steps`` is not a multiple of it) and checkpoints of ``modules`` every ``every`` steps. The losses
    since the last curve point are part of the checkpoint, so a resumed run has the uninterrupted run's curve.
    ``max_steps`` stops early (a later call resumes). ``step_loss`` may return None (DP-SGD's empty Poisson batch):
    no backward pass and no loss for the curve, but ``opt.step()`` still runs (it adds the noise); a curve point
    whose steps were all empty is left out. ``stateful``: see :func:`load_checkpoint`, saved with every
    checkpoint. Returns the state (step, loss_curve, seconds)."""
    from tqdm.auto import tqdm

    from .errors import DiffmiaError

    if every < 1:
        raise DiffmiaError(f"the checkpoint interval must be at least 1 step, got {every}")
    if max_steps is not None and max_steps < 1:
        raise DiffmiaError(f"max_steps_this_run must be at least 1, got {max_steps}")
    stateful = stateful or {}
    state = load_checkpoint(checkpoint, modules, opt, stateful) or {"step": 0, "loss_curve": [], "seconds": 0.0}
    window = state.pop("loss_window", [])
    end = steps if max_steps is None else min(steps, state["step"] + max_steps)
    t0 = time.perf_counter()
    bar = tqdm(range(state["step"], end), initial=state["step"], total=steps, desc=name, disable=not progress,
               dynamic_ncols=True)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / max(1, warmup))
        loss = step_loss(step)
        opt.zero_grad(set_to_none=True)
        if loss is not None:
            loss.backward()
            window.append(loss.item())
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        if ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - ema_decay)
        if ((step + 1) % LOG_EVERY == 0 or step + 1 == steps) and window:
            state["loss_curve"].append([step + 1, float(np.mean(window))])
            bar.set_postfix(loss=f"{np.mean(window):.4f}")
            window = []
        if (step + 1) % every == 0 or step + 1 == end:
            state["step"] = step + 1
            state["seconds"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            save_checkpoint(checkpoint, modules, opt, {**state, "loss_window": window,
                                                       **{n: obj.state_dict() for n, obj in stateful.items()}})
    bar.close()
    return state
