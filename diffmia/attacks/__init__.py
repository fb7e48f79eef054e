"""Attacks, one file per registry entry, named after it (``loss.py`` holds ``loss``). ``ATTACKS`` is a plain
dict: name -> class. Files starting with ``_`` hold what two attacks of one paper share."""

from .base import Attack
from .blind import BlindBaseline
from .clid import CLiD
from .forensics import ForensicsWhiteBox
from .forensics_graybox import ForensicsGrayBox
from .fusion import Fusion
from .ganleaks import GANLeaks
from .loss import LossAttack
from .monte_carlo_set import MonteCarloSet
from .noise_aggregation import NoiseAggregation
from .observers import Observers
from .pia import PIA
from .pian import PIAN
from .refcal import RefCal
from .secmi import SecMIStat
from .secmi_nns import SecMINNs
from .sima import SimA

ATTACKS: dict[str, type[Attack]] = {cls.name: cls for cls in (
    LossAttack,
    ForensicsWhiteBox,
    SecMIStat,
    SecMINNs,
    PIA,
    PIAN,
    SimA,
    NoiseAggregation,
    Fusion,
    RefCal,
    ForensicsGrayBox,
    GANLeaks,
    MonteCarloSet,
    Observers,
    CLiD,
    BlindBaseline,
)}

__all__ = ["ATTACKS", "Attack", "LossAttack", "ForensicsWhiteBox", "SecMIStat", "SecMINNs", "PIA", "PIAN", "SimA",
           "NoiseAggregation", "Fusion", "RefCal", "ForensicsGrayBox", "GANLeaks", "MonteCarloSet", "Observers", "CLiD", "BlindBaseline"]
