"""Attacks, one file per paper. ``ATTACKS`` is a plain dict: name -> class."""

from .base import Attack
from .loss import LossAttack

ATTACKS: dict[str, type[Attack]] = {cls.name: cls for cls in (
    LossAttack,
)}

__all__ = ["ATTACKS", "Attack", "LossAttack"]
