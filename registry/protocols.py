"""What the runner may call on each component kind.

Shape letters, used everywhere: ``E`` ensemble members, ``B`` batch, ``T`` sequence, ``H``
planning horizon, ``O`` observation dim, ``A`` action dim. Tensors are ``float32`` on the
component's ``device`` unless a docstring says otherwise. Batched methods take and return
``torch.Tensor``; ``fit`` takes an in-memory trajectory dataset
(``TrajectoryDataset``: numpy arrays of observations, actions, rewards,
terminations, truncations and episode lengths).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

#: The in-memory dataset components train on (``TrajectoryDataset`` of the ``ipd`` package);
#: named here without importing it, so that ``registry`` depends on no other package.
TrajectoryDataset = Any

__all__ = [
    "BuildContext",
    "Logger",
    "ValueLearner",
    "WorldModel",
    "WorldModelStep",
    "UncertaintyMetric",
    "PlanningContext",
    "Planner",
    "SequencePolicy",
    "Actor",
]

#: ``log(step, {"loss": ...})``: where components report training curves.
Logger = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class BuildContext:
    """What every component is built for: the spaces, the device and the seed."""

    obs_dim: int  # O
    act_dim: int  # A
    act_low: tuple[float, ...]  # (A,) lower action bound
    act_high: tuple[float, ...]  # (A,) upper action bound
    device: str = "cpu"
    seed: int = 0
    env_id: str | None = None  # gymnasium id of the dataset's env, when known
    # "fp32" or "bf16" (autocast while training): run.precision resolved for this hardware
    precision: str = "fp32"
    # episodes of the dataset the run trains on (before augmentation), when known
    dataset_episodes: int | None = None

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if len(self.act_low) != self.act_dim or len(self.act_high) != self.act_dim:
            raise ValueError(
                f"act_low/act_high must have act_dim={self.act_dim} entries, "
                f"got {len(self.act_low)} and {len(self.act_high)}"
            )


@runtime_checkable
class ValueLearner(Protocol):
    """Quasi-optimal value learner (paper sec. 3.1): Q(s,a), V(s) and a policy pi_QOP(a|s)."""

    gamma: float

    def fit(
        self, dataset: TrajectoryDataset, work_dir: Path | None = None, log: Logger | None = None
    ) -> dict[str, float]:
        """Train on ``dataset``; checkpoint periodically into ``work_dir`` and resume from it."""

    def q(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """(B,O), (B,A) -> (B,): the (min over the double-Q pair) action value."""

    def v(self, obs: torch.Tensor) -> torch.Tensor:
        """(B,O) -> (B,): the state value V(s)."""

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """(B,O) -> (B,A): the quasi-optimal policy's mean (or a sample), inside the bounds."""

    def save(self, path: Path) -> None:
        """Write the weights (no pickles)."""

    def load(self, path: Path) -> None:
        """Read weights written by :meth:`save` (weights-only)."""


@dataclass(frozen=True)
class WorldModelStep:
    """One batched imagined transition."""

    next_obs: torch.Tensor  # (B,O) a sample from the ensemble
    reward: torch.Tensor  # (B,)
    done: torch.Tensor  # (B,) bool: the episode would terminate at next_obs
    member_mean: torch.Tensor  # (E,B,O) each member's predicted next-state mean
    member_var: torch.Tensor  # (E,B,O) each member's diagonal variance


@runtime_checkable
class WorldModel(Protocol):
    """Dynamics + reward model with an ensemble for uncertainty (paper sec. 3.2)."""

    def fit(
        self, dataset: TrajectoryDataset, work_dir: Path | None = None, log: Logger | None = None
    ) -> dict[str, float]:
        """Train; returns metrics including held-out errors."""

    def step(
        self, obs: torch.Tensor, act: torch.Tensor, generator: torch.Generator | None = None
    ) -> WorldModelStep:
        """(B,O), (B,A) -> one imagined transition for each row."""

    def save(self, path: Path) -> None: ...

    def load(self, path: Path) -> None: ...


@runtime_checkable
class UncertaintyMetric(Protocol):
    """U(s,a) from the ensemble's per-member Gaussians (paper eq. 8-12)."""

    def __call__(self, member_mean: torch.Tensor, member_var: torch.Tensor) -> torch.Tensor:
        """(E,B,O), (E,B,O) -> (B,) uncertainty; larger means less reliable."""

    def calibrate(self, u_data: torch.Tensor) -> float:
        """The threshold kappa of the reliable set {U < kappa}, from U on dataset pairs."""


@dataclass(frozen=True)
class PlanningContext:
    """Everything a planner may use: the learned models and the reliable-set threshold."""

    value: ValueLearner
    world_model: WorldModel
    uncertainty: UncertaintyMetric
    kappa: float
    generator: torch.Generator | None = None

    def reliable(self, step: WorldModelStep) -> torch.Tensor:
        """(B,) bool: the imagined step is in the reliable set U(s, a) < kappa (eq. 12)."""
        return self.uncertainty(step.member_mean, step.member_var) < self.kappa


@runtime_checkable
class Planner(Protocol):
    """Chooses the action for imagined states (paper eq. 25, Alg. 1 line 10)."""

    def plan(self, obs: torch.Tensor, ctx: PlanningContext) -> torch.Tensor:
        """(B,O) -> (B,A) actions, batched over all states at once."""


@runtime_checkable
class Actor(Protocol):
    """Acts in B parallel environments with whatever memory the policy needs."""

    def reset(self, obs: torch.Tensor) -> None:
        """Start B new episodes from the first observations (B,O)."""

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """(B,O) current observations -> (B,A) actions; call once per env step."""

    def observe(self, reward: torch.Tensor) -> None:
        """(B,) rewards of the last step (used for return-to-go conditioning)."""


@runtime_checkable
class SequencePolicy(Protocol):
    """The distilled sequence policy (paper sec. 3.4)."""

    def fit(
        self,
        dataset: TrajectoryDataset,
        value: ValueLearner | None,
        work_dir: Path | None = None,
        log: Logger | None = None,
    ) -> dict[str, float]:
        """Train on ``dataset`` (real + imagined); ``value`` supplies V tokens and Q guidance."""

    def actor(self, value: ValueLearner | None) -> Actor:
        """An :class:`Actor` for evaluation rollouts."""

    def save(self, path: Path) -> None: ...

    def load(self, path: Path) -> None: ...
