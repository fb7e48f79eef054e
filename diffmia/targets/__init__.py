"""Targets: what the attacks query. Model access (NoisePredictor: DiffusersTarget, VPSDETarget for
continuous-time models), API access (GenerationAPI) and the target folder on disk (TargetFolder)."""

from .api import CallableAPI, GenerationAPI
from .base import NoisePredictor, resolve_device
from .diffusers import DiffusersTarget
from .diffusers_api import DiffusersAPI
from .folder import TargetFolder
from .vpsde import VPSDETarget

__all__ = ["NoisePredictor", "DiffusersTarget", "resolve_device", "GenerationAPI", "DiffusersAPI", "CallableAPI",
           "TargetFolder", "VPSDETarget"]
