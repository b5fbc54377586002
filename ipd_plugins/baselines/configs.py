"""The d3rlpy baselines' configs: IQL, CQL, TD3+BC, ReBRAC, BC and the Decision Transformer.

Each is a registered component of kind ``baseline`` (hook ``ipd_register_baseline``), so a
third-party baseline plugs in the same way. Hyperparameters are d3rlpy's config defaults, with
what d3rlpy's own D4RL reproduction scripts (``reproductions/offline/*.py``) add on top:
standardised observations for every algorithm, actions mapped from the dataset's bounds to
[-1, 1], IQL's rewards scaled by ``1000 / (max - min episode return)`` with a cosine-annealed
actor learning rate, and DT's GPT-style AdamW (weight decay 1e-4, gradient clip 0.25, linear
warm-up) with rewards x 0.001 and the D4RL target returns. Network sizes and step budgets come
from the profile's ``baseline`` section (:mod:`ipd_plugins.profiles`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ipd_plugins.returns import reward_factor
from registry import hookimpl
from registry.config import ComponentConfig, renamed
from registry.protocols import BuildContext

if TYPE_CHECKING:
    from ipd_plugins.baselines.trainer import D3rlpyBaseline
    from ipd_plugins.data.dataset import TrajectoryDataset

__all__ = [
    "BaselineConfig",
    "IQLBaselineConfig",
    "CQLBaselineConfig",
    "TD3PlusBCBaselineConfig",
    "ReBRACBaselineConfig",
    "REBRAC_BETAS",
    "BCBaselineConfig",
    "DTBaselineConfig",
    "BUILTIN_BASELINES",
    "D4RL_TARGET_RETURNS",
    "ipd_register_baseline",
]

#: Decision Transformer's evaluation targets for the D4RL locomotion tasks (Chen et al. 2021,
#: d3rlpy's reproduction script), by the env id's prefix.
D4RL_TARGET_RETURNS: dict[str, float] = {
    "Hopper": 3600.0,
    "HalfCheetah": 6000.0,
    "Walker2d": 5000.0,
}


# -- configs ---------------------------------------------------------------------------------
@dataclass
class BaselineConfig(ComponentConfig):
    """Fields every baseline has: the step budget, minibatch, MLP sizes and checkpointing.

    Args:
        n_steps: gradient steps (the profile matches them to IPD's budgets).
        batch_size: minibatch (transitions; windows for ``dt``).
        hidden, n_layers: width and depth of every MLP encoder (paper: 2 x 256).
        checkpoint_every, log_every: steps between resumable checkpoints / ``log`` calls.
    """

    kind: ClassVar[str] = "baseline"
    name: ClassVar[str] = ""

    #: a sequence model (windows of ``context`` steps, acting on a return-to-go), as ``dt``
    sequence: ClassVar[bool] = False

    # gradient steps; the profile's `baseline` section matches them to IPD's budgets
    n_steps: int = 1_000_000
    # minibatch size (transitions; sequence windows for dt)
    batch_size: int = 256
    # width and depth of the MLP encoders of actor, critics and value (paper: 2 x 256)
    hidden: int = 256
    n_layers: int = 2
    # steps between resumable checkpoints / log calls
    checkpoint_every: int = 5_000
    log_every: int = 1_000

    @classmethod
    def dataset_defaults(cls, dataset: str) -> dict[str, Any]:
        """Defaults that depend on the dataset (a method's published per-dataset settings),
        above the profile and below a config file and ``--set``; none by default."""
        return {}

    def validate(self) -> None:
        for key in ("n_steps", "batch_size", "hidden", "n_layers", "checkpoint_every", "log_every"):
            if getattr(self, key) < 1:
                raise ValueError(
                    f"baseline '{self.name}': {key} must be >= 1, got {getattr(self, key)}"
                )

    def create(self, ctx: BuildContext) -> D3rlpyBaseline:
        from ipd_plugins.baselines.trainer import D3rlpyBaseline

        return D3rlpyBaseline(self, ctx)

    def encoder(self) -> Any:
        from d3rlpy.models.encoders import VectorEncoderFactory

        return VectorEncoderFactory(hidden_units=[self.hidden] * self.n_layers)

    def d3rlpy_config(self, scalers: dict[str, Any]) -> Any:
        """The d3rlpy ``LearnableConfig`` (``scalers``: observation/action/reward scalers)."""
        raise NotImplementedError

    def reward_multiplier(self, dataset: TrajectoryDataset) -> float:
        """Factor on rewards before d3rlpy sees them (d3rlpy ``MultiplyRewardScaler``)."""
        return 1.0


@dataclass
class IQLBaselineConfig(BaselineConfig):
    r"""d3rlpy IQL (Kostrikov et al. 2021): expectile V, TD Q, AWR actor.

    :math:`L_V = E|\tau - 1(u<0)|u^2`, :math:`u = \min_e Q_e(s,a) - V(s)`;
    :math:`L_\pi = -E[\min(e^{\beta u}, w_{max}) \log\pi(a|s)]`.

    Args:
        tau: :math:`\tau`. beta: :math:`\beta` (the names of ``qov``; d3rlpy's ``expectile``
            and ``weight_temp`` are accepted). max_weight: :math:`w_{max}`.
        actor_lr, critic_lr: Adam rates; cosine_actor_lr anneals the actor's over n_steps.
        return_scale: rewards x ``return_scale / (max - min episode return)``; 0: unscaled.
    """

    name: ClassVar[str] = "iql"

    # tau, the expectile of V over Q: 0.5 = behaviour value, -> 1 = best in-support action
    tau: float = renamed(0.7, was="expectile")
    # beta, the AWR inverse temperature: 0 -> behaviour cloning, larger -> greedier
    beta: float = renamed(3.0, was="weight_temp")
    # clip of the AWR weights
    max_weight: float = 100.0
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    # cosine-anneal the actor's learning rate over n_steps (IQL paper, d3rlpy reproduction)
    cosine_actor_lr: bool = True
    # d3rlpy's ReturnBasedRewardScaler(multiplier=1000); 0 turns reward scaling off
    return_scale: float = 1000.0

    def reward_multiplier(self, dataset: TrajectoryDataset) -> float:
        if self.return_scale <= 0:
            return 1.0
        return reward_factor(dataset, self.return_scale / 1000.0)  # return_scale / spread

    def d3rlpy_config(self, scalers: dict[str, Any]) -> Any:
        import d3rlpy
        from d3rlpy.optimizers import AdamFactory, CosineAnnealingLRFactory

        sched = (
            CosineAnnealingLRFactory(T_max=max(1, self.n_steps)) if self.cosine_actor_lr else None
        )
        return d3rlpy.algos.IQLConfig(
            **scalers,
            batch_size=self.batch_size,
            actor_learning_rate=self.actor_lr,
            critic_learning_rate=self.critic_lr,
            actor_optim_factory=AdamFactory(lr_scheduler_factory=sched),
            actor_encoder_factory=self.encoder(),
            critic_encoder_factory=self.encoder(),
            value_encoder_factory=self.encoder(),
            expectile=self.tau,
            weight_temp=self.beta,
            max_weight=self.max_weight,
        )


@dataclass
class CQLBaselineConfig(BaselineConfig):
    r"""d3rlpy CQL (Kumar et al. 2020): SAC plus the conservative penalty
    :math:`\alpha (E_s \log\sum_a e^{Q(s,a)} - E_D Q(s,a))` with a Lagrangian :math:`\alpha`.

    Args:
        actor_lr, critic_lr, temp_lr, alpha_lr: Adam rates (d3rlpy's defaults).
        conservative_weight: weight of the penalty; alpha_threshold: the Lagrangian's target gap.
        n_action_samples: actions sampled for the log-sum-exp.
    """

    name: ClassVar[str] = "cql"

    actor_lr: float = 1e-4
    critic_lr: float = 3e-4
    # SAC temperature and CQL alpha learning rates (alpha_lr 0 keeps alpha fixed)
    temp_lr: float = 1e-4
    alpha_lr: float = 1e-4
    # penalty weight: larger -> more conservative Q (closer to behaviour cloning)
    conservative_weight: float = 5.0
    # Lagrangian target of the penalty gap
    alpha_threshold: float = 10.0
    # sampled actions per state for the log-sum-exp
    n_action_samples: int = 10

    def d3rlpy_config(self, scalers: dict[str, Any]) -> Any:
        import d3rlpy

        return d3rlpy.algos.CQLConfig(
            **scalers,
            batch_size=self.batch_size,
            actor_learning_rate=self.actor_lr,
            critic_learning_rate=self.critic_lr,
            temp_learning_rate=self.temp_lr,
            alpha_learning_rate=self.alpha_lr,
            actor_encoder_factory=self.encoder(),
            critic_encoder_factory=self.encoder(),
            conservative_weight=self.conservative_weight,
            alpha_threshold=self.alpha_threshold,
            n_action_samples=self.n_action_samples,
        )


@dataclass
class TD3PlusBCBaselineConfig(BaselineConfig):
    r"""d3rlpy TD3+BC (Fujimoto & Gu 2021): :math:`\pi = \arg\max \lambda Q(s,\pi(s)) -
    (\pi(s) - a)^2`, :math:`\lambda = \alpha / E|Q|`.

    Args:
        alpha: :math:`\alpha` (2.5); update_actor_interval: critic steps per actor step.
        target_smoothing_sigma, target_smoothing_clip: TD3's target policy noise.
    """

    name: ClassVar[str] = "td3+bc"

    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    # Q weight against the BC term: larger -> more RL, less cloning
    alpha: float = 2.5
    # delayed actor updates (TD3)
    update_actor_interval: int = 2
    target_smoothing_sigma: float = 0.2
    target_smoothing_clip: float = 0.5

    def d3rlpy_config(self, scalers: dict[str, Any]) -> Any:
        import d3rlpy

        return d3rlpy.algos.TD3PlusBCConfig(
            **scalers,
            batch_size=self.batch_size,
            actor_learning_rate=self.actor_lr,
            critic_learning_rate=self.critic_lr,
            actor_encoder_factory=self.encoder(),
            critic_encoder_factory=self.encoder(),
            alpha=self.alpha,
            update_actor_interval=self.update_actor_interval,
            target_smoothing_sigma=self.target_smoothing_sigma,
            target_smoothing_clip=self.target_smoothing_clip,
        )


#: ReBRAC's (actor_beta, critic_beta) per D4RL dataset (Tarasov et al. 2023, as d3rlpy's
#: ``reproductions/offline/rebrac.py``): ``--set baseline.actor_beta=... critic_beta=...``.
REBRAC_BETAS: dict[str, tuple[float, float]] = {
    "halfcheetah-random": (0.001, 0.1),
    "halfcheetah-medium": (0.001, 0.01),
    "halfcheetah-expert": (0.01, 0.01),
    "halfcheetah-medium-replay": (0.01, 0.001),
    "halfcheetah-full-replay": (0.001, 0.1),
    "hopper-random": (0.001, 0.01),
    "hopper-medium": (0.01, 0.001),
    "hopper-expert": (0.1, 0.001),
    "hopper-medium-expert": (0.1, 0.01),
    "hopper-medium-replay": (0.05, 0.5),
    "hopper-full-replay": (0.01, 0.01),
    "walker2d-random": (0.01, 0.0),
    "walker2d-medium": (0.05, 0.1),
    "walker2d-expert": (0.01, 0.5),
    "walker2d-medium-expert": (0.01, 0.01),
    "walker2d-medium-replay": (0.05, 0.01),
    "walker2d-full-replay": (0.01, 0.01),
}


@dataclass
class ReBRACBaselineConfig(BaselineConfig):
    r"""d3rlpy ReBRAC (Tarasov et al. 2023): TD3+BC with decoupled actor and critic penalties,
    deeper networks, LayerNorm in the critics and large batches.

    :math:`J(\phi) = E[\lambda Q(s, \pi(s)) - \beta_1 (a - \pi(s))^2]`, :math:`\lambda = 1 /
    E|Q|`; the critic's target subtracts :math:`\beta_2 (a' - \hat a')^2`. DWM-MPC's base
    policy (arXiv 2603.22430): ``ipd baseline rebrac --adapter dwm``. Defaults: d3rlpy's
    reproduction script (3 x 256 layers, critic LayerNorm, batch 1024, lr 1e-3); the profile
    sets ``n_steps`` and ``hidden`` as for the other MLP baselines. The betas are the paper's
    for the dataset (:data:`REBRAC_BETAS`, the longest name the dataset's id contains:
    ``hopper-medium-replay`` gets its own, not ``hopper-medium``'s, which d3rlpy's script
    gives it), 0.01 / 0.01 for other data; ``--set`` wins.

    Args:
        actor_beta: :math:`\beta_1`, the actor's BC penalty. critic_beta: :math:`\beta_2`.
        critic_layer_norm: LayerNorm in the critic's hidden layers (ReBRAC's).
        update_actor_interval, target_smoothing_sigma, target_smoothing_clip: as TD3.
    """

    name: ClassVar[str] = "rebrac"

    # 1024-transition minibatches (ReBRAC, d3rlpy's reproduction)
    batch_size: int = 1024
    # deeper networks than the 2 x 256 of the other baselines (ReBRAC: 3 x 256)
    n_layers: int = 3
    actor_lr: float = 1e-3
    critic_lr: float = 1e-3
    # beta_1: weight of (a - pi(s))^2 in the actor loss; larger -> closer to the data
    # (the dataset's from REBRAC_BETAS where it has one: dataset_defaults)
    actor_beta: float = 0.01
    # beta_2: weight of (a' - a'_data)^2 in the critic target; larger -> more conservative Q
    critic_beta: float = 0.01
    # LayerNorm in the critic (ReBRAC's; the actor has none, as d3rlpy's reproduction)
    critic_layer_norm: bool = True
    # delayed actor updates and target-policy smoothing (TD3)
    update_actor_interval: int = 2
    target_smoothing_sigma: float = 0.2
    target_smoothing_clip: float = 0.5

    @classmethod
    def dataset_defaults(cls, dataset: str) -> dict[str, Any]:
        """The paper's (actor_beta, critic_beta) for ``dataset`` (:data:`REBRAC_BETAS`)."""
        text = dataset.replace("/", "-").lower()
        known = [name for name in REBRAC_BETAS if name in text]
        if not known:
            return {}
        actor_beta, critic_beta = REBRAC_BETAS[max(known, key=len)]
        return {"actor_beta": actor_beta, "critic_beta": critic_beta}

    def d3rlpy_config(self, scalers: dict[str, Any]) -> Any:
        import d3rlpy
        from d3rlpy.models.encoders import VectorEncoderFactory

        critic = VectorEncoderFactory(
            hidden_units=[self.hidden] * self.n_layers, use_layer_norm=self.critic_layer_norm
        )
        return d3rlpy.algos.ReBRACConfig(
            **scalers,
            batch_size=self.batch_size,
            actor_learning_rate=self.actor_lr,
            critic_learning_rate=self.critic_lr,
            actor_encoder_factory=self.encoder(),
            critic_encoder_factory=critic,
            actor_beta=self.actor_beta,
            critic_beta=self.critic_beta,
            update_actor_interval=self.update_actor_interval,
            target_smoothing_sigma=self.target_smoothing_sigma,
            target_smoothing_clip=self.target_smoothing_clip,
        )


@dataclass
class BCBaselineConfig(BaselineConfig):
    """d3rlpy BC: a deterministic MLP policy regressed on the dataset's actions (MSE).

    Args:
        learning_rate: Adam rate (d3rlpy's 1e-3).
    """

    name: ClassVar[str] = "bc"

    batch_size: int = 100
    learning_rate: float = 1e-3

    def d3rlpy_config(self, scalers: dict[str, Any]) -> Any:
        import d3rlpy

        return d3rlpy.algos.BCConfig(
            **scalers,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            encoder_factory=self.encoder(),
        )


@dataclass
class DTBaselineConfig(BaselineConfig):
    r"""d3rlpy Decision Transformer (Chen et al. 2021) conditioned on a hand-set return-to-go.

    :math:`L = E(a_t - \pi(\hat R_{t-K:t}, s_{t-K:t}, a_{t-K:t-1}))^2`; acting starts at
    :math:`\hat R_0` = ``target_return`` and subtracts each reward.

    Args:
        context, n_layer, n_embd, n_head, dropout: the transformer (the profile sets the IPD
            policy's sizes; d3rlpy's reproduction uses 20, 3, 128, 1, 0.1).
        learning_rate, weight_decay, grad_clip, warmup_steps: GPT-style AdamW with a linear
            warm-up (d3rlpy's reproduction: 1e-4, 1e-4, 0.25, 10k).
        reward_scale: rewards (and returns-to-go) x this (d3rlpy's reproduction: 0.001).
        target_return: the return asked for; None: the D4RL value for Hopper/HalfCheetah/
            Walker2d, else the best episode return of the dataset. An acting option: ``ipd
            eval RUN --set baseline.target_return=R`` re-scores a trained DT for another.
        max_timestep: size of the timestep embedding (>= the longest episode).
    """

    name: ClassVar[str] = "dt"
    sequence: ClassVar[bool] = True
    acting_options: ClassVar[tuple[str, ...]] = ("target_return",)

    batch_size: int = 64
    # timesteps per window (K)
    context: int = 20
    # transformer depth, width, heads (n_head must divide n_embd)
    n_layer: int = 3
    n_embd: int = 128
    n_head: int = 1
    # attention, residual and embedding dropout
    dropout: float = 0.1
    learning_rate: float = 1e-4
    weight_decay: float = 1e-4
    grad_clip: float = 0.25
    # linear learning-rate warm-up steps
    warmup_steps: int = 10_000
    # rewards and returns-to-go are multiplied by this before they become tokens
    reward_scale: float = 0.001
    # return asked for at the start of every episode (None: D4RL value or the dataset's best)
    target_return: float | None = None
    max_timestep: int = 1000
    checkpoint_every: int = 1_000
    log_every: int = 100

    def validate(self) -> None:
        super().validate()
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"baseline 'dt': n_embd={self.n_embd} must be divisible by n_head={self.n_head}"
            )
        for key in ("context", "n_layer", "n_embd", "n_head", "warmup_steps", "max_timestep"):
            if getattr(self, key) < 1:
                raise ValueError(f"baseline 'dt': {key} must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"baseline 'dt': dropout must be in [0, 1), got {self.dropout}")

    def reward_multiplier(self, dataset: TrajectoryDataset) -> float:
        return self.reward_scale

    def resolved_target(self, dataset: TrajectoryDataset, env_id: str | None) -> float:
        if self.target_return is not None:
            return float(self.target_return)
        for prefix, value in D4RL_TARGET_RETURNS.items():
            if env_id and env_id.startswith(prefix):
                return value
        return float(dataset.episode_returns().max())

    def d3rlpy_config(self, scalers: dict[str, Any]) -> Any:
        import d3rlpy
        from d3rlpy.models.encoders import VectorEncoderFactory
        from d3rlpy.optimizers import GPTAdamWFactory, WarmupSchedulerFactory

        return d3rlpy.algos.DecisionTransformerConfig(
            **scalers,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            optim_factory=GPTAdamWFactory(
                weight_decay=self.weight_decay,
                clip_grad_norm=self.grad_clip,
                lr_scheduler_factory=WarmupSchedulerFactory(warmup_steps=self.warmup_steps),
            ),
            encoder_factory=VectorEncoderFactory([self.n_embd], exclude_last_activation=True),
            context_size=self.context,
            num_heads=self.n_head,
            num_layers=self.n_layer,
            attn_dropout=self.dropout,
            resid_dropout=self.dropout,
            embed_dropout=self.dropout,
            max_timestep=self.max_timestep,
        )


#: The built-in baselines, in the order ``ipd plugins`` and the docs list them.
BUILTIN_BASELINES: tuple[type[BaselineConfig], ...] = (
    IQLBaselineConfig,
    CQLBaselineConfig,
    TD3PlusBCBaselineConfig,
    ReBRACBaselineConfig,
    BCBaselineConfig,
    DTBaselineConfig,
)


@hookimpl
def ipd_register_baseline() -> list[type[ComponentConfig]]:
    return list(BUILTIN_BASELINES)
