"""Shared parts of the uncertainty metrics: the data-driven threshold kappa (paper eq. 12).

The reliable set is ``{(s, a) : U(s, a) < kappa}`` (eq. 12). The paper does not give kappa;
here it is chosen from the data: the ``percentile``-th percentile of ``U`` over the dataset's own
(s, a) pairs, so that (100 - percentile)% of real transitions would count as unreliable. A
fixed ``kappa`` overrides it.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from registry.config import ComponentConfig

if TYPE_CHECKING:
    from ipd_plugins.data.dataset import TrajectoryDataset
    from registry.protocols import UncertaintyMetric, WorldModel

__all__ = [
    "UncertaintyConfig",
    "ThresholdMetric",
    "percentile_kappa",
    "check_members",
    "dataset_uncertainty",
]


def percentile_kappa(u_data: torch.Tensor, percentile: float) -> float:
    """kappa = the ``percentile``-th percentile (0-100) of ``u_data`` (eq. 12's threshold).

    Non-finite values are an error: a NaN in U means the world model or the metric is broken.
    """
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    u = torch.as_tensor(u_data).detach().reshape(-1).float().cpu().numpy()
    if u.size == 0:
        raise ValueError("cannot calibrate kappa on an empty set of uncertainties")
    if not np.isfinite(u).all():
        bad = int((~np.isfinite(u)).sum())
        raise ValueError(f"{bad} of {u.size} uncertainty values are NaN/inf; cannot pick kappa")
    return float(np.percentile(u, percentile))


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
    """

    kind: ClassVar[str] = "uncertainty"

    # kappa = this percentile of U on dataset pairs; lower -> stricter reliable set,
    # shorter imagined rollouts; higher -> longer rollouts that may leave the data
    percentile: float = 99.0
    # fixed kappa (overrides the percentile); None -> calibrate from the data
    kappa: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.percentile <= 100.0:
            raise ValueError(f"{self.name}: percentile must be in (0, 100], got {self.percentile}")


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


def dataset_uncertainty(
    world_model: WorldModel,
    metric: UncertaintyMetric,
    dataset: TrajectoryDataset,
    batch_size: int = 8192,
    device: str = "cpu",
) -> torch.Tensor:
    """(N,) U(s, a) on every (s, a) of ``dataset``, batched (for :meth:`calibrate`).

    Uses only the protocols: ``world_model.step`` for the member Gaussians, then ``metric``.
    """
    obs = torch.as_tensor(dataset.observations, dtype=torch.float32)
    act = torch.as_tensor(dataset.actions, dtype=torch.float32)
    out = []
    with torch.inference_mode():
        for start in range(0, obs.shape[0], batch_size):
            sl = slice(start, start + batch_size)
            step = world_model.step(obs[sl].to(device), act[sl].to(device))
            out.append(metric(step.member_mean, step.member_var).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)
