"""Discounted n-step returns with termination masks (shared by augmentation and planners)."""

from __future__ import annotations

import torch

__all__ = ["discounted_return"]


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
