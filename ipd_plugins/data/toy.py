"""ToyReach: a 1-d task that trains and evaluates in seconds, for tests and benchmarks.

Move x to 0: ``x' = clip(x + 0.3 a, -5, 5)``, reward ``-|x'|``, actions in [-1, 1], 20 steps
from ``x ~ U(-1.5, 1.5)``. A return of about -1.2 is optimal, a random policy gets about -22.
:func:`toy_reach_dataset` logs noisy proportional controllers of random quality (some useless,
some good); :class:`ToyReachValue` is an exact one-step-lookahead value learner for it.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from ipd_plugins.data.dataset import TrajectoryDataset

__all__ = ["TOY_REACH_ID", "ToyReach", "register_toy_reach", "toy_reach_dataset", "ToyReachValue"]

TOY_REACH_ID = "IpdToyReach-v0"
EPISODE_STEPS = 20


class ToyReach(gym.Env):
    """The environment: x' = clip(x + 0.3 a, -5, 5), reward -|x'|; never terminates."""

    observation_space = gym.spaces.Box(-5.0, 5.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.x = float(self.np_random.uniform(-1.5, 1.5))
        return np.array([self.x], np.float32), {}

    def step(self, action):
        self.x = float(np.clip(self.x + 0.3 * float(action[0]), -5, 5))
        return np.array([self.x], np.float32), -abs(self.x), False, False, {}


def register_toy_reach() -> str:
    """Register :class:`ToyReach` with gymnasium (once, 20-step time limit); returns its id."""
    if TOY_REACH_ID not in gym.registry:
        gym.register(id=TOY_REACH_ID, entry_point=ToyReach, max_episode_steps=EPISODE_STEPS)
    return TOY_REACH_ID


def toy_reach_dataset(
    n_episodes: int = 60, seed: int = 0, gain: float | None = None
) -> TrajectoryDataset:
    """Episodes of noisy proportional controllers ``a = clip(-g x + N(0, 0.4), -1, 1)``, one
    gain ``g ~ U(-1, 4)`` per episode, or ``gain`` for all (2: a good controller); the
    environment is registered."""
    rng = np.random.default_rng(seed)
    episodes = []
    fixed = gain
    for _ in range(n_episodes):
        gain = rng.uniform(-1.0, 4.0) if fixed is None else fixed
        x = rng.uniform(-1.5, 1.5)
        obs, acts, rews = [x], [], []
        for _ in range(EPISODE_STEPS):
            a = float(np.clip(-gain * x + rng.normal(0, 0.4), -1, 1))
            x = float(np.clip(x + 0.3 * a, -5, 5))
            obs.append(x)
            acts.append(a)
            rews.append(-abs(x))
        episodes.append(
            {
                "observations": np.array(obs, np.float32)[:, None],
                "actions": np.array(acts, np.float32)[:, None],
                "rewards": np.array(rews, np.float32),
                "terminations": np.zeros(EPISODE_STEPS, bool),
                "truncations": np.r_[np.zeros(EPISODE_STEPS - 1, bool), True],
            }
        )
    return TrajectoryDataset.from_episodes(
        episodes,
        env_id=register_toy_reach(),
        action_low=np.array([-1.0]),
        action_high=np.array([1.0]),
    )


class ToyReachValue:
    """An exact value learner for ToyReach (one-step lookahead): Q(s, a) = -|x + 0.3 a|,
    V(s) = -2 |x|, and the greedy pi_QOP. ``record=True`` keeps every ``v()`` input in
    ``v_calls``."""

    gamma = 0.99

    def __init__(self, record: bool = False):
        self.record = record
        self.v_calls: list[torch.Tensor] = []

    def q(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return -(obs[:, 0] + 0.3 * act[:, 0]).abs()

    def v(self, obs: torch.Tensor) -> torch.Tensor:
        if self.record:
            self.v_calls.append(obs.detach().clone())
        return -2.0 * obs[:, 0].abs()

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return (-obs / 0.3).clamp(-1, 1)

    def fit(self, dataset, work_dir=None, log=None) -> dict[str, float]:
        return {}

    def save(self, path) -> None:
        pass

    def load(self, path) -> None:
        pass
