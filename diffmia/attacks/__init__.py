"""Attacks, one file per paper. ``ATTACKS`` is a plain dict: name -> class."""

from .base import Attack
from .forensics import ForensicsWhiteBox
from .loss import LossAttack
from .pia import PIA, PIAN
from .secmi import SecMINNs, SecMIStat

ATTACKS: dict[str, type[Attack]] = {cls.name: cls for cls in (
    LossAttack,
    ForensicsWhiteBox,
    SecMIStat,
    SecMINNs,
    PIA,
    PIAN,
)}

__all__ = ["ATTACKS", "Attack", "LossAttack", "ForensicsWhiteBox", "SecMIStat", "SecMINNs", "PIA", "PIAN"]
