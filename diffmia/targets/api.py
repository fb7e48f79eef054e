"""Generation-API targets: what gray-box and black-box attacks may touch (SPEC 3.3, 3.4, 3.7).

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

Images are float tensors N x C x H x W in [-1, 1] both ways. Neither call exposes a noise prediction.

Implementations:

* :class:`DiffusersAPI`: a local diffusers pixel-space pipeline folder (``unet/`` + ``scheduler/``, as
  ``diffmia train`` writes). The network is held in a private attribute; nothing public predicts noise.
  It counts its calls (``generate_calls``, ``transform_calls``), the images it produced
  (``images_generated``, ``images_transformed``) and the network evaluations they cost
  (``model_evaluations``).
* :class:`CallableAPI`: wraps two user functions, so a remote service is a few lines.

:func:`api_view` is what API attacks call first: it refuses objects that expose a noise predictor and
returns a view holding only the protocol's methods, so attack code cannot reach anything else.
"""

from __future__ import annotations

import hashlib
import json
from typing import Callable, Protocol, runtime_checkable

import numpy as np
import torch

from .. import ops
from ..errors import DiffmiaError, TargetError


@runtime_checkable
class GenerationAPI(Protocol):
    """A diffusion model as an image service (see the module docstring for the exact semantics).

    Optional extras that attacks use when present: ``identity() -> str`` (a stable fingerprint of the
    model and its sampling settings, used to key caches of generated sets) and ``num_train_timesteps``
    (T, public information such as "strength = t_start / T"; 1000 is assumed when absent).
    """

    def generate(self, n: int, seed: int = 0) -> torch.Tensor: ...

    def transform(self, images: torch.Tensor, t_start: int, num_steps: int, seed=0,
                  return_intermediates: bool = True) -> tuple[torch.Tensor, dict[int, torch.Tensor]]: ...


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
                           "diffmia.targets.api.DiffusersAPI.from_pretrained(folder)")
    missing = [m for m in needs if not callable(getattr(obj, m, None))]
    if missing:
        raise DiffmiaError(f"{attack}: the API object {type(obj).__name__} lacks {missing}; "
                           "see diffmia.targets.api.GenerationAPI")
    v = _APIView()
    v.generate = getattr(obj, "generate", None)
    v.transform = getattr(obj, "transform", None)
    ident = getattr(obj, "identity", None)
    v.identity = ident if callable(ident) else (lambda: None)
    v.num_train_timesteps = int(getattr(obj, "num_train_timesteps", 1000))
    return v


