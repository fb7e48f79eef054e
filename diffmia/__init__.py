"""diffmia: membership-inference auditing for diffusion models.

Pipeline (one module each): data -> targets -> attacks (per-sample scores, higher = member) ->
scores (cached) -> metrics (calibration/test protocol) -> report.
"""

__version__ = "0.1.0"
