"""Where an imagined episode ends: known termination rules per env, or a learned classifier.

Issue 5 ("Termination"): imagined rollouts must stop where the real episode would, so that no
imagined step continues past a fall and V is not bootstrapped there (MOPO/MBPO use the same
hand-written rules, ``static_fns``). Rules here mirror gymnasium 1.0.0's MuJoCo envs exactly:

- ``Hopper-v2..v5``: healthy iff ``0.7 < z``, ``-0.2 < angle < 0.2`` and every element of
  ``state_vector()[2:]`` (qpos[2:] and qvel) in ``(-100, 100)`` (strict inequalities, as
  ``hopper_v5.is_healthy``). With ``exclude_current_positions_from_observation=True`` (the
  default, obs dim 11) ``obs = [qpos[1:], clip(qvel, -10, 10)]``, so z = obs[0], angle = obs[1]
  and the state check covers obs[1:]; with the x-position kept (obs dim 12) every index moves
  by one. The observation clips velocities to +-10, so a raw |qvel| > 100 (which would end the
  real episode) cannot be seen in it: that is the one case the rule cannot reproduce.
- ``Walker2d-v2..v5``: healthy iff ``0.8 < z < 2.0`` and ``-1 < angle < 1`` (z = obs[0],
  angle = obs[1]; shifted by one with the x-position kept: obs dim 18 instead of 17).
- ``HalfCheetah-*``, ``Pendulum-*``: never terminate.

For any other env whose data contains terminations, :class:`TerminationClassifier` learns
p(terminated | s, a, s') from the data's ``terminations``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from ipd_plugins.nn import Normalizer, mlp

__all__ = [
    "TerminationFn",
    "hopper_terminated",
    "walker2d_terminated",
    "never_terminates",
    "known_termination_rule",
    "TerminationClassifier",
    "termination_loss",
]

#: ``fn(next_obs (B,O)) -> (B,) bool``: True where the episode terminates at ``next_obs``.
TerminationFn = Callable[[torch.Tensor], torch.Tensor]

_OBS_DIMS = {"Hopper": (11, 12), "Walker2d": (17, 18)}  # (positions excluded, x kept)


def _inside(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return (x > low) & (x < high)


def hopper_terminated(
    next_obs: torch.Tensor,
    exclude_current_positions: bool = True,
    healthy_state_range: tuple[float, float] = (-100.0, 100.0),
    healthy_z_range: tuple[float, float] = (0.7, float("inf")),
    healthy_angle_range: tuple[float, float] = (-0.2, 0.2),
) -> torch.Tensor:
    """(B,O) -> (B,) bool: ``not Hopper.is_healthy`` evaluated on the observation."""
    k = 0 if exclude_current_positions else 1
    z, angle, state = next_obs[..., k], next_obs[..., k + 1], next_obs[..., k + 1 :]
    healthy = (
        _inside(state, *healthy_state_range).all(-1)
        & _inside(z, *healthy_z_range)
        & _inside(angle, *healthy_angle_range)
    )
    return ~healthy


def walker2d_terminated(
    next_obs: torch.Tensor,
    exclude_current_positions: bool = True,
    healthy_z_range: tuple[float, float] = (0.8, 2.0),
    healthy_angle_range: tuple[float, float] = (-1.0, 1.0),
) -> torch.Tensor:
    """(B,O) -> (B,) bool: ``not Walker2d.is_healthy`` evaluated on the observation."""
    k = 0 if exclude_current_positions else 1
    z, angle = next_obs[..., k], next_obs[..., k + 1]
    return ~(_inside(z, *healthy_z_range) & _inside(angle, *healthy_angle_range))


def never_terminates(next_obs: torch.Tensor) -> torch.Tensor:
    """(B,O) -> (B,) all False (HalfCheetah, Pendulum)."""
    return torch.zeros(next_obs.shape[:-1], dtype=torch.bool, device=next_obs.device)


def known_termination_rule(env_id: str | None, obs_dim: int) -> TerminationFn | None:
    """The env's own termination rule for ``env_id`` (a gymnasium id), or None if unknown.

    Fails with a sentence if the env is known but ``obs_dim`` fits neither of its layouts.
    """
    if not env_id:
        return None
    m = re.fullmatch(r"(?:.*/)?([A-Za-z0-9]+)-v(\d+)", env_id)
    if m is None:
        return None
    name, version = m.group(1), int(m.group(2))
    if name in ("HalfCheetah", "Pendulum"):
        return never_terminates
    if name in _OBS_DIMS and 2 <= version <= 5:
        excluded, kept = _OBS_DIMS[name]
        if obs_dim not in (excluded, kept):
            raise ValueError(
                f"{env_id} observations have {excluded} dims (x-position excluded) or {kept} "
                f"(x-position kept), but the data has obs_dim={obs_dim}"
            )
        fn = hopper_terminated if name == "Hopper" else walker2d_terminated
        return partial(fn, exclude_current_positions=obs_dim == excluded)
    return None


class TerminationClassifier(nn.Module):
    """p(terminated | s, a, s'): an MLP on the standardised concatenation [s, a, s'].

    ``forward`` returns logits (B,); :meth:`predict` thresholds the probability at
    ``threshold``. The input normaliser is stored with the weights.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, n_hidden: int = 2):
        super().__init__()
        in_dim = 2 * obs_dim + act_dim
        self.norm = Normalizer(in_dim)
        self.net = mlp(in_dim, 1, hidden=hidden, n_hidden=n_hidden, layer_norm=True)

    def forward(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        x = self.norm(torch.cat([obs, act, next_obs], -1))
        return self.net(x).squeeze(-1)

    def predict(
        self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor, threshold: float = 0.5
    ) -> torch.Tensor:
        """(B,O), (B,A), (B,O) -> (B,) bool."""
        return torch.sigmoid(self(obs, act, next_obs).float()) > threshold


def termination_loss(logits: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the classifier's logits (B,) against 0/1 ``done`` (B,)."""
    return nn.functional.binary_cross_entropy_with_logits(logits, done.float())
