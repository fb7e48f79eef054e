"""Where a result came from: library versions, hardware and the git commit, recorded in every run folder
and training record."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch


def library_versions() -> dict:
    import diffusers
    import sklearn

    return {"python": sys.version.split()[0], "torch": torch.__version__,
            "diffusers": diffusers.__version__, "numpy": np.__version__,
            "scikit-learn": sklearn.__version__}


def hardware(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
