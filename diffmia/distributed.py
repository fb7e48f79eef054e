"""Who computes which chunk: one process, ``--workers N`` on one machine, or ``torchrun`` over GPUs and nodes.

All three run the same code (``Engine.compute`` in ``features.py``) on a share of the chunks; they differ
only in how the processes are started and how the coordinator waits for them:

- one process: rank 0 of 1 computes everything;
- ``--workers N``: the coordinator starts N spawned processes (ranks 0..N-1, one model copy each) that
  take chunks as they free up, and waits for them; they die with it (``die_with_parent``);
- ``torchrun --nproc-per-node N [--nnodes M ...] -m diffmia attack ...``: every rank runs the whole
  command; ranks agree on the plan, compute ``plan[rank::world]``, write their own chunks atomically and
  meet at a barrier (torch.distributed: gloo on CPU, nccl on GPU); rank 0 then merges, fits and reports.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch

_STATE: dict = {"initialised_here": False}


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process: from torchrun's environment, else (0, 1)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def device_for_rank(device: str) -> str:
    """``auto``/``cuda`` under torchrun mean this rank's own GPU (cuda:LOCAL_RANK)."""
    _, world = rank_world()
    if world > 1 and torch.cuda.is_available() and device in ("auto", "cuda"):
        return f"cuda:{local_rank()}"
    return device


def init(device: str = "auto") -> tuple[int, int]:
    """Join torchrun's process group (once) when launched by torchrun with more than one rank; returns
    (rank, world). Long timeout: a barrier waits for the slowest rank's share of an audit."""
    import torch.distributed as dist

    rank, world = rank_world()
    if world > 1 and not dist.is_initialized():
        die_with_parent()          # a rank killed with its launcher frees its memory
        gpu = device_for_rank(device).startswith("cuda")
        if gpu:
            torch.cuda.set_device(local_rank())
        dist.init_process_group("nccl" if gpu else "gloo", timeout=timedelta(hours=48))
        _STATE["initialised_here"] = True
    return rank, world


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[local_rank()])
        else:
            dist.barrier()


def finish() -> None:
    """Leave the process group this module joined (so torchrun sees a clean exit)."""
    import torch.distributed as dist

    if _STATE["initialised_here"] and dist.is_initialized():
        dist.destroy_process_group()
        _STATE["initialised_here"] = False


def die_with_parent() -> None:
    """Ask Linux to kill this process when its parent dies (prctl PR_SET_PDEATHSIG = SIGKILL), so a kill -9
    of ``diffmia attack`` or of torchrun leaves no orphan holding a model in memory. No-op elsewhere."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)   # 1 = PR_SET_PDEATHSIG
    except OSError:
        return
    if os.getppid() != parent:      # the parent died before prctl took effect
        os._exit(1)


# ----------------------------------------------------------------------------- --workers N on one machine
_WORKER: dict = {}               # a --workers process's own Engine


def _worker_init(args, threads, counter, world):
    die_with_parent()
    torch.set_num_threads(threads)
    with counter.get_lock():               # ranks 0..world-1 in the order the processes start
        rank = counter.value
        counter.value += 1
    from .features import Engine

    _WORKER["engine"] = Engine(*args, rank=rank, world=world)


def _worker_chunk(stages, chunks, names):
    return _WORKER["engine"].compute(stages, chunks, 0, names)


def run_workers(workers: int, engine_args: tuple, stages, chunks, todo, bar) -> None:
    """Compute ``todo`` in ``workers`` spawned processes (ranks 0..workers-1, each one copy of the model),
    chunks handed out as processes free up; the processes die with this one."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("spawn")
    counter = ctx.Value("i", 0)
    threads = max(1, (os.cpu_count() or 1) // workers)
    ex = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                             initargs=(engine_args, threads, counter, workers))
    try:
        futs = [ex.submit(_worker_chunk, stages, _chunk_only(chunks, i), names) for i, names in todo]
        for f in futs:
            bar.update(f.result())
    except BaseException:
        ex.shutdown(wait=False, cancel_futures=True)
        raise
    ex.shutdown()


def _chunk_only(chunks, i: int):
    """A one-chunk view (only that chunk's arrays travel to the worker process)."""
    import numpy as np

    from .features import Chunks

    images, ids, cond = chunks.part(i)
    c = Chunks(images, ids, None if cond is None else np.array(cond, dtype=object), chunks.size)
    c.starts, c.offset = [chunks.starts[i]], chunks.starts[i]
    return c
