"""Generation-API targets: what gray-box and black-box attacks may touch.

An API attack sees a diffusion model only as an image service with two calls (:class:`GenerationAPI`):

* ``generate(n, seed=0) -> images``: ``n`` unconditional samples;
* ``transform(images, t_start, num_steps, seed=0, return_intermediates=True) -> (final, intermediates)``:
  image-to-image. Each query image x0 is noised to step ``t_start`` (0-based, as diffusers indexes
  ``alphas_cumprod``; ``t_start / T`` is the "strength" of an img2img pipeline) with seeded noise,
  x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, and the reverse process runs from there in ``num_steps``
  denoising steps at the timesteps :func:`transform_timesteps` gives: t_start = tau_0 > tau_1 > ... >
  tau_{K-1} = 0, spread evenly. ``intermediates`` maps **every visited step** tau_k (int) to the
  model's estimate of the clean image at that step (x0_hat, the "preview" most generation UIs show),
  decoded to pixel space; ``final`` is the output image, which is the estimate at the last step
  (tau = 0). ``seed`` is an int (image i then uses seed + i) or a sequence of N ints, one per image:
  image i's noise depends on its own seed only, so results do not depend on batching.
* text-to-image services take ``prompt`` in both calls: one string, or one per image (None: unconditional,
  or the empty prompt).

Images are float tensors N x C x H x W in [-1, 1] both ways. Neither call exposes a noise prediction.

Implementations:

* :class:`~diffmia.targets.diffusers_api.DiffusersAPI` (``diffusers_api.py``): a local diffusers
  pixel-space target folder, as ``diffmia train`` writes it. The network is held in a private
  attribute; nothing public predicts noise. It counts its calls (``generate_calls``, ``transform_calls``), the images it produced
  (``images_generated``, ``images_transformed``) and the network evaluations they cost
  (``model_evaluations``).
* :class:`CallableAPI`: wraps two user functions, so a remote service is a few lines.

:func:`api_view` is what API attacks call first: it refuses objects that expose a noise predictor and
returns a view holding only the protocol's methods, so attack code cannot reach anything else.
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import numpy as np
import torch

from ..errors import DiffmiaError


@runtime_checkable
class GenerationAPI(Protocol):
    """A diffusion model as an image service (see the module docstring for the exact semantics).

    Optional extras that attacks use when present: ``identity() -> str`` (a stable fingerprint of the
    model and its sampling settings, used to key caches of generated sets) and ``num_train_timesteps``
    (T, public information such as "strength = t_start / T"; 1000 is assumed when absent).
    """

    def generate(self, n: int, seed: int = 0, prompt=None) -> torch.Tensor: ...

    def transform(self, images: torch.Tensor, t_start: int, num_steps: int, seed=0,
                  return_intermediates: bool = True, prompt=None) -> tuple[torch.Tensor, dict[int, torch.Tensor]]: ...


def transform_timesteps(t_start: int, num_steps: int, num_train_timesteps: int = 1000) -> tuple[int, ...]:
    """The reverse-process steps of an image-to-image call: ``num_steps`` distinct integers spread evenly
    from ``t_start`` down to 0 (``round(linspace(t_start, 0, num_steps))``), in visiting order."""
    if isinstance(t_start, bool) or not isinstance(t_start, (int, np.integer)):
        raise DiffmiaError(f"t_start must be an integer timestep, got {t_start!r}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
        raise DiffmiaError(f"num_steps must be an integer, got {num_steps!r}")
    t_start, num_steps = int(t_start), int(num_steps)
    if not 0 <= t_start < num_train_timesteps:
        raise DiffmiaError(f"t_start={t_start} outside 0..{num_train_timesteps - 1}")
    if not 1 <= num_steps <= t_start + 1:
        raise DiffmiaError(f"num_steps={num_steps} must be between 1 and t_start + 1 = {t_start + 1} "
                           "(each step visits a distinct timestep)")
    if num_steps == 1:
        return (t_start,)
    return tuple(int(round(t)) for t in np.linspace(t_start, 0, num_steps))


def per_image_seeds(seed, n: int) -> np.ndarray:
    """An int seed -> seed + arange(n); a sequence must hold n integers."""
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return int(seed) + np.arange(n, dtype=np.int64)
    s = np.asarray(seed)
    if s.ndim != 1 or len(s) != n or not np.issubdtype(s.dtype, np.integer):
        raise DiffmiaError(f"seed must be an int or {n} integers (one per image), got {seed!r:.80}")
    return s.astype(np.int64)


def _as_images(x, name: str, n: int | None = None, shape=None) -> torch.Tensor:
    if not torch.is_tensor(x):
        try:
            x = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as e:
            raise DiffmiaError(f"{name}: expected images N x C x H x W, got {type(x).__name__} ({e})") from None
    if x.ndim != 4:
        raise DiffmiaError(f"{name}: images must be N x C x H x W, got shape {tuple(x.shape)}")
    if n is not None and x.shape[0] != n:
        raise DiffmiaError(f"{name}: expected {n} images, got {x.shape[0]}")
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise DiffmiaError(f"{name}: images are {tuple(x.shape[1:])} (C x H x W) but the model works on "
                           f"{tuple(shape)}; resize or pad the images first")
    x = x.detach().float().cpu()
    if not torch.isfinite(x).all():
        raise DiffmiaError(f"{name}: images contain NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1.01 or hi > 1.01:
        raise DiffmiaError(f"{name}: images must lie in [-1, 1], got values in [{lo:.3g}, {hi:.3g}] "
                           "(convert [0, 1] images with 2x - 1, uint8 images with x / 127.5 - 1)")
    return x.clamp(-1, 1)


def has_noise_predictor(obj) -> bool:
    """True when ``obj`` publicly exposes a noise predictor: a callable ``eps`` or a public attribute
    that is a ``torch.nn.Module`` (a network) or has a callable ``eps``. API attacks refuse such objects."""
    if callable(getattr(type(obj), "eps", None)) or callable(getattr(obj, "eps", None)):
        return True
    for name in dir(obj):
        if name.startswith("_"):
            continue
        try:
            v = getattr(obj, name)
        except Exception:        # properties may raise; they expose nothing then
            continue
        if isinstance(v, torch.nn.Module) or callable(getattr(v, "eps", None)):
            return True
    return False


class _APIView:
    """Only the protocol's methods of an API (what API attacks hold)."""

    __slots__ = ("generate", "transform", "identity", "num_train_timesteps")

    def __repr__(self) -> str:
        return f"APIView(identity={self.identity()!r})"


