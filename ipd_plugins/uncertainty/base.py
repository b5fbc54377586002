"""Shared parts of the uncertainty metrics: the config fields that choose kappa (eq. 12).

How kappa is chosen and used lives in :mod:`ipd_plugins.uncertainty.reliable`.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from ipd_plugins.uncertainty.reliable import DEFAULT_CALIBRATION_PAIRS, percentile_kappa
from registry.config import ComponentConfig, moved

__all__ = ["UncertaintyConfig", "ThresholdMetric", "check_members"]


def check_members(member_mean: torch.Tensor, member_var: torch.Tensor) -> None:
    """Fail with a sentence unless both are (E,B,O) with the same shape."""
    if member_mean.dim() != 3 or member_mean.shape != member_var.shape:
        raise ValueError(
            "uncertainty metrics take member_mean and member_var of the same shape (E,B,O); "
            f"got {tuple(member_mean.shape)} and {tuple(member_var.shape)}"
        )


@dataclasses.dataclass
class UncertaintyConfig(ComponentConfig):
    """Fields every uncertainty metric shares: how kappa (eq. 12) is chosen.

    Args:
        percentile: kappa is this percentile of U over the dataset's own (s, a) pairs.
        kappa: a fixed kappa; overrides ``percentile`` when set.
        calibration_pairs: dataset (s, a) pairs U is measured on to choose kappa (before
            2026-12-03 ``augment.calibration_pairs``, still accepted there).
    """

    kind: ClassVar[str] = "uncertainty"

    # kappa = this percentile of U on dataset pairs; lower -> stricter reliable set,
    # shorter imagined rollouts; higher -> longer rollouts that may leave the data
    percentile: float = 99.0
    # fixed kappa (overrides the percentile); None -> calibrate from the data
    kappa: float | None = None
    # dataset (s, a) pairs U is measured on to choose kappa; more -> a steadier percentile
    calibration_pairs: int = moved(DEFAULT_CALIBRATION_PAIRS, hashed_with="augment")

    def validate(self) -> None:
        if not 0.0 < self.percentile <= 100.0:
            raise ValueError(
                f"uncertainty '{self.name}': percentile must be in (0, 100], got {self.percentile}"
            )
        if self.calibration_pairs < 1:
            raise ValueError(
                f"uncertainty '{self.name}': calibration_pairs must be >= 1, "
                f"got {self.calibration_pairs}"
            )


class ThresholdMetric:
    """Base of the metric components: :meth:`calibrate` from the config's percentile/kappa."""

    def __init__(self, config: UncertaintyConfig):
        self.config = config

    def __call__(self, member_mean: torch.Tensor, member_var: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def calibrate(self, u_data: torch.Tensor) -> float:
        """kappa: the config's override, else the percentile of ``u_data`` (U on dataset pairs)."""
        if self.config.kappa is not None:
            return float(self.config.kappa)
        return percentile_kappa(u_data, self.config.percentile)
