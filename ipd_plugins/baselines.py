"""d3rlpy baselines (IQL, CQL, TD3+BC, BC, Decision Transformer) on IPD's data and evaluator.

``ipd baseline ALGO --dataset SOURCE`` trains one of d3rlpy 2.8.1's algorithms on the very
:class:`~ipd_plugins.data.dataset.TrajectoryDataset` object ``ipd run`` uses (converted with
:func:`~ipd_plugins.data.d3rlpy_io.to_d3rlpy`), and scores its last checkpoint with
:meth:`ipd_plugins.runner.Pipeline.evaluate_actor`: the same episodes (evaluation seeds
``100_000 + seed``), the same D4RL normalisation, the same run-folder format
(``<out>/<name>/seed_<k>/{config.yaml, results.json, eval.json}``), so ``ipd compare`` reads
IPD runs and baselines alike.

Hyperparameters are d3rlpy's config defaults, with what d3rlpy's own D4RL reproduction scripts
(``reproductions/offline/*.py``) add on top: standardised observations for every algorithm
(d3rlpy ``StandardObservationScaler``, dataset statistics, as IPD's own components normalise),
actions mapped from the dataset's bounds to [-1, 1] (``MinMaxActionScaler``), IQL's rewards
scaled by ``1000 / (max - min episode return)`` (``ReturnBasedRewardScaler(1000)``) with a
cosine-annealed actor learning rate, and DT's GPT-style AdamW (weight decay 1e-4, gradient
clip 0.25, linear warm-up) with rewards x 0.001 and the D4RL target returns (Hopper 3600,
HalfCheetah 6000, Walker2d 5000). Network sizes and step budgets come from the profile's
``baseline`` section (see :mod:`ipd_plugins.profiles`): the MLPs of the value learner and the
transformer of the IPD policy.

Training drives d3rlpy's own ``update`` on its own minibatch samplers (what ``fit`` does each
step) so it can checkpoint and resume: every ``checkpoint_every`` steps the impl's modules and
optimisers (state dicts), the step and the RNG state go to ``train_state.pt`` with
``atomic_save``; a re-run loads them weights-only and continues. The finished weights live in
``<out>/cache/baseline/<key>/weights.pt`` keyed by the dataset hash, the config and the seed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from ipd_plugins.returns import reward_factor
from ipd_plugins.training import Checkpointer, atomic_save, safe_load
from registry.config import config_hash, dataclass_from_dict, dataclass_to_dict, identity_dict
from registry.protocols import BuildContext, Logger

if TYPE_CHECKING:
    from ipd_plugins.data.dataset import TrajectoryDataset
    from ipd_plugins.runner import RunSettings

__all__ = [
    "BaselineConfig",
    "IQLBaselineConfig",
    "CQLBaselineConfig",
    "TD3PlusBCBaselineConfig",
    "BCBaselineConfig",
    "DTBaselineConfig",
    "BASELINES",
    "D3rlpyBaseline",
    "DTActor",
    "resolve_baseline",
    "run_baseline",
    "baseline_identity",
    "baseline_run_name",
    "D4RL_TARGET_RETURNS",
]

_FORMAT = "ipd.baseline/1"

#: Decision Transformer's evaluation targets for the D4RL locomotion tasks (Chen et al. 2021,
#: d3rlpy's reproduction script), by the env id's prefix.
D4RL_TARGET_RETURNS: dict[str, float] = {
    "Hopper": 3600.0,
    "HalfCheetah": 6000.0,
    "Walker2d": 5000.0,
}


# -- configs ---------------------------------------------------------------------------------
@dataclass
class BaselineConfig:
    """Fields every baseline has: the step budget, minibatch, MLP sizes and checkpointing.

    Args:
        n_steps: gradient steps (the profile matches them to IPD's budgets).
        batch_size: minibatch (transitions; windows for ``dt``).
        hidden, n_layers: width and depth of every MLP encoder (paper: 2 x 256).
        checkpoint_every, log_every: steps between resumable checkpoints / ``log`` calls.
    """

    name: ClassVar[str] = ""

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

    def __post_init__(self) -> None:
        for key in ("batch_size", "hidden", "n_layers", "checkpoint_every", "log_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"baseline '{self.name}': {key} must be >= 1")
        if self.n_steps < 0:
            raise ValueError(f"baseline '{self.name}': n_steps must be >= 0, got {self.n_steps}")

    def to_dict(self) -> dict[str, Any]:
        return dataclass_to_dict(self)

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
        expectile: :math:`\tau`. weight_temp: :math:`\beta`. max_weight: :math:`w_{max}`.
        actor_lr, critic_lr: Adam rates; cosine_actor_lr anneals the actor's over n_steps.
        return_scale: rewards x ``return_scale / (max - min episode return)``; 0: unscaled.
    """

    name: ClassVar[str] = "iql"

    # expectile of V over Q: 0.5 = behaviour value, -> 1 = best in-support action
    expectile: float = 0.7
    # AWR inverse temperature: 0 -> behaviour cloning, larger -> greedier
    weight_temp: float = 3.0
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
            expectile=self.expectile,
            weight_temp=self.weight_temp,
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
            Walker2d, else the best episode return of the dataset.
        max_timestep: size of the timestep embedding (>= the longest episode).
    """

    name: ClassVar[str] = "dt"

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

    def __post_init__(self) -> None:
        super().__post_init__()
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


#: ``ipd baseline ALGO`` names -> config classes.
BASELINES: dict[str, type[BaselineConfig]] = {
    cls.name: cls
    for cls in (
        IQLBaselineConfig,
        CQLBaselineConfig,
        TD3PlusBCBaselineConfig,
        BCBaselineConfig,
        DTBaselineConfig,
    )
}


# -- acting ----------------------------------------------------------------------------------
class DTActor:
    """:class:`registry.protocols.Actor` over B envs: one d3rlpy stateful DT wrapper per env.

    d3rlpy's ``StatefulTransformerWrapper`` keeps one episode's rolling context and its
    return-to-go (``target_return`` minus the rewards so far); ``observe`` passes each env's
    last reward to its wrapper on the next ``act``.
    """

    def __init__(self, algo: Any, target_return: float):
        self.algo, self.target_return = algo, float(target_return)
        self.wrappers: list[Any] = []
        self.last_reward = np.zeros(0, np.float64)

    def reset(self, obs: torch.Tensor) -> None:
        B = int(obs.shape[0])
        self.wrappers = [
            self.algo.as_stateful_wrapper(target_return=self.target_return) for _ in range(B)
        ]
        self.last_reward = np.zeros(B, np.float64)

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        # a copy: d3rlpy's wrapper keeps the rows it is given as its context, so a view of the
        # caller's buffer would turn every past observation into the newest one
        x = np.array(torch.as_tensor(obs).detach().cpu().numpy(), np.float32, copy=True)  # (B, O)
        assert x.shape[0] == len(self.wrappers), (
            f"DTActor.act got {x.shape[0]} observations for {len(self.wrappers)} envs; call reset"
        )
        out = [w.predict(x[i], float(self.last_reward[i])) for i, w in enumerate(self.wrappers)]
        return torch.as_tensor(np.stack(out), dtype=torch.float32)  # (B, A)

    def observe(self, reward: torch.Tensor) -> None:
        self.last_reward = np.asarray(torch.as_tensor(reward).cpu().numpy(), np.float64).reshape(-1)


# -- the trainer -----------------------------------------------------------------------------
class D3rlpyBaseline:
    """A d3rlpy algorithm for a dataset: ``fit`` (resumable), ``actor``, ``save``, ``load``."""

    def __init__(self, config: BaselineConfig, ctx: BuildContext, dataset: TrajectoryDataset):
        low, high = np.asarray(ctx.act_low, float), np.asarray(ctx.act_high, float)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(high > low)):
            raise ValueError(
                f"baseline '{config.name}' needs finite action bounds with high > low; got "
                f"act_low={ctx.act_low}, act_high={ctx.act_high}"
            )
        if (dataset.obs_dim, dataset.act_dim) != (ctx.obs_dim, ctx.act_dim):
            raise ValueError(
                f"baseline '{config.name}': dataset has obs_dim={dataset.obs_dim}, act_dim="
                f"{dataset.act_dim}; the context says {ctx.obs_dim}, {ctx.act_dim}"
            )
        self.config, self.ctx = config, ctx
        self.is_dt = isinstance(config, DTBaselineConfig)
        self.step = 0
        obs = dataset.observations.astype(np.float64)
        self.obs_mean = obs.mean(0).astype(np.float32)
        self.obs_std = obs.std(0).astype(np.float32)
        self.reward_multiplier = float(config.reward_multiplier(dataset))
        self.target_return = (
            config.resolved_target(dataset, ctx.env_id)
            if isinstance(config, DTBaselineConfig)
            else None
        )
        if self.is_dt and int(dataset.episode_lengths.max()) > config.max_timestep:  # type: ignore[attr-defined]
            raise ValueError(
                f"baseline 'dt': episodes of {int(dataset.episode_lengths.max())} steps exceed "
                f"max_timestep={config.max_timestep}"  # type: ignore[attr-defined]
            )
        self._build()

    def _build(self) -> None:
        from d3rlpy.preprocessing import (
            MinMaxActionScaler,
            MultiplyRewardScaler,
            StandardObservationScaler,
        )

        ctx = self.ctx
        scalers = dict(
            observation_scaler=StandardObservationScaler(mean=self.obs_mean, std=self.obs_std),
            action_scaler=MinMaxActionScaler(
                minimum=np.asarray(ctx.act_low, np.float32),
                maximum=np.asarray(ctx.act_high, np.float32),
            ),
            reward_scaler=MultiplyRewardScaler(multiplier=self.reward_multiplier),
        )
        device = "cpu:0" if str(ctx.device) == "cpu" else str(ctx.device)
        with torch.random.fork_rng(devices=[]):  # seeded init, the caller's RNG untouched
            torch.manual_seed(ctx.seed)
            self.algo = self.config.d3rlpy_config(scalers).create(device=device)
            self.algo.create_impl((ctx.obs_dim,), ctx.act_dim)
        self.impl = self.algo.impl
        self.modules = self.impl.modules

    def _state(self) -> dict[str, Any]:
        """name -> d3rlpy module / optimiser wrapper (each has state_dict/load_state_dict)."""
        return dict(self.modules.create_checkpointer(self.impl.device).modules)

    # acting
    def actor(self) -> Any:
        """The evaluator's :class:`~registry.protocols.Actor` for this algorithm."""
        from ipd_plugins.evaluate import CallableActor

        self.modules.set_eval()
        if self.is_dt:
            return DTActor(self.algo, self.target_return)
        return CallableActor(self.algo.predict, as_numpy=True)

    # persistence
    def save(self, path: Path) -> None:
        """Module state dicts and scalings, weights-only (never d3rlpy's pickle)."""
        atomic_save(
            {
                "format": _FORMAT,
                "algo": self.config.name,
                "obs_dim": self.ctx.obs_dim,
                "act_dim": self.ctx.act_dim,
                "step": self.step,
                "config": self.config.to_dict(),
                "obs_mean": torch.from_numpy(self.obs_mean),
                "obs_std": torch.from_numpy(self.obs_std),
                "reward_multiplier": self.reward_multiplier,
                "target_return": self.target_return,
                "state": {k: m.state_dict() for k, m in self.modules.get_torch_modules().items()},
            },
            path,
        )

    def load(self, path: Path) -> None:
        blob = safe_load(path)
        if not isinstance(blob, dict) or blob.get("format") != _FORMAT:
            raise ValueError(f"{path} is not an ipd baseline checkpoint (format {_FORMAT})")
        if blob["algo"] != self.config.name:
            raise ValueError(f"{path} holds a '{blob['algo']}' baseline, not '{self.config.name}'")
        dims = (blob["obs_dim"], blob["act_dim"])
        if dims != (self.ctx.obs_dim, self.ctx.act_dim):
            raise ValueError(f"{path} was trained for obs_dim, act_dim = {dims}")
        self.obs_mean, self.obs_std = blob["obs_mean"].numpy(), blob["obs_std"].numpy()
        self.reward_multiplier = float(blob["reward_multiplier"])
        self.target_return = blob.get("target_return")
        self._build()
        try:
            for name, module in self.modules.get_torch_modules().items():
                module.load_state_dict(blob["state"][name])
        except (RuntimeError, KeyError) as err:
            raise ValueError(f"{path} does not fit this baseline's networks: {err}") from err
        self.modules.set_eval()
        self.step = int(blob.get("step", 0))

    # training
    def fit(
        self, dataset: TrajectoryDataset, work_dir: Path | None = None, log: Logger | None = None
    ) -> dict[str, float]:
        """``n_steps`` of d3rlpy's update on ``dataset``; resumes from ``work_dir``'s checkpoint."""
        from ipd_plugins.data.d3rlpy_io import to_d3rlpy

        buffer = to_d3rlpy(dataset)
        np_state = np.random.get_state()  # d3rlpy samples with the global numpy RNG
        try:
            with torch.random.fork_rng(devices=[]):
                np.random.seed(self.ctx.seed % 2**32)
                torch.manual_seed(self.ctx.seed)
                return self._loop(buffer, work_dir, log)
        finally:
            np.random.set_state(np_state)

    def _sample(self, buffer: Any) -> Any:
        cfg = self.config
        if self.is_dt:
            return buffer.sample_trajectory_batch(cfg.batch_size, length=cfg.context)  # type: ignore[attr-defined]
        return buffer.sample_transition_batch(cfg.batch_size)

    def _loop(self, buffer: Any, work_dir: Path | None, log: Logger | None) -> dict[str, float]:
        cfg = self.config
        ckpt = Checkpointer(work_dir, every=cfg.checkpoint_every, name="train_state")
        objects = self._state()
        start = ckpt.restore(objects)
        self.step = start
        self.algo._grad_step = start  # TD3+BC's delayed actor updates count d3rlpy's grad steps
        self.modules.set_train()
        sums: dict[str, float] = {}
        count, last = 0, {}
        t0 = time.perf_counter()
        bar = tqdm(
            total=cfg.n_steps,
            initial=min(start, cfg.n_steps),
            desc=cfg.name,
            disable=None,
            leave=False,
        )
        try:
            for step in range(start + 1, cfg.n_steps + 1):
                metrics = self.algo.update(self._sample(buffer))
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                count += 1
                self.step = step
                bar.update(1)
                if step % cfg.log_every == 0 or step == cfg.n_steps:
                    last = {k: v / count for k, v in sums.items()}
                    sums, count = {}, 0
                    if not all(math.isfinite(v) for v in last.values()):
                        raise FloatingPointError(
                            f"baseline '{cfg.name}': non-finite losses at step {step}: {last}"
                        )
                    if log is not None:
                        log(step, dict(last))
                if step % cfg.checkpoint_every == 0 or step == cfg.n_steps:
                    ckpt.maybe_save(step, objects, force=True)
        finally:
            bar.close()
            self.modules.set_eval()
        elapsed = time.perf_counter() - t0
        trained = max(0, cfg.n_steps - start)
        return {
            **last,
            "steps": float(self.step),
            "steps_trained": float(trained),
            "steps_per_sec": trained / elapsed if trained and elapsed > 0 else 0.0,
        }


# -- config resolution and the run ---------------------------------------------------------
def resolve_baseline(
    algo: str,
    profile: str,
    file: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
) -> BaselineConfig:
    """d3rlpy defaults < the profile's ``baseline`` section (shared keys, then its ``algo``
    sub-section) < a config file's ``baseline`` section < ``--set baseline.KEY=VALUE``."""
    from ipd_plugins.profiles import PROFILES

    if algo not in BASELINES:
        raise ValueError(f"unknown baseline '{algo}'; baselines: {', '.join(BASELINES)}")
    if profile not in PROFILES:
        raise ValueError(f"unknown profile '{profile}'; profiles: {', '.join(PROFILES)}")
    cls = BASELINES[algo]
    fields = {f.name for f in dataclasses.fields(cls)}
    section = PROFILES[profile].get("baseline", {})
    values = {k: v for k, v in section.items() if k in fields and not isinstance(v, dict)}
    values.update({k: v for k, v in section.get(algo, {}).items() if k in fields})
    values.update(file or {})
    values.update(overrides or {})
    return dataclass_from_dict(cls, values, f"baseline '{algo}'")


def _slug(source: str) -> str:
    return source.replace("/", "_").replace(".", "_").strip("_") or "dataset"


def baseline_run_name(settings: RunSettings, config: BaselineConfig) -> str:
    """``<dataset>__baseline-<algo>__<hash of the config and run settings except seed>``."""
    if settings.name:
        return settings.name
    body = baseline_identity(settings, config)
    return f"{_slug(settings.dataset)}__baseline-{config.name}__{config_hash(body)[:8]}"


def baseline_identity(settings: RunSettings, config: BaselineConfig) -> dict[str, Any]:
    """What a baseline's run-folder hash covers (cf. ``RunConfig.identity_dict``)."""
    return {
        "baseline": {"algo": config.name, **identity_dict(config)},
        "run": settings.identity_dict(),
    }


def run_baseline(
    algo: str,
    run: dict[str, Any] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    file: dict[str, Any] | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train (or resume / reuse) and evaluate one seed of a baseline; returns ``results.json``.

    ``run`` holds :class:`~ipd_plugins.runner.RunSettings` values (``None`` = default);
    ``overrides`` the parsed ``--set`` options (sections ``run`` and ``baseline``); ``file`` a
    config file (sections ``run`` and ``baseline``; a baseline run's ``config.yaml`` replays it).
    """
    from ipd_plugins.runner import (
        Pipeline,
        atomic_write_text,
        resolve_config,
        run_meta,
        write_json,
    )

    file, overrides = dict(file or {}), dict(overrides or {})
    unknown = set(overrides) - {"run", "baseline"}
    if unknown:
        raise ValueError(
            "ipd baseline: --set sections must be 'run' or 'baseline', got "
            + ", ".join(sorted(unknown))
        )
    t_start = time.perf_counter()
    run_values = {**file.get("run", {}), **{k: v for k, v in (run or {}).items() if v is not None}}
    run_values.update(overrides.get("run", {}))
    file_baseline = dict(file.get("baseline", {}))
    file_algo = file_baseline.pop("algo", algo)
    if file_algo != algo:
        raise ValueError(f"the config file is for baseline '{file_algo}', not '{algo}'")
    cfg = resolve_config(run=run_values)  # the run settings, profile defaults included
    settings = cfg.run
    bconf = resolve_baseline(algo, settings.profile, file_baseline, overrides.get("baseline"))
    name = baseline_run_name(settings, bconf)
    run_dir = Path(settings.out_dir) / name / f"seed_{settings.seed}"

    if settings.threads:
        torch.set_num_threads(settings.threads)
    pipe = Pipeline(cfg, echo=echo, progress=False)
    ds = pipe.load_dataset()
    ctx = pipe.build_context(ds)
    if ctx.env_id is None:
        raise ValueError(
            f"dataset '{ds.name}' does not name its environment; pass --set run.env_id=ENV_ID"
        )
    data_hash = ds.content_hash()
    run_dir.mkdir(parents=True, exist_ok=True)
    config_out = {
        "run": dataclass_to_dict(settings),
        "baseline": {"algo": algo, **bconf.to_dict()},
        "meta": run_meta(data_hash, f"ipd baseline {algo} --config {run_dir / 'config.yaml'}"),
    }
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config_out, sort_keys=False))
    echo(f"run folder: {run_dir}")

    baseline = D3rlpyBaseline(bconf, ctx, ds)
    key = config_hash("baseline", algo, data_hash, identity_dict(bconf), ctx.env_id, settings.seed)
    folder = (Path(settings.out_dir) / "cache" / "baseline" / key).resolve()
    done = folder / "done.json"
    if done.exists():
        info = json.loads(done.read_text())
        echo(f"[{algo}] reusing {folder} (trained {info.get('finished', '?')})")
        baseline.load(folder / "weights.pt")
        reused = True
    else:
        resumed = folder.exists() and any(folder.iterdir())
        folder.mkdir(parents=True, exist_ok=True)
        echo(f"[{algo}] {'resuming' if resumed else 'training'} {bconf.n_steps} steps -> {folder}")
        from ipd_plugins.runner import CurveLogger
        from ipd_plugins.training import seed_everything

        seed_everything(settings.seed)
        log = CurveLogger(algo, folder, run_dir / "tb")
        t0 = time.perf_counter()
        try:
            metrics = baseline.fit(ds, work_dir=folder, log=log)
        finally:
            log.close()
        baseline.save(folder / "weights.pt")
        info = {
            "seconds": time.perf_counter() - t0,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            "metrics": metrics,
        }
        write_json(done, info)
        reused = False
    write_json(
        run_dir / "stages.json",
        {"train": {"key": key, "path": str(folder), "reused": reused, **info}},
    )

    n = settings.eval_episodes
    echo(f"[evaluate] {n} episodes of {ctx.env_id}")
    scores = {"policy": pipe.evaluate_actor(baseline.actor(), ds, ctx, n).to_dict()}
    write_json(run_dir / "eval.json", scores)
    results = {
        "dataset": {"source": settings.dataset, "hash": data_hash, **ds.summary()},
        "method": algo,
        "label": algo,
        "components": {"baseline": algo},
        "seed": settings.seed,
        "scores": scores,
        "target_return": baseline.target_return,
        "train": info.get("metrics", {}),
        "stage_seconds": {"train": info.get("seconds")},
        "stage_reused": {"train": reused},
        "wall_seconds": time.perf_counter() - t_start,
    }
    write_json(run_dir / "results.json", results)
    return results


@dataclass
class TrainedBaseline:
    """A finished baseline run folder reloaded: its pipeline (for evaluation), data and model."""

    pipeline: Any
    dataset: TrajectoryDataset
    ctx: BuildContext
    baseline: D3rlpyBaseline


def load_trained_baseline(run_dir: str | Path) -> TrainedBaseline:
    """Rebuild the baseline of a finished ``ipd baseline`` seed folder with its trained weights
    (the counterpart of :func:`ipd_plugins.runner.load_trained` for IPD runs)."""
    from ipd_plugins.runner import Pipeline, resolve_config

    run_dir = Path(run_dir)
    conf = yaml.safe_load((run_dir / "config.yaml").read_text())
    if not isinstance(conf, dict) or "baseline" not in conf:
        raise ValueError(f"{run_dir} is not an `ipd baseline` run folder (no baseline section)")
    stages_path = run_dir / "stages.json"
    if not stages_path.exists():
        raise FileNotFoundError(f"{run_dir} has no stages.json: the run did not finish training")
    values = {k: v for k, v in conf["baseline"].items() if k != "algo"}
    cfg = resolve_config(run=conf["run"])
    bconf = resolve_baseline(conf["baseline"]["algo"], cfg.run.profile, values, None)
    pipe = Pipeline(cfg, echo=lambda m: None, progress=False)
    ds = pipe.load_dataset()
    ctx = pipe.build_context(ds)
    baseline = D3rlpyBaseline(bconf, ctx, ds)
    baseline.load(Path(json.loads(stages_path.read_text())["train"]["path"]) / "weights.pt")
    return TrainedBaseline(pipe, ds, ctx, baseline)


# -- `ipd baseline` ----------------------------------------------------------------------------
def _baseline_command() -> Any:
    import click

    from ipd_plugins.run_cli import parse_seeds, print_scores, summarise_seeds

    @click.command("baseline")
    @click.argument("algo", type=click.Choice(list(BASELINES)))
    @click.option(
        "--dataset",
        help="Minari id, .hdf5/.h5/.npz path or `ipd data make` name (default: the profile's).",
    )
    @click.option("--seed", type=int, help="seed of training and evaluation (default 0)")
    @click.option("--seeds", help="several seeds in one command, e.g. 0,1,2")
    @click.option(
        "--profile",
        type=click.Choice(["quick", "default", "paper"]),
        help="step budgets and sizes matched to `ipd run`'s profile (default quick).",
    )
    @click.option(
        "--config",
        "config_file",
        type=click.Path(exists=True),
        help="YAML/TOML file with `run` and `baseline` sections; a baseline run folder replays it.",
    )
    @click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="SECTION.KEY=VALUE",
        help="e.g. --set baseline.n_steps=5000 --set baseline.target_return=3000 "
        "--set run.threads=2",
    )
    @click.option("--out", "out_dir", help="folder for run folders and the cache (default runs)")
    @click.option("--name", help="run folder name (default: dataset, algorithm and config hash)")
    @click.option("--device", help="torch device (default cpu)")
    @click.option("--eval-episodes", type=int, help="evaluation episodes (default: profile's)")
    def baseline(
        algo,
        dataset,
        seed,
        seeds,
        profile,
        config_file,
        overrides,
        out_dir,
        name,
        device,
        eval_episodes,
    ) -> None:
        """Train a d3rlpy baseline (iql, cql, td3+bc, bc, dt) and score it like `ipd run`.

        The baseline trains on the same dataset object as `ipd run` and is evaluated by the
        same evaluator (same episodes and seeds, D4RL-normalised x100, last checkpoint);
        results land in the same run-folder format, so `ipd compare` reads both.
        Step budgets follow the profile (MLP baselines: the value learner's steps; dt: the IPD
        policy's steps and transformer size). Training resumes from its last checkpoint.

        \b
        Examples:
          ipd baseline iql --dataset hopper-medium --profile default --seeds 0,1,2
          ipd baseline dt --dataset hopper-medium --set baseline.target_return=3600
          ipd compare runs/
        """
        from ipd_plugins.runner import load_config_file, parse_overrides

        def echo(msg: str) -> None:
            click.echo(msg, err=True)

        try:
            seed_list = parse_seeds(seed, seeds)
            file = load_config_file(config_file) if config_file else {}
            parsed = _parse_baseline_overrides(overrides, parse_overrides)
        except (ValueError, FileNotFoundError) as err:
            raise click.UsageError(str(err)) from err
        all_results = []
        for s in seed_list:
            run = {
                "dataset": dataset,
                "seed": s,
                "profile": profile,
                "out_dir": out_dir,
                "name": name,
                "device": device,
                "eval_episodes": eval_episodes,
            }
            try:
                results = run_baseline(algo, run=run, overrides=parsed, file=file, echo=echo)
            except (KeyError, ValueError) as err:
                raise click.UsageError(
                    str(err.args[0] if isinstance(err, KeyError) else err)
                ) from err
            print_scores(results)
            all_results.append(results)
        if len(all_results) > 1:
            summarise_seeds(all_results)

    return baseline


def _parse_baseline_overrides(
    pairs: tuple[str, ...], parse_overrides: Callable[[list[str]], dict[str, dict[str, Any]]]
) -> dict[str, dict[str, Any]]:
    """``--set`` for baselines: ``baseline.KEY=VALUE`` plus the runner's ``run.KEY=VALUE``."""
    out: dict[str, dict[str, Any]] = {}
    rest = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        section, dot, name = key.strip().partition(".")
        if section == "baseline":
            if not sep or not dot or not name:
                raise ValueError(f"--set expects SECTION.KEY=VALUE, got {pair!r}")
            out.setdefault("baseline", {})[name] = value.strip()
        elif section == "run":
            rest.append(pair)
        else:
            raise ValueError(
                f"--set {pair!r}: ipd baseline takes the sections 'baseline' and 'run'"
            )
    out.update(parse_overrides(rest))
    return out


baseline_command = _baseline_command()
__all__ += ["baseline_command"]
