"""Returns: discounted n-step returns with termination masks (augmentation, planners) and
IQL's reward normalisation (value learners)."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ipd_plugins.data.dataset import TrajectoryDataset

__all__ = ["discounted_return", "reward_factor"]


def reward_factor(dataset: TrajectoryDataset, scale: float = 1.0, normalize: bool = True) -> float:
    """The factor rewards are multiplied by before value learning.

    ``scale``, times IQL's ``1000 / (max - min episode return)`` when ``normalize`` (what IQL's
    beta=3 is tuned for). In an augmented dataset only the original episodes count (imagined
    segments, ``extras["source_index"] >= 0``, are short and would widen the spread). Episodes
    that all return the same leave no spread to normalise by: then only ``scale`` applies,
    with a warning.
    """
    factor = float(scale)
    if normalize:
        returns = dataset.episode_returns()
        if "source_index" in dataset.extras:
            returns = returns[dataset.extras["source_index"][dataset.episode_starts] < 0]
        spread = float(returns.max() - returns.min())
        if spread > 0:
            return factor * 1000.0 / spread
        warnings.warn(
            f"normalize_rewards: all {len(returns)} episodes return {returns[0]:.4g}, so "
            "there is no spread to normalise by; rewards are left unnormalised",
            stacklevel=2,
        )
    return factor


def discounted_return(
    rewards: torch.Tensor, alive: torch.Tensor, terminal_value: torch.Tensor, gamma: float
) -> torch.Tensor:
    """sum_{k<H} gamma^k r_k alive_k + gamma^H alive_H V_H  (eq. 17, 18 and 25).

    Args:
        rewards: (H,B) reward of each step.
        alive: (H+1,B) 1 while the episode has not terminated before step k (alive_0 = 1);
            alive_H gates the bootstrap, so nothing is bootstrapped past a termination.
        terminal_value: (B,) V(s_H).
    """
    h = rewards.shape[0]
    if alive.shape[0] != h + 1:
        raise ValueError(f"alive must have H+1={h + 1} rows, got {alive.shape[0]}")
    disc = gamma ** torch.arange(h + 1, dtype=rewards.dtype, device=rewards.device)
    return (disc[:h, None] * rewards * alive[:h]).sum(0) + disc[h] * alive[h] * terminal_value
