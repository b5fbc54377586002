"""Context windows for the sequence policies (paper sec. 3.4, eq. 26: ``{s,a}_{t-K:t-1}``).

A training sample is the window of ``K`` (the context) steps of one episode that *ends* at step
``t``, for every step ``t`` of the dataset: steps before the episode's start are left padding
(zeros, ``mask=False``). The per-step conditioning scalar (V(s_t) for ``ipd-dt``, the scaled
return-to-go for ``dt``) is computed once for the whole dataset as a flat (N,) array, and the
windows are gathered tensor-side with one index tensor, no Python loop per row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from ipd_plugins.data.dataset import TrajectoryDataset

__all__ = ["returns_to_go", "discounted_returns_to_go", "window_indices", "SequenceSampler"]


def returns_to_go(rewards: np.ndarray, episode_lengths: np.ndarray) -> np.ndarray:
    """(N,) undiscounted return-to-go ``R_t = sum_{t' >= t} r_t'`` within each episode.

    Vectorised: a global suffix sum minus the suffix sum just past the episode's end.
    """
    rewards = np.asarray(rewards, np.float64).reshape(-1)
    lengths = np.asarray(episode_lengths, np.int64)
    if lengths.sum() != rewards.shape[0]:
        raise ValueError(
            f"episode_lengths sum to {int(lengths.sum())} but there are {rewards.shape[0]} rewards"
        )
    suffix = np.concatenate([np.cumsum(rewards[::-1])[::-1], [0.0]])  # (N+1,)
    ends = np.repeat(np.cumsum(lengths), lengths)  # (N,) index one past each step's episode
    return (suffix[:-1] - suffix[ends]).astype(np.float32)


def discounted_returns_to_go(
    rewards: np.ndarray, episode_lengths: np.ndarray, gamma: float, tail: np.ndarray
) -> np.ndarray:
    """(N,) ``G_t = r_t + gamma G_{t+1}`` within each episode, ``G`` past its end = ``tail`` (M,).

    ``tail`` is what follows an episode's last step: 0 after a termination, V(s') where the
    episode was cut short (time limit, the end of an augmented segment). Vectorised over
    episodes: one numpy step per distance from the episode's end.
    """
    rewards = np.asarray(rewards, np.float64).reshape(-1)
    lengths = np.asarray(episode_lengths, np.int64)
    tail = np.asarray(tail, np.float64).reshape(-1)
    if lengths.sum() != rewards.shape[0] or tail.shape[0] != lengths.shape[0]:
        raise ValueError(
            f"{rewards.shape[0]} rewards, episode_lengths summing to {int(lengths.sum())} and "
            f"{tail.shape[0]} tail values for {lengths.shape[0]} episodes do not fit together"
        )
    ends = np.repeat(np.cumsum(lengths), lengths)  # one past each step's episode end
    from_end = ends - 1 - np.arange(rewards.shape[0])  # 0 at an episode's last step
    order = np.argsort(from_end, kind="stable")  # last steps first, then one before, ...
    bounds = np.concatenate([[0], np.cumsum(np.bincount(from_end))])
    out = np.empty_like(rewards)
    for k in range(len(bounds) - 1):
        rows = order[bounds[k] : bounds[k + 1]]  # every step k steps before its episode's end
        after = np.repeat(tail, lengths)[rows] if k == 0 else out[rows + 1]
        out[rows] = rewards[rows] + gamma * after
    return out.astype(np.float32)


def window_indices(
    end: torch.Tensor, episode_start: torch.Tensor, context: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices of the K-step windows ending at ``end`` (B,), and their validity mask.

    Returns ``index`` (B,K) clamped into the episode (so gathering is always in range) and
    ``mask`` (B,K) bool, False where the window reaches before the episode's first step.
    """
    offsets = torch.arange(-context + 1, 1, device=end.device)  # (K,): -K+1 .. 0
    index = end[:, None] + offsets  # (B, K)
    start = episode_start[end][:, None]  # (B, 1)
    mask = index >= start  # (B, K): left padding is False
    return torch.maximum(index, start), mask


class SequenceSampler:
    """Uniform minibatches of context windows, one window ending at each sampled step.

    ``cond`` (N,) is the per-step conditioning scalar, already scaled. Observations and
    actions are returned raw (the policy normalises observations itself).
    """

    def __init__(
        self,
        dataset: TrajectoryDataset,
        cond: np.ndarray,
        context: int,
        device: str = "cpu",
        generator: torch.Generator | None = None,
    ):
        n = dataset.n_steps
        cond = np.asarray(cond, np.float32).reshape(-1)
        if cond.shape[0] != n:
            raise ValueError(f"cond has {cond.shape[0]} entries for a dataset of {n} steps")
        if context < 1:
            raise ValueError(f"context must be >= 1, got {context}")
        self.obs = torch.as_tensor(dataset.observations, dtype=torch.float32, device=device)
        self.act = torch.as_tensor(dataset.actions, dtype=torch.float32, device=device)
        self.cond = torch.as_tensor(cond, device=device)
        self.timestep = torch.as_tensor(dataset.timesteps(), dtype=torch.long, device=device)
        starts = np.repeat(dataset.episode_starts, dataset.episode_lengths)  # (N,)
        self.episode_start = torch.as_tensor(starts, dtype=torch.long, device=device)
        self.context, self.size, self.device = context, n, device
        self.generator = generator

    def window(self, end: torch.Tensor) -> dict[str, torch.Tensor]:
        """The windows ending at the flat step indices ``end`` (B,)."""
        end = end.to(self.device)
        index, mask = window_indices(end, self.episode_start, self.context)  # (B, K)
        m = mask.unsqueeze(-1)
        return {
            "obs": self.obs[index] * m,  # (B, K, O), zeros on padding
            "act": self.act[index] * m,  # (B, K, A)
            "cond": self.cond[index] * mask,  # (B, K)
            "timestep": self.timestep[index] * mask,  # (B, K) time in the episode, 0 on padding
            "mask": mask,  # (B, K) bool
        }

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        end = torch.randint(self.size, (batch_size,), generator=self.generator)
        return self.window(end)
