"""Attacks, one file per paper. ``ATTACKS`` is a plain dict: name -> class."""

from .base import Attack
from .blind import BlindBaseline
from .forensics import ForensicsWhiteBox
from .forensics_api import ForensicsGrayBox
from .loss import LossAttack
from .observers import Observers
from .pia import PIA, PIAN
from .secmi import SecMINNs, SecMIStat
from .synthetic import GANLeaks, MonteCarloSet

ATTACKS: dict[str, type[Attack]] = {cls.name: cls for cls in (
    LossAttack,
    ForensicsWhiteBox,
    SecMIStat,
    SecMINNs,
    PIA,
    PIAN,
    ForensicsGrayBox,
    GANLeaks,
    MonteCarloSet,
    Observers,
    BlindBaseline,
)}

__all__ = ["ATTACKS", "Attack", "LossAttack", "ForensicsWhiteBox", "SecMIStat", "SecMINNs", "PIA", "PIAN",
           "ForensicsGrayBox", "GANLeaks", "MonteCarloSet", "Observers", "BlindBaseline"]
