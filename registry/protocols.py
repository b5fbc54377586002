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
    "Policy",
    "SequencePolicy",
    "Actor",
    "WorldModelSample",
    "DifferentiableWorldModel",
    "AdaptableActor",
    "AdaptationContext",
    "Adapter",
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


@dataclass(frozen=True)
class WorldModelSample:
    """One reparameterised imagined transition: a differentiable function of (obs, act)."""

    next_obs: torch.Tensor  # (B,O) differentiable w.r.t. obs and act (the noise held fixed)
    reward: torch.Tensor  # (B,) differentiable w.r.t. obs and act
    done: torch.Tensor  # (B,) bool, no gradient: the episode would terminate at next_obs


@runtime_checkable
class DifferentiableWorldModel(WorldModel, Protocol):
    """A :class:`WorldModel` whose sample is differentiable: what inference-time adaptation
    (the ``dwm`` adapter) backpropagates through.

    ``noise_dim`` is the number D of standard-normal numbers one transition consumes (e.g. a
    member choice and a Gaussian draw); with the noise fixed, :meth:`rsample_step` is a
    deterministic function of (obs, act).
    """

    noise_dim: int

    def rsample_step(
        self, obs: torch.Tensor, act: torch.Tensor, noise: torch.Tensor
    ) -> WorldModelSample:
        """(B,O), (B,A), (B,D) standard normals -> one sampled transition per row, with
        gradients to obs and act (the model's own weights stay as they are; computed in the
        dtype of the inputs)."""


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
    """Acts in B parallel environments with whatever memory the policy needs.

    The evaluator calls ``reset`` once, then ``act`` and ``observe`` once per step, for every
    policy alike: a sequence policy keeps its context window here (``ipd-dt``, ``dt``), a
    state-only policy (``gtp``) keeps nothing and ignores ``observe``.
    """

    def reset(self, obs: torch.Tensor) -> None:
        """Start B new episodes from the first observations (B,O)."""

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """(B,O) current observations -> (B,A) actions; call once per env step."""

    def observe(self, reward: torch.Tensor) -> None:
        """(B,) rewards of the last step (e.g. for return-to-go conditioning)."""


@runtime_checkable
class Policy(Protocol):
    """The policy the pipeline trains last (paper sec. 3.4) and evaluates.

    With or without a context window: a sequence policy (``ipd-dt``, ``dt``) trains on windows
    of the episodes, a state-only policy (``gtp``) on their transitions (s, a, r, s',
    terminated). Either acts through an :class:`Actor`, whose memory is its own business.
    """

    def fit(
        self,
        dataset: TrajectoryDataset,
        value: ValueLearner | None,
        work_dir: Path | None = None,
        log: Logger | None = None,
    ) -> dict[str, float]:
        """Train on ``dataset`` (real + imagined steps); ``value`` is the value stage's learner
        (``ipd-dt``'s V tokens and Q guidance; a policy may ignore it). Checkpoint periodically
        into ``work_dir`` and resume from it; report curves through ``log``."""

    def actor(self, value: ValueLearner | None) -> Actor:
        """An :class:`Actor` for evaluation rollouts."""

    def save(self, path: Path) -> None:
        """Write the weights (no pickles)."""

    def load(self, path: Path) -> None:
        """Read weights written by :meth:`save` (weights-only)."""


#: The protocol's name from before policies without a context window (kept for plugins).
SequencePolicy = Policy


@runtime_checkable
class AdaptableActor(Actor, Protocol):
    """An :class:`Actor` whose policy weights an :class:`Adapter` may change while it acts.

    Weights are passed in explicitly, one set per environment: ``params`` maps the names of
    :meth:`adapt_parameters` to tensors with a leading B axis, so that B episodes adapt
    independently in one batched pass and the actor's own weights are never modified.
    Imagined rollouts run N rows per environment (N particles): observations (B,N,O).
    """

    def adapt_parameters(self, which: str) -> dict[str, torch.Tensor]:
        """The pretrained weights an adapter may change, name -> tensor (the live tensors; the
        caller copies them). ``which``: "all" (every weight of the policy network) or "head"
        (its output layer). Raises ``ValueError`` when this actor cannot be adapted."""

    def imagine_start(self, n: int, context: int = 0) -> Any:
        """The memory of n imagined rollouts per env that start at the observations the next
        :meth:`act_with` gets (None for memoryless actors). ``context``: the window of a
        sequence actor in imagination, its last ``context`` steps (0: its own)."""

    def differentiable_act(
        self, obs: torch.Tensor, params: dict[str, torch.Tensor], memory: Any
    ) -> tuple[torch.Tensor, Any]:
        """(B,N,O) imagined observations, per-env ``params`` (B,...) and the memory -> (B,N,A)
        actions, differentiable w.r.t. obs and params, and the memory after this step."""

    def act_with(self, obs: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """:meth:`Actor.act` with per-env ``params`` (B,...) in place of the pretrained ones:
        (B,O) -> (B,A), the real step (it advances the actor's memory as ``act`` does)."""


@dataclass(frozen=True)
class AdaptationContext:
    """The trained models an adapter may use while an actor acts; all stay frozen."""

    world_model: WorldModel | None  # the run's (or the dataset's) trained world model
    # Q(s, a): (B,O), (B,A) -> (B,) in the dataset's reward units (the world model's), with
    # gradients to s and a; the min over a critic pair where there is one
    q: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
    gamma: float = 0.99  # the discount Q was trained with
    seed: int = 0  # the run's seed (adapters seed their noise from it)


@runtime_checkable
class Adapter(Protocol):
    """Inference-time adaptation of a trained actor (DWM-MPC; evaluation only, no stage).

    ``uses_models``: whether :meth:`wrap` needs the context's world model and Q (runners load
    or train them only then).
    """

    uses_models: bool

    def wrap(self, actor: Actor, models: AdaptationContext) -> Actor:
        """An :class:`Actor` with per-episode state around ``actor``: ``reset(obs)`` restores
        the pretrained weights exactly (every episode starts from them), ``act(obs)`` adapts
        the weights at ``obs`` and then acts with them; the adapted weights persist until the
        next ``reset``. Raises ``ValueError`` (naming the actor) when it cannot adapt it."""
