"""The training machinery shared by ``diffmia train`` (pixel DDPM) and ``diffmia train-sd`` (tiny SD):
batches that depend only on (seed, step), atomic checkpoints, and one resumable training loop."""

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
    configuration is recorded. Sets the torch threads and returns the device."""
    from dataclasses import asdict

    from .errors import DiffmiaError
    from .targets.base import resolve_device

    folder.path.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    now = asdict(cfg)
    if folder.train_config_json.exists():
        before = json.loads(folder.train_config_json.read_text())
        differ = {k for k in now if k not in free and json.dumps(before.get(k)) != json.dumps(now[k])}
        if differ:
            raise DiffmiaError(f"{folder.path} holds a run with other settings ({sorted(differ)}); "
                               "use another output folder or the same options")
    folder.train_config_json.write_text(json.dumps(now, indent=1))
    return resolve_device(cfg.device)


def save_checkpoint(ck: Path, modules: dict, opt, state: dict) -> None:
    """Atomically replace the checkpoint folder ``ck``: each module's weights (safetensors), the optimiser
    state and a JSON state."""
    from safetensors.torch import save_file

    tmp, old = ck.with_name(ck.name + ".tmp"), ck.with_name(ck.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, module in modules.items():
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, tmp / f"{name}.safetensors")
    torch.save(opt.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state))
    shutil.rmtree(old, ignore_errors=True)
    if ck.exists():
        ck.rename(old)
    tmp.rename(ck)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(checkpoint: Path, modules: dict, opt) -> dict | None:
    """The state of the last complete checkpoint (modules and optimiser restored), or None."""
    from safetensors.torch import load_file

    for ck in (checkpoint, checkpoint.with_name(checkpoint.name + ".old")):
        if (ck / "state.json").exists():
            for name, module in modules.items():
                module.load_state_dict(load_file(ck / f"{name}.safetensors"))
            opt.load_state_dict(torch.load(ck / "optimizer.pt", weights_only=True))
            return json.loads((ck / "state.json").read_text())
    return None


def training_loop(name: str, model, opt, step_loss, *, steps: int, lr: float, warmup: int, checkpoint: Path,
                  modules: dict, ema=None, ema_decay: float = 0.0, grad_clip: float = 0.0, every: int = 500,
                  max_steps: int | None = None, progress: bool = True) -> dict:
    """Steps ``state['step']`` .. ``steps`` of one model, resumed from ``checkpoint``: linear warm-up of the
    learning rate, ``step_loss(step)`` (everything random in it comes from (seed, step)), gradient clipping,
    an EMA copy, a loss curve of the mean loss over every LOG_EVERY steps (and over the last, shorter stretch
    when ``steps`` is not a multiple of it) and checkpoints of ``modules`` every ``every`` steps. The losses
    since the last curve point are part of the checkpoint, so a resumed run has the uninterrupted run's curve.
    ``max_steps`` stops early (a later call resumes). Returns the state (step, loss_curve, seconds)."""
    from tqdm.auto import tqdm

    from .errors import DiffmiaError

    if every < 1:
        raise DiffmiaError(f"the checkpoint interval must be at least 1 step, got {every}")
    if max_steps is not None and max_steps < 1:
        raise DiffmiaError(f"max_steps_this_run must be at least 1, got {max_steps}")
    state = load_checkpoint(checkpoint, modules, opt) or {"step": 0, "loss_curve": [], "seconds": 0.0}
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
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        if ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - ema_decay)
        window.append(loss.item())
        if (step + 1) % LOG_EVERY == 0 or step + 1 == steps:
            state["loss_curve"].append([step + 1, float(np.mean(window))])
            bar.set_postfix(loss=f"{np.mean(window):.4f}")
            window = []
        if (step + 1) % every == 0 or step + 1 == end:
            state["step"] = step + 1
            state["seconds"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            save_checkpoint(checkpoint, modules, opt, {**state, "loss_window": window})
    bar.close()
    return state