# ------------------------------------------------------------------------------------------- diffusers
class DiffusersAPI:
    """A local diffusers pixel-space model served as a :class:`GenerationAPI`.

    Parameters: ``unet`` (a ``UNet2DModel``), ``alphas_cumprod`` (the scheduler's), ``prediction_type``,
    ``device`` ('cpu' | 'cuda' | 'auto'), ``batch_size`` (images per network call),
    ``generate_sampler`` ('ddpm': ancestral, default; 'ddim': deterministic) and ``generate_steps``
    (reverse steps for ``generate``, spread evenly over 0..T-1; default 100, as the sample grids of
    ``diffmia train``), ``transform_sampler`` ('ddim', deterministic, default; or 'ddpm'),
    ``clip_sample`` (clip each x0 estimate to [-1, 1] inside the reverse process, as the diffusers
    schedulers do with ``clip_sample=True``; :meth:`from_pretrained` reads it from the scheduler),
    ``quantize`` (round outputs to 256 levels, like a service returning 8-bit images; default False).

    Sampling (both calls), at steps tau_0 > ... > tau_{K-1} = 0: x0_hat = (x - sqrt(1-abar) e)/sqrt(abar)
    (clipped if ``clip_sample``); DDIM: x_next = sqrt(abar_next) x0_hat + sqrt(1-abar_next) e; DDPM:
    a draw from the posterior q(x_next | x, x0_hat) between the two steps (the strided DDPM step of
    diffusers); the output is x0_hat at tau = 0. Every random draw comes from ``ops.sample_noise`` keyed
    by the image's seed, so image i of ``generate(n, seed)`` equals image i of ``generate(m, seed)``.
    The initial noise of ``transform`` for seed s at t_start is the noise the loss attack uses for sample
    seed s at t = t_start (``ops.sample_noise(shape, [s], salt=t_start)``).
    """

    SAMPLERS = ("ddpm", "ddim")

    def __init__(self, unet, alphas_cumprod, prediction_type: str = "epsilon", device: str = "auto",
                 batch_size: int = 256, generate_sampler: str = "ddpm", generate_steps: int = 100,
                 transform_sampler: str = "ddim", clip_sample: bool = True, quantize: bool = False):
        from .diffusers import DiffusersTarget

        for k, v in (("generate_sampler", generate_sampler), ("transform_sampler", transform_sampler)):
            if v not in self.SAMPLERS:
                raise TargetError(f"{k} must be one of {self.SAMPLERS}, got {v!r}")
        self.__model = DiffusersTarget(unet, alphas_cumprod, prediction_type, device, batch_size)
        self.num_train_timesteps = self.__model.num_train_timesteps
        if not isinstance(generate_steps, (int, np.integer)) or not 1 <= generate_steps <= self.num_train_timesteps:
            raise TargetError(f"generate_steps must be 1..{self.num_train_timesteps}, got {generate_steps!r}")
        self.image_shape = self.__model.sample_shape
        self.generate_sampler = generate_sampler
        self.generate_steps = int(generate_steps)
        self.transform_sampler = transform_sampler
        self.clip_sample = bool(clip_sample)
        self.quantize = bool(quantize)
        self.source = None
        self.generate_calls = 0
        self.transform_calls = 0
        self.images_generated = 0
        self.images_transformed = 0
        self.__identity = None

    @classmethod
    def from_pretrained(cls, path, weights: str = "ema", device: str = "auto", batch_size: int = 256,
                        **kwargs) -> "DiffusersAPI":
        """Serve a local target folder (``unet/`` or ``unet_raw/`` + ``scheduler/``); ``kwargs`` as in the
        constructor (``clip_sample`` defaults to the scheduler's setting)."""
        from .diffusers import DiffusersTarget

        t = DiffusersTarget.from_pretrained(path, weights=weights, device=device, batch_size=batch_size)
        if "clip_sample" not in kwargs:
            try:
                from pathlib import Path

                cfg = json.loads((Path(path) / "scheduler" / "scheduler_config.json").read_text())
                kwargs["clip_sample"] = bool(cfg.get("clip_sample", True))
            except (OSError, ValueError):
                pass
        api = cls(t.unet, t.alphas_cumprod, t.prediction_type, t.device, batch_size, **kwargs)
        api.source = str(path)
        return api

    # -- bookkeeping
    @property
    def model_evaluations(self) -> int:
        """Network evaluations (one per image per reverse step) spent by all calls so far."""
        return self.__model.queries

    @property
    def api_calls(self) -> int:
        return self.generate_calls + self.transform_calls

    @property
    def device(self) -> torch.device:
        return self.__model.device

    def identity(self) -> str:
        """sha256 of the weights, the schedule and the sampling settings (keys caches of generated sets)."""
        if self.__identity is None:
            h = hashlib.sha256()
            for name, v in sorted(self.__model.unet.state_dict().items()):
                h.update(name.encode())
                h.update(v.detach().cpu().contiguous().numpy().tobytes())
            h.update(self.__model.alphas_cumprod.numpy().tobytes())
            h.update(json.dumps([self.__model.prediction_type, self.generate_sampler, self.generate_steps,
                                 self.transform_sampler, self.clip_sample, self.quantize]).encode())
            self.__identity = "diffusers-api:" + h.hexdigest()
        return self.__identity

    def __repr__(self) -> str:
        return (f"DiffusersAPI(source={self.source!r}, generate={self.generate_sampler}x{self.generate_steps}, "
                f"transform={self.transform_sampler})")

    # -- sampling
    def _out(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().clamp(-1, 1)
        if self.quantize:
            x = torch.round((x + 1) * 127.5) / 127.5 - 1
        return x.cpu()

    @torch.inference_mode()
    def _reverse(self, x, steps, seeds, sampler: str, salt0: int, keep: bool):
        """Run the reverse process from x at steps[0]; returns (final, {step: x0_hat})."""
        m = self.__model
        abar = m.alphas_cumprod
        inter = {}
        x0_hat = None
        for k, t in enumerate(steps):
            e = m.eps(x, t)
            x0_hat = ops.predict_x0(abar, x, t, e)
            if self.clip_sample:
                x0_hat = x0_hat.clamp(-1, 1)
            if keep:
                inter[int(t)] = self._out(x0_hat)
            if k + 1 == len(steps):
                break
            s = steps[k + 1]
            a_t, a_s = float(abar[t]), float(abar[s])
            if sampler == "ddim":
                x = a_s ** 0.5 * x0_hat + (1 - a_s) ** 0.5 * e
            else:  # posterior q(x_s | x_t, x0_hat) of the strided chain (DDPM eq. 6-7 with abar_t / abar_s)
                beta = 1 - a_t / a_s
                mean = (a_s ** 0.5 * beta / (1 - a_t)) * x0_hat + ((1 - beta) ** 0.5 * (1 - a_s) / (1 - a_t)) * x
                var = beta * (1 - a_s) / (1 - a_t)
                z = ops.sample_noise(x.shape[1:], seeds, salt=salt0 + k + 1, device=x.device)
                x = mean + var ** 0.5 * z
        return self._out(x0_hat), inter

    def generate(self, n: int, seed: int = 0) -> torch.Tensor:
        """``n`` samples (N x C x H x W in [-1, 1]); image i depends only on (seed, i)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise DiffmiaError(f"generate: n must be a positive integer, got {n!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise DiffmiaError(f"generate: seed must be an integer, got {seed!r}")
        T = self.num_train_timesteps
        steps = tuple(int(round(t)) for t in np.linspace(T - 1, 0, self.generate_steps)) \
            if self.generate_steps > 1 else (T - 1,)
        seeds = np.arange(int(n), dtype=np.int64)
        salt0 = 50_000_000 + int(seed) * 10_007
        self.generate_calls += 1
        out = []
        bs = max(1, self.__model.batch_size)
        for i in range(0, n, bs):
            sb = seeds[i:i + bs]
            x = ops.sample_noise(self.image_shape, sb, salt=salt0, device=self.device)
            final, _ = self._reverse(x, steps, sb, self.generate_sampler, salt0, keep=False)
            out.append(final)
        self.images_generated += int(n)
        return torch.cat(out)

    def transform(self, images, t_start: int, num_steps: int, seed=0, return_intermediates: bool = True):
        """Image-to-image from ``t_start`` in ``num_steps`` steps (module docstring). Returns
        ``(final, intermediates)``; ``intermediates`` is ``{}`` when ``return_intermediates`` is False."""
        x0 = _as_images(images, "transform", shape=self.image_shape)
        steps = transform_timesteps(t_start, num_steps, self.num_train_timesteps)
        seeds = per_image_seeds(seed, len(x0))
        noise = ops.sample_noise(x0.shape[1:], seeds, salt=steps[0], device=self.device)
        x = ops.q_sample(self.__model.alphas_cumprod, x0.to(self.device), steps[0], noise)
        self.transform_calls += 1
        final, inter = self._reverse(x, steps, seeds, self.transform_sampler,
                                     10_000_000 + steps[0] * 1_000, keep=return_intermediates)
        self.images_transformed += len(x0)
        return final, inter


# ------------------------------------------------------------------------------------------- callables
class CallableAPI:
    """A :class:`GenerationAPI` from two functions, e.g. thin clients of a remote service.

    ``generate_fn(n, seed) -> images`` and ``transform_fn(images, t_start, num_steps, seed) ->
    (final, intermediates)`` (or just ``final``; then intermediates are ``{}``) must follow the protocol
    of the module docstring: images N x C x H x W in [-1, 1] (tensors or arrays), ``seed`` an int or one
    int per image, intermediates ``{step: images}`` at the reverse-process steps. Either function may be
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

    def generate(self, n: int, seed: int = 0) -> torch.Tensor:
        if self._generate_fn is None:
            raise DiffmiaError("this CallableAPI has no generate_fn")
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise DiffmiaError(f"generate: n must be a positive integer, got {n!r}")
        self.generate_calls += 1
        out = _as_images(self._generate_fn(int(n), seed), "generate_fn output", n=int(n))
        self.images_generated += int(n)
        return out

    def transform(self, images, t_start: int, num_steps: int, seed=0, return_intermediates: bool = True):
        if self._transform_fn is None:
            raise DiffmiaError("this CallableAPI has no transform_fn")
        x0 = _as_images(images, "transform")
        transform_timesteps(t_start, num_steps, self.num_train_timesteps)      # validates the arguments
        self.transform_calls += 1
        res = self._transform_fn(x0, int(t_start), int(num_steps), seed)
        final, inter = res if isinstance(res, tuple) else (res, {})
        final = _as_images(final, "transform_fn output", n=len(x0), shape=x0.shape[1:])
        if not isinstance(inter, dict):
            raise DiffmiaError(f"transform_fn must return (final, {{step: images}}), got {type(inter).__name__}")
        inter = {int(k): _as_images(v, f"transform_fn intermediate at step {k}", n=len(x0), shape=x0.shape[1:])
                 for k, v in inter.items()} if return_intermediates else {}
        self.images_transformed += len(x0)
        return final, inter