def api_view(obj, attack: str, needs: tuple[str, ...] = ("generate", "transform")) -> _APIView:
    """Check that ``obj`` is a generation API with the methods an attack ``needs`` and no public noise
    predictor; return a view exposing only ``generate``, ``transform``, ``identity()`` (None when the
    API has no fingerprint) and ``num_train_timesteps`` (default 1000)."""
    if obj is None:
        raise DiffmiaError(f"{attack}: needs a generation API (e.g. DiffusersAPI.from_pretrained(folder)), got None")
    if has_noise_predictor(obj):
        raise DiffmiaError(f"{attack}: is an API attack and takes a GenerationAPI, but {type(obj).__name__} "
                           "exposes a noise predictor; wrap the model folder with "
                           "diffmia.targets.DiffusersAPI.from_pretrained(folder)")
    missing = [m for m in needs if not callable(getattr(obj, m, None))]
    if missing:
        raise DiffmiaError(f"{attack}: the API object {type(obj).__name__} lacks {missing}; "
                           "see diffmia.targets.GenerationAPI")
    v = _APIView()
    v.generate = getattr(obj, "generate", None)
    v.transform = getattr(obj, "transform", None)
    ident = getattr(obj, "identity", None)
    v.identity = ident if callable(ident) else (lambda: None)
    v.num_train_timesteps = int(getattr(obj, "num_train_timesteps", 1000))
    return v


# ------------------------------------------------------------------------------------------- callables
class CallableAPI:
    """A :class:`GenerationAPI` from two functions, e.g. thin clients of a remote service.

    ``generate_fn(n, seed) -> images`` and ``transform_fn(images, t_start, num_steps, seed) ->
    (final, intermediates)`` (or just ``final``; then intermediates are ``{}``) must follow the protocol
    of the module docstring: images N x C x H x W in [-1, 1] (tensors or arrays), ``seed`` an int or one
    int per image, intermediates ``{step: images}`` at the reverse-process steps; a ``prompt`` keyword is
    passed on only when an attack gives one (text-to-image services). Either function may be
    None if the attacks in use do not need it. ``identity`` (a string naming the model and its settings)
    lets generated sets be cached on disk; without it they are not. Outputs are checked (shape, count,
    range) and calls are counted like :class:`DiffusersAPI` does.
    """

    def __init__(self, generate_fn: Callable | None = None, transform_fn: Callable | None = None,
                 identity: str | None = None, num_train_timesteps: int = 1000):
        if generate_fn is None and transform_fn is None:
            raise DiffmiaError("CallableAPI needs generate_fn, transform_fn or both")
        for k, f in (("generate_fn", generate_fn), ("transform_fn", transform_fn)):
            if f is not None and not callable(f):
                raise DiffmiaError(f"CallableAPI: {k} must be callable, got {type(f).__name__}")
        self._generate_fn = generate_fn
        self._transform_fn = transform_fn
        self._identity = identity
        self.num_train_timesteps = int(num_train_timesteps)
        self.generate_calls = 0
        self.transform_calls = 0
        self.images_generated = 0
        self.images_transformed = 0

    def identity(self) -> str | None:
        return None if self._identity is None else f"callable-api:{self._identity}"

    @property
    def api_calls(self) -> int:
        return self.generate_calls + self.transform_calls

    def generate(self, n: int, seed: int = 0, prompt=None) -> torch.Tensor:
        if self._generate_fn is None:
            raise DiffmiaError("this CallableAPI has no generate_fn")
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise DiffmiaError(f"generate: n must be a positive integer, got {n!r}")
        self.generate_calls += 1
        kw = {} if prompt is None else {"prompt": prompt}
        out = _as_images(self._generate_fn(int(n), seed, **kw), "generate_fn output", n=int(n))
        self.images_generated += int(n)
        return out

    def transform(self, images, t_start: int, num_steps: int, seed=0, return_intermediates: bool = True,
                  prompt=None):
        if self._transform_fn is None:
            raise DiffmiaError("this CallableAPI has no transform_fn")
        x0 = _as_images(images, "transform")
        transform_timesteps(t_start, num_steps, self.num_train_timesteps)      # validates the arguments
        self.transform_calls += 1
        res = self._transform_fn(x0, int(t_start), int(num_steps), seed, **({} if prompt is None else {"prompt": prompt}))
        final, inter = res if isinstance(res, tuple) else (res, {})
        final = _as_images(final, "transform_fn output", n=len(x0), shape=x0.shape[1:])
        if not isinstance(inter, dict):
            raise DiffmiaError(f"transform_fn must return (final, {{step: images}}), got {type(inter).__name__}")
        inter = {int(k): _as_images(v, f"transform_fn intermediate at step {k}", n=len(x0), shape=x0.shape[1:])
                 for k, v in inter.items()} if return_intermediates else {}
        self.images_transformed += len(x0)
        return final, inter
