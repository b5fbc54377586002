"""A 1-d system with exact models, for tests of the augmentation and the planners.

The system: s' = clip(s + a, -5, 5), r = -s'^2, actions in [-1, 1]. The "learned" models are
exact, so imagined returns are true returns.
"""

from __future__ import annotations

import numpy as np
import torch

from ipd_plugins.augment import AugmentConfig, augment
from ipd_plugins.data import TrajectoryDataset
from registry import BuildContext, WorldModelStep

CTX = BuildContext(obs_dim=1, act_dim=1, act_low=(-1.0,), act_high=(1.0,))


class ExactModel:
    """World model of the 1-d system; member variance = |s| so uncertainty grows with |s|."""

    def step(self, obs, act, generator=None):
        nxt = (obs + act).clamp(-5, 5)
        var = obs.abs().expand(3, *obs.shape).clone() + 1e-3
        return WorldModelStep(
            nxt,
            -(nxt[:, 0] ** 2),
            torch.zeros(len(obs), dtype=torch.bool),
            nxt.expand(3, *nxt.shape),
            var,
        )


class FakeValue:
    """pi_QOP(s) = -0.3 s (cautious), samples add N(0, 0.6^2); V(s) = -2 s^2."""

    gamma = 0.99

    def v(self, obs):
        return -2.0 * obs[:, 0] ** 2

    def act(self, obs, deterministic=True):
        a = -0.3 * obs
        if not deterministic:
            a = a + 0.6 * torch.randn_like(a)
        return a.clamp(-1, 1)


class VarUncertainty:
    """U = mean member variance (= |s| for ExactModel)."""

    def __call__(self, mean, var):
        return var.mean(dim=(0, 2))

    def calibrate(self, u):
        return float(torch.quantile(u, 0.99))


def one_d_dataset(n_episodes=6, length=40, seed=0) -> TrajectoryDataset:
    """Episodes of a poor behaviour policy (random actions) starting near 0."""
    rng = np.random.default_rng(seed)
    eps = []
    for _ in range(n_episodes):
        s = rng.uniform(-1, 1, size=1)
        obs, acts, rews = [s], [], []
        for _ in range(length):
            a = rng.uniform(-1, 1, size=1)
            s = np.clip(s + a, -5, 5)
            obs.append(s), acts.append(a), rews.append(-(s[0] ** 2))
        eps.append(
            dict(
                observations=np.array(obs),
                actions=np.array(acts),
                rewards=np.array(rews),
                terminations=np.zeros(length),
                truncations=np.eye(length)[-1],
            )
        )
    return TrajectoryDataset.from_episodes(
        eps, action_low=np.array([-1.0]), action_high=np.array([1.0])
    )


def true_return(s0, actions, gamma):
    s, total = s0, 0.0
    for k, a in enumerate(actions):
        s = float(np.clip(s + a, -5, 5))
        total += gamma**k * -(s**2)
    return total


def run_augment(planner_cfg, ds, kappa=1e9, n_aug=1.0, seed=0, **augment_options):
    """Algorithm 1 on ``ds`` with the exact models and ``planner_cfg``'s planner."""
    torch.manual_seed(seed)
    return augment(
        ds,
        FakeValue(),
        ExactModel(),
        VarUncertainty(),
        planner_cfg.create(CTX),
        kappa,
        AugmentConfig(n_aug=n_aug, horizon=5, context=3, **augment_options),
        seed=seed,
        progress=False,
    )
