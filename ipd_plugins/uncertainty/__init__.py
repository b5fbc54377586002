"""Uncertainty metrics U(s, a) over the world model's members (paper sec. 3.2, eq. 8-12).

``gjs`` is the paper's metric; ``disagreement``, ``aleatoric`` and ``none`` are ablations.
"""

from ipd_plugins.uncertainty.base import ThresholdMetric, UncertaintyConfig
from ipd_plugins.uncertainty.reliable import calibrate_kappa, percentile_kappa

__all__ = [
    "ThresholdMetric",
    "UncertaintyConfig",
    "calibrate_kappa",
    "percentile_kappa",
]
