"""Targets: what the attacks query. Model access (NoisePredictor) and API access (GenerationAPI)."""

from .api import CallableAPI, DiffusersAPI, GenerationAPI
from .base import NoisePredictor, resolve_device
from .diffusers import DiffusersTarget

__all__ = ["NoisePredictor", "DiffusersTarget", "resolve_device", "GenerationAPI", "DiffusersAPI", "CallableAPI"]
