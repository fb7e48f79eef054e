"""The query planner: in a run, an identical model call is made once.

Attacks are computed chunk by chunk, every attack of the run on the same chunk in turn, through one
:class:`SharedQueries` proxy of the target. The proxy keys each row of a query by what determines its
answer -- the bytes of x_t, the timestep and the condition -- and forwards to the model only the rows it
has not answered yet in this chunk. So SecMI and SecMI-NNs share their DDIM inversion trajectory, PIA,
PIAN and SimA share eps_theta(x0, 0), loss, Data Forensics and CLiD share eps at the same t and noise
stream (ops.py's noise table says where streams coincide), and refcal shares its base attack's queries
on the target: a run costs its *distinct* queries.

``queries`` counts what the attacks asked for (the declared cost, one per row, or two with classifier-free
guidance); ``model_calls`` what reached the model. A miss with the same rows as the request forwards the
request unchanged, so an attack alone gives bit-identical results with or without the planner.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def _row_keys(x: torch.Tensor, extra: list[bytes]) -> list[bytes]:
    flat = x.detach().to("cpu", torch.float32).contiguous().view(x.shape[0], -1).numpy()
    return [hashlib.blake2b(flat[i].tobytes() + extra[i], digest_size=20).digest() for i in range(len(flat))]


class SharedQueries:
    """A :class:`~diffmia.targets.base.NoisePredictor` proxy that answers repeated rows from memory.

    ``max_bytes`` bounds the memory of the answers kept (the planner clears it after every chunk)."""

    def __init__(self, target, max_bytes: int = 2 << 30):
        self._target = target
        self._memo: dict[bytes, torch.Tensor] = {}
        self._latents: dict[bytes, torch.Tensor] = {}
        self._bytes = 0
        self.max_bytes = max_bytes
        self.queries = 0                  # rows asked for (x queries per row of the target)
        self._per_row = None              # the target's queries per row (2 with guidance), seen on a miss

    def __getattr__(self, name):          # everything else is the target's own
        return getattr(self._target, name)

    @property
    def model_calls(self) -> int:
        return self._target.queries

    def clear(self) -> None:
        self._memo.clear()
        self._latents.clear()
        self._bytes = 0

    def _keep(self, store: dict, key: bytes, row: torch.Tensor) -> None:
        if self._bytes > self.max_bytes:
            self.clear()
        store[key] = row
        self._bytes += row.numel() * row.element_size()

    def eps(self, x_t: torch.Tensor, t, cond=None) -> torch.Tensor:
        n = x_t.shape[0]
        ts = np.full(n, int(t), np.int64) if not torch.is_tensor(t) or t.ndim == 0 else t.cpu().numpy().astype(np.int64)
        extra = [ts[i].tobytes() + (b"" if cond is None else repr(_item(cond, i)).encode()) for i in range(n)]
        keys = _row_keys(x_t, extra)
        todo = list(dict.fromkeys(k for k in keys if k not in self._memo))
        if todo:
            first = {}
            for i, k in enumerate(keys):
                first.setdefault(k, i)
            rows = [first[k] for k in todo]
            q0 = self._target.queries
            if len(rows) == n:            # nothing known: the request as it came (bit-identical results)
                out = self._target.eps(x_t, t, cond)
            else:
                idx = torch.as_tensor(rows)
                sub_t = t if not torch.is_tensor(t) or t.ndim == 0 else t[idx.to(t.device)]
                sub_c = None if cond is None else _take(cond, rows)
                out = self._target.eps(x_t[idx.to(x_t.device)], sub_t, sub_c)
            self._per_row = (self._target.queries - q0) / len(rows)
            bad = ~torch.isfinite(out.flatten(1)).all(1)
            if bool(bad.any()):
                j = int(torch.nonzero(bad)[0])
                raise NonFiniteAnswer(int(ts[rows[j]]), rows[j], n, float(out[j].flatten()[~torch.isfinite(out[j].flatten())][0]))
            for j, k in enumerate(todo):
                self._keep(self._memo, k, out[j])
            if len(rows) == n and len(todo) == n:
                self.queries += self._target.queries - q0
                return out
        self.queries += int(round(n * (self._per_row or 1)))
        return torch.stack([self._memo[k] for k in keys])

    def to_model_space(self, images: torch.Tensor, seeds=None) -> torch.Tensor:
        """Pixel targets: the images themselves; latent targets: one VAE encoding per distinct row."""
        if not hasattr(self._target, "vae"):
            return self._target.to_model_space(images, seeds)
        n = images.shape[0]
        keys = _row_keys(images, [b"" if seeds is None else repr(int(seeds[i])).encode() for i in range(n)])
        todo = [i for i, k in enumerate(keys) if k not in self._latents]
        if todo:
            if len(todo) == n:
                out = self._target.to_model_space(images, seeds)
            else:
                out = self._target.to_model_space(images[torch.as_tensor(todo)],
                                                  None if seeds is None else np.asarray(seeds)[todo])
            for j, i in enumerate(todo):
                self._keep(self._latents, keys[i], out[j])
            if len(todo) == n:
                return out
        return torch.stack([self._latents[k] for k in keys])


class NonFiniteAnswer(Exception):
    """The model answered NaN or inf: at timestep ``t`` for row ``row`` of a query of ``n`` rows."""

    def __init__(self, t: int, row: int, n: int, value: float):
        super().__init__(f"non-finite answer {value} at timestep {t}, row {row} of {n}")
        self.t, self.row, self.n, self.value = t, row, n, value


def _item(cond, i):
    v = cond[i]
    return v.item() if torch.is_tensor(v) or isinstance(v, np.ndarray) else v


def _take(cond, rows):
    if torch.is_tensor(cond):
        return cond[torch.as_tensor(rows, device=cond.device)]
    if isinstance(cond, np.ndarray):
        return cond[rows]
    return [cond[i] for i in rows]
