"""Timestep parameters as a step index or as a fraction of the target's T (shared by every attack).

An attack's timestep parameter (PIA's ``t``, SecMI's ``t_sec``, the loss attack's ``timesteps``, Data
Forensics' ``timesteps``/``t_trunc``/``time_truncations``, ...) takes either

* an **integer** k: the 0-based index into the target's ``alphas_cumprod`` (as before), or
* a **float fraction** f in (0, 1]: the step k = round(f * T) - 1 of the target's grid of T steps.

On a DDPM with T = 1000, f = 0.2 is k = 199; on a continuous-time target
(:class:`~diffmia.targets.vpsde.VPSDETarget`, grid t_k = (k + 1) / T) it is the step at time t = 0.2.
Since a DDPM with linear betas 1e-4..0.02 and T = 1000 is the discretisation of the VP-SDE with
beta_min 0.1, beta_max 20, a fraction names the same noise level on both kinds of target, whatever
their T. ``1`` (an int) is step 1; ``1.0`` (a float) is the last step T - 1.

Constructors only store what they are given. Where T is known (``features``: the target's T;
``queries_per_sample``: the T passed, 1000 by default) the attack works through a **resolved clone**
(:func:`resolved`) whose timestep parameters are indices; the attack itself is never changed. Features
computed with fractions carry T (one column ``num_train_timesteps``), so ``scores`` resolves the same way
with no target at hand. Feature keys and score variant names use the resolved index (``pia[t=199]``):
a fraction gives exactly the features and scores of its index, and the names do not depend on how a
step was written.
"""

from __future__ import annotations

import copy

import numpy as np

from ..errors import DiffmiaError

T_KEY = "num_train_timesteps"     # the feature column that records T when fractions were resolved


def is_fraction(v) -> bool:
    """A float (a fraction of T), as opposed to an integer step index."""
    return isinstance(v, (float, np.floating))


def timestep_params(attack) -> list[str]:
    """The names of the attack's timestep parameters (those whose declared constraint is a timestep)."""
    return [k for k, p in attack._parameter_constraints.items() if getattr(p, "timestep", False)]


def _has_fraction(v) -> bool:
    return any(_has_fraction(x) for x in v) if isinstance(v, (list, tuple)) else is_fraction(v)


def has_fractions(attack) -> bool:
    return any(_has_fraction(getattr(attack, k)) for k in timestep_params(attack))


def to_index(v, T: int, where: str):
    """``v`` (an index, a fraction, None, or a sequence of them) with every fraction f turned into the step
    round(f * T) - 1 of a grid of ``T`` steps."""
    if isinstance(v, (list, tuple)):
        return type(v)(to_index(x, T, where) for x in v)
    if not is_fraction(v):
        return v
    k = int(round(float(v) * T)) - 1
    if k < 0:
        raise DiffmiaError(f"{where}={v!r} is below the first step of a grid of T={T} steps (a fraction f is the step "
                           f"round(f*T)-1; the smallest is {1 / T:g})")
    return k


def resolved(attack, T: int):
    """The attack itself when it has no fraction, else a shallow copy whose timestep parameters are step indices
    on a grid of ``T`` steps, with its constraints checked again on the indices."""
    if not has_fractions(attack):
        return attack
    clone = copy.copy(attack)
    for k in timestep_params(attack):
        setattr(clone, k, to_index(getattr(attack, k), int(T), f"{attack.name}: {k}"))
    try:
        clone.check_params()
    except DiffmiaError as e:
        raise DiffmiaError(f"{e} (after turning fractions into steps of T={T})") from None
    return clone


def features_T(features: dict, name: str) -> int:
    """T recorded in features computed with fraction timesteps."""
    if T_KEY not in features:
        raise DiffmiaError(f"{name}: fraction timesteps need the target's T, and these features do not record it "
                           f"({T_KEY}); score features that this attack's features() computed")
    col = np.asarray(features[T_KEY])
    if col.size == 0 or not (col == col.flat[0]).all():
        raise DiffmiaError(f"{name}: the features' rows come from targets with different T")
    return int(col.flat[0])
