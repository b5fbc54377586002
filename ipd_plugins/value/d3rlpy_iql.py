"""`d3rlpy-iql`: the value-learner protocol backed by d3rlpy 2.8.1's IQL (the baseline's values).

IQL (Kostrikov et al. 2021, https://arxiv.org/abs/2110.06169) as d3rlpy implements it
(``d3rlpy/algos/qlearning/iql.py``, ``torch/iql_impl.py``): V by the plain expectile loss
``|tau - 1(u < 0)| u^2`` on ``u = min_e Q_target_e(s,a) - V(s)``, Q by eq. 4 of the IPD paper,
the policy by AWR with weights ``min(exp(beta u), max_weight)``. This is what the paper's
``qov`` (``ipd_plugins.value.qov``) changes: ``qov`` swaps the expectile for the
Huber-expectile of eq. 1-2 and adds the actor dropout and a fused implementation. Having both
behind one protocol lets the runner feed d3rlpy's IQL baseline to the same pipeline.

The dataset goes to d3rlpy through :func:`ipd_plugins.data.d3rlpy_io.to_d3rlpy` (d3rlpy's
episode layout: the last step of a truncated episode has no next observation and is not
sampled). Training runs d3rlpy's own ``sample_transition_batch`` + ``update`` loop (what
``IQL.fit`` does per step) so it can checkpoint and resume; ``save`` writes the modules' state
dicts with ``atomic_save`` (d3rlpy's ``save_model`` would need a full unpickle to read back).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from ipd_plugins.data.d3rlpy_io import (
    load_module_states,
    module_states,
    run_updates,
    seeded,
    to_d3rlpy,
)
from ipd_plugins.files import atomic_save, safe_load
from ipd_plugins.returns import reward_factor
from ipd_plugins.training import Checkpointer
from registry import hookimpl
from registry.config import ComponentConfig, renamed
from registry.protocols import BuildContext, Logger

if TYPE_CHECKING:
    from ipd_plugins.data.dataset import TrajectoryDataset

__all__ = ["D3rlpyIQLConfig", "D3rlpyIQLLearner", "ipd_register_value"]

_FORMAT = "ipd.value.d3rlpy-iql/1"


@dataclass
class D3rlpyIQLConfig(ComponentConfig):
    r"""d3rlpy's IQL behind the :class:`registry.protocols.ValueLearner` protocol.

    .. math::

        L_V = E_D[|\tau - 1(u < 0)| u^2],\quad u = \min_e Q_{\hat\theta_e}(s,a) - V(s)

        L_Q = E_D[(r + \gamma (1 - d) V(s') - Q_\theta(s,a))^2]

        L_\pi = -E_D[\min(e^{\beta u}, w_{max}) \log \pi(a|s)]

    Observations are standardised (d3rlpy ``StandardObservationScaler``, statistics of the
    dataset), actions mapped from the build context's bounds to [-1, 1] (``MinMaxActionScaler``),
    rewards multiplied (``MultiplyRewardScaler``); Q and V are reported in the dataset's units.

    Args:
        tau: :math:`\tau` (0.7). beta: :math:`\beta` (3); the same names as ``qov`` (d3rlpy's
            ``expectile``/``weight_temp`` are accepted). max_weight: :math:`w_{max}`.
        gamma, tau_target, n_critics: discount, soft target rate, size of the Q ensemble.
        hidden, n_layers: the MLP encoders of the actor, critics and value (2 x 256).
        actor_lr, critic_lr: Adam learning rates; ``cosine_actor_lr`` anneals the actor's over
            ``n_steps`` (d3rlpy's IQL reproduction script does, and the IQL paper).
        batch_size, n_steps: minibatch and gradient steps (the runner overrides n_steps).
        reward_scale, normalize_rewards: as in ``qov`` (``1000 / (max - min episode return)``
            is d3rlpy's ``ReturnBasedRewardScaler(multiplier=1000)``).
        checkpoint_every, log_every: steps between resumable checkpoints / ``log`` calls.
    """

    kind: ClassVar[str] = "value"
    name: ClassVar[str] = "d3rlpy-iql"

    # tau, the expectile of V over Q (d3rlpy: `expectile`, still accepted): 0.5 = behaviour
    # value, -> 1 = best in-support action. IQL: 0.7.
    tau: float = renamed(0.7, was="expectile")
    # beta, the AWR inverse temperature (d3rlpy: `weight_temp`, still accepted): 0 -> behaviour
    # cloning, larger -> greedier. IQL: 3.
    beta: float = renamed(3.0, was="weight_temp")
    # clip of the AWR weights (d3rlpy's default 100).
    max_weight: float = 100.0
    # discount.
    gamma: float = 0.99
    # soft target-update rate of the critics; larger -> faster, less stable.
    tau_target: float = 0.005
    # number of Q functions (min over them for V's target).
    n_critics: int = 2
    # width and depth of every encoder (actor, critics, value).
    hidden: int = 256
    n_layers: int = 2
    # Adam learning rates.
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    # cosine-anneal the actor's learning rate over n_steps (d3rlpy's IQL reproduction does).
    cosine_actor_lr: bool = True
    # minibatch size; gradient steps (paper-scale default; the runner sets it per profile).
    batch_size: int = 256
    n_steps: int = 1_000_000
    # constant factor on rewards; IQL's locomotion normalisation on top when normalize_rewards.
    reward_scale: float = 1.0
    normalize_rewards: bool = True
    # steps between resumable checkpoints / log calls.
    checkpoint_every: int = 5_000
    log_every: int = 1_000

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"value 'd3rlpy-iql': {what}")

        need(0.0 < self.tau < 1.0, f"tau (the expectile) must be in (0, 1), got {self.tau}")
        need(self.beta >= 0.0, f"beta (AWR inverse temperature) must be >= 0, got {self.beta}")
        need(self.max_weight > 0.0, f"max_weight must be > 0, got {self.max_weight}")
        need(0.0 <= self.gamma < 1.0, f"gamma must be in [0, 1), got {self.gamma}")
        need(0.0 < self.tau_target <= 1.0, f"tau_target must be in (0, 1], got {self.tau_target}")
        need(self.n_critics >= 1, f"n_critics must be >= 1, got {self.n_critics}")
        need(
            self.hidden >= 1 and self.n_layers >= 1,
            f"hidden and n_layers must be >= 1, got {self.hidden}, {self.n_layers}",
        )
        need(
            self.actor_lr > 0.0 and self.critic_lr > 0.0,
            f"learning rates must be > 0, got {self.actor_lr}, {self.critic_lr}",
        )
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(self.n_steps >= 1, f"n_steps must be >= 1, got {self.n_steps}")
        need(self.reward_scale > 0.0, f"reward_scale must be > 0, got {self.reward_scale}")
        need(
            self.checkpoint_every >= 1 and self.log_every >= 1,
            "checkpoint_every and log_every must be >= 1",
        )

    def create(self, ctx: BuildContext) -> D3rlpyIQLLearner:
        return D3rlpyIQLLearner(self, ctx)


class D3rlpyIQLLearner:
    """d3rlpy IQL as a :class:`registry.protocols.ValueLearner`.

    ``q`` is the min over d3rlpy's *target* critics (as ``qov``), differentiable w.r.t.
    ``act``; ``v`` is d3rlpy's value function; ``act`` is d3rlpy's ``predict_best_action``
    (``tanh`` of the policy mean) or a sample of its Gaussian, mapped to the action bounds.
    """

    def __init__(self, config: D3rlpyIQLConfig, ctx: BuildContext):
        low, high = np.asarray(ctx.act_low, float), np.asarray(ctx.act_high, float)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(high > low)):
            raise ValueError(
                "value 'd3rlpy-iql' needs finite action bounds with high > low; got "
                f"act_low={ctx.act_low}, act_high={ctx.act_high}"
            )
        self.config = config
        self.ctx = ctx
        self.gamma = float(config.gamma)
        self.step = 0
        O = ctx.obs_dim
        self._build(np.zeros(O, np.float32), np.ones(O, np.float32), 1.0)

    # -- construction --------------------------------------------------------------------
    def _build(self, obs_mean: np.ndarray, obs_std: np.ndarray, reward_scale: float) -> None:
        """(Re)create the d3rlpy algorithm and its torch modules for these scalings."""
        import d3rlpy
        from d3rlpy.models.encoders import VectorEncoderFactory
        from d3rlpy.optimizers import AdamFactory, CosineAnnealingLRFactory
        from d3rlpy.preprocessing import (
            MinMaxActionScaler,
            MultiplyRewardScaler,
            StandardObservationScaler,
        )

        cfg, ctx = self.config, self.ctx
        encoder = VectorEncoderFactory(hidden_units=[cfg.hidden] * cfg.n_layers)
        actor_optim = AdamFactory(
            lr_scheduler_factory=CosineAnnealingLRFactory(T_max=max(1, cfg.n_steps))
            if cfg.cosine_actor_lr
            else None
        )
        self.obs_mean = np.asarray(obs_mean, np.float32)
        self.obs_std = np.asarray(obs_std, np.float32)
        self.reward_scale = float(reward_scale)
        algo_cfg = d3rlpy.algos.IQLConfig(
            observation_scaler=StandardObservationScaler(mean=self.obs_mean, std=self.obs_std),
            action_scaler=MinMaxActionScaler(
                minimum=np.asarray(ctx.act_low, np.float32),
                maximum=np.asarray(ctx.act_high, np.float32),
            ),
            reward_scaler=MultiplyRewardScaler(multiplier=self.reward_scale),
            actor_learning_rate=cfg.actor_lr,
            critic_learning_rate=cfg.critic_lr,
            actor_optim_factory=actor_optim,
            actor_encoder_factory=encoder,
            critic_encoder_factory=encoder,
            value_encoder_factory=encoder,
            batch_size=cfg.batch_size,
            gamma=cfg.gamma,
            tau=cfg.tau_target,
            n_critics=cfg.n_critics,
            expectile=cfg.tau,
            weight_temp=cfg.beta,
            max_weight=cfg.max_weight,
        )
        device = str(ctx.device)
        if device == "cpu":
            device = "cpu:0"  # d3rlpy's spelling
        with torch.random.fork_rng(devices=[]):  # seeded init, caller's RNG untouched
            torch.manual_seed(self.ctx.seed)
            self.algo = algo_cfg.create(device=device)
            self.algo.create_impl((ctx.obs_dim,), ctx.act_dim)
        self.impl = self.algo.impl
        self.modules = self.impl.modules
        self.modules.targ_q_funcs.requires_grad_(False)  # q() lets gradients reach act only
        self.modules.set_eval()

    def _state(self) -> dict[str, Any]:
        """name -> module/optimiser wrapper (all have state_dict/load_state_dict)."""
        return dict(self.modules.create_checkpointer(self.impl.device).modules)

    # -- the protocol: queries -------------------------------------------------------------
    def _check(self, name: str, x: torch.Tensor, dim: int, what: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != dim:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"d3rlpy-iql.{name}: {what} must be a (B,{dim}) tensor, got {shape}")
        return x.to(self.impl.device, torch.float32)

    def _obs(self, obs: torch.Tensor) -> torch.Tensor:
        return self.algo.observation_scaler.transform(obs)

    def q(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """(B,O), (B,A) -> (B,): min over d3rlpy's target critics, in dataset reward units."""
        obs = self._check("q", obs, self.ctx.obs_dim, "obs")
        act = self._check("q", act, self.ctx.act_dim, "act")
        if obs.shape[0] != act.shape[0]:
            raise ValueError(f"d3rlpy-iql.q: obs has {obs.shape[0]} rows, act {act.shape[0]}")
        act_u = self.algo.action_scaler.transform(act)
        q = self.impl._targ_q_func_forwarder.compute_expected_q(self._obs(obs), act_u, "min")
        return q.reshape(-1) / self.reward_scale

    @torch.no_grad()
    def v(self, obs: torch.Tensor) -> torch.Tensor:
        """(B,O) -> (B,): d3rlpy's V(s), in dataset reward units."""
        obs = self._check("v", obs, self.ctx.obs_dim, "obs")
        return self.modules.value_func(self._obs(obs)).reshape(-1) / self.reward_scale

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """(B,O) -> (B,A): tanh(policy mean) or a clipped Gaussian sample, in the bounds."""
        from d3rlpy.models.torch import build_gaussian_distribution

        obs = self._check("act", obs, self.ctx.obs_dim, "obs")
        out = self.modules.policy(self._obs(obs))
        u = out.squashed_mu if deterministic else build_gaussian_distribution(out).sample()
        return self.algo.action_scaler.reverse_transform(u.clamp(-1.0, 1.0))

    # -- the protocol: persistence ---------------------------------------------------------
    def save(self, path: Path) -> None:
        """Module state dicts, scalings and config, weights-only (never d3rlpy's pickle)."""
        state = module_states(self.modules)
        atomic_save(
            {
                "format": _FORMAT,
                "obs_dim": self.ctx.obs_dim,
                "act_dim": self.ctx.act_dim,
                "step": self.step,
                "config": self.config.to_dict(),
                "obs_mean": torch.from_numpy(self.obs_mean),
                "obs_std": torch.from_numpy(self.obs_std),
                "reward_scale": self.reward_scale,
                "state": state,
            },
            path,
        )

    def load(self, path: Path) -> None:
        blob = safe_load(path)
        if not isinstance(blob, dict) or blob.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a d3rlpy-iql checkpoint (format {_FORMAT})")
        dims = (blob["obs_dim"], blob["act_dim"])
        if dims != (self.ctx.obs_dim, self.ctx.act_dim):
            raise ValueError(
                f"{path} was trained for obs_dim, act_dim = {dims}, this learner is built for "
                f"{(self.ctx.obs_dim, self.ctx.act_dim)}"
            )
        self._build(blob["obs_mean"].numpy(), blob["obs_std"].numpy(), blob["reward_scale"])
        load_module_states(self.modules, blob["state"], path, "learner")
        self.step = int(blob.get("step", 0))

    # -- training ------------------------------------------------------------------------
    def fit(
        self, dataset: TrajectoryDataset, work_dir: Path | None = None, log: Logger | None = None
    ) -> dict[str, float]:
        """``n_steps`` of d3rlpy's IQL update on ``dataset``, resumable from ``work_dir``."""

        cfg = self.config
        if (dataset.obs_dim, dataset.act_dim) != (self.ctx.obs_dim, self.ctx.act_dim):
            raise ValueError(
                f"d3rlpy-iql.fit: dataset has obs_dim={dataset.obs_dim}, act_dim="
                f"{dataset.act_dim}; the learner was built for {self.ctx.obs_dim}, "
                f"{self.ctx.act_dim}"
            )
        factor = reward_factor(dataset, cfg.reward_scale, cfg.normalize_rewards)
        obs = dataset.observations.astype(np.float64)
        self._build(obs.mean(0), obs.std(0), factor)  # the same statistics d3rlpy would fit
        buffer = to_d3rlpy(dataset)
        with seeded(self.ctx.seed):
            return self._loop(buffer, work_dir, log)

    def _loop(self, buffer: Any, work_dir: Path | None, log: Logger | None) -> dict[str, float]:
        cfg = self.config
        ckpt = Checkpointer(work_dir, every=cfg.checkpoint_every, name="d3rlpy_iql_train_state")
        objects = self._state()
        start = ckpt.restore(objects)
        self.step = start

        def save(step: int) -> None:
            self.step = step
            ckpt.maybe_save(step, objects, force=True)

        metrics = run_updates(
            self.algo,
            lambda: buffer.sample_transition_batch(cfg.batch_size),
            start,
            cfg.n_steps,
            cfg.log_every,
            cfg.checkpoint_every,
            save,
            log,
            "d3rlpy-iql",
        )
        self.step = int(metrics["steps"])
        return {**metrics, "reward_scale": self.reward_scale}


@hookimpl
def ipd_register_value() -> list[type[ComponentConfig]]:
    return [D3rlpyIQLConfig]
