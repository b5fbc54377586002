"""The reliable set {(s, a) : U(s, a) < kappa} (paper eq. 12): kappa's one home.

The paper does not give kappa; here it is chosen from the data: the ``percentile``-th
percentile of U over (a random subset of) the dataset's own (s, a) pairs, so that
(100 - percentile)% of real transitions would count as unreliable; a fixed ``kappa`` overrides
it. Both settings, and ``calibration_pairs``, are fields of the uncertainty metric's config
(:class:`~ipd_plugins.uncertainty.base.UncertaintyConfig`). The pipeline calls
:func:`calibrate_kappa` once per augmentation and hands kappa to the augmenter, which gives it
to the planners in their ``PlanningContext``; both test a step with
``PlanningContext.reliable(step)`` (``registry/protocols.py``), the one place eq. 12's
``U < kappa`` is written, so a third-party planner applies the same rule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from ipd_plugins.data.dataset import TrajectoryDataset
    from registry.protocols import UncertaintyMetric, WorldModel

__all__ = ["percentile_kappa", "calibrate_kappa", "DEFAULT_CALIBRATION_PAIRS"]

#: dataset pairs U is measured on when a metric's config does not say
DEFAULT_CALIBRATION_PAIRS = 50_000


def percentile_kappa(u_data: torch.Tensor, percentile: float) -> float:
    """kappa = the ``percentile``-th percentile (0-100) of ``u_data``.

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


@torch.inference_mode()
def calibrate_kappa(
    dataset: TrajectoryDataset,
    world_model: WorldModel,
    uncertainty: UncertaintyMetric,
    n_pairs: int = DEFAULT_CALIBRATION_PAIRS,
    chunk_size: int = 8192,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[float, dict[str, float]]:
    """kappa from U(s, a) on ``n_pairs`` random dataset pairs, and U's percentiles.

    Uses only the protocols: ``world_model.step`` for the member Gaussians, ``uncertainty`` for
    U, and ``uncertainty.calibrate`` for the threshold.
    """
    rng = np.random.default_rng(seed)
    n = min(n_pairs, dataset.n_steps)
    idx = np.sort(rng.choice(dataset.n_steps, n, replace=False))
    us = []
    for lo in range(0, n, chunk_size):
        rows = idx[lo : lo + chunk_size]
        obs = torch.as_tensor(dataset.observations[rows], dtype=torch.float32, device=device)
        act = torch.as_tensor(dataset.actions[rows], dtype=torch.float32, device=device)
        step = world_model.step(obs, act)
        us.append(uncertainty(step.member_mean, step.member_var).float().cpu())
    u = torch.cat(us)
    kappa = float(uncertainty.calibrate(u))
    q = torch.quantile(u, torch.tensor([0.5, 0.9, 0.99]))
    stats = {"u_p50": float(q[0]), "u_p90": float(q[1]), "u_p99": float(q[2]), "kappa": kappa}
    return kappa, stats
