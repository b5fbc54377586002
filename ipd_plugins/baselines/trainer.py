"""A d3rlpy algorithm behind ipd's plumbing: resumable training, weights-only saves, acting.

Training drives d3rlpy's own ``update`` on its own minibatch samplers (what ``fit`` does each
step) so it can checkpoint and resume: every ``checkpoint_every`` steps the impl's modules and
optimisers (state dicts), the step and the RNG state go to ``train_state.pt``; a re-run loads
them weights-only and continues. Saved weights never use d3rlpy's pickles.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from ipd_plugins.training import Checkpointer
from registry.protocols import BuildContext, Logger

if TYPE_CHECKING:
    from ipd_plugins.baselines.configs import BaselineConfig
    from ipd_plugins.data.dataset import TrajectoryDataset

__all__ = ["D3rlpyBaseline", "DTActor", "D3rlpyActor"]

_FORMAT = "ipd.baseline/1"


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


class D3rlpyActor:
    """:class:`registry.protocols.Actor` of a d3rlpy MLP algorithm: its greedy action
    (``predict``), and a :class:`registry.protocols.AdaptableActor` over its policy network.

    The adapted weights are those of ``impl.policy`` (the imitator for BC): "all", or "head"
    (the output layer: ``_fc`` of a deterministic policy, ``_mu`` of a Gaussian one). The
    differentiable action is d3rlpy's greedy one written in torch: observation scaler, the
    policy's ``squashed_mu``, action scaler reversed.
    """

    def __init__(self, algo: Any):
        from ipd_plugins.evaluate import CallableActor

        self.algo = algo
        self._greedy = CallableActor(algo.predict, as_numpy=True)

    def reset(self, obs: torch.Tensor) -> None:
        pass

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        return self._greedy.act(obs)

    def observe(self, reward: torch.Tensor) -> None:
        pass

    # -- AdaptableActor ----------------------------------------------------------------------
    def _policy(self) -> torch.nn.Module:
        modules = self.algo.impl.modules
        policy = getattr(modules, "policy", None) or getattr(modules, "imitator", None)
        if policy is None:
            raise ValueError(f"d3rlpy {type(self.algo).__name__} has no policy network to adapt")
        return policy

    def adapt_parameters(self, which: str) -> dict[str, torch.Tensor]:
        policy = self._policy()
        params = dict(policy.named_parameters())
        if which == "all":
            return params
        if which == "head":
            head = "_fc" if hasattr(policy, "_fc") else "_mu"
            return {k: v for k, v in params.items() if k.split(".")[0] == head}
        raise ValueError(f"d3rlpy actor: which must be 'all' or 'head', got {which!r}")

    def imagine_start(self, n: int, context: int = 0) -> None:
        return None

    def differentiable_act(
        self, obs: torch.Tensor, params: dict[str, torch.Tensor], memory: Any
    ) -> tuple[torch.Tensor, None]:
        from ipd_plugins.nn import per_env_call

        config = self.algo.config
        x = config.observation_scaler.transform(obs) if config.observation_scaler else obs
        action = per_env_call(self._policy(), params, x, output=lambda out: out.squashed_mu)
        if config.action_scaler:
            action = config.action_scaler.reverse_transform(action)
        return action, None

    def act_with(self, obs: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        obs = torch.as_tensor(obs, dtype=torch.float32).to(self.algo.impl.device)
        return self.differentiable_act(obs[:, None], params, None)[0][:, 0]


class D3rlpyBaseline:
    """A d3rlpy algorithm for a dataset: ``fit`` (resumable), ``actor``, ``save``, ``load``."""

    def __init__(
        self,
        config: BaselineConfig,
        ctx: BuildContext,
        dataset: TrajectoryDataset | None = None,
    ):
        low, high = np.asarray(ctx.act_low, float), np.asarray(ctx.act_high, float)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(high > low)):
            raise ValueError(
                f"baseline '{config.name}' needs finite action bounds with high > low; got "
                f"act_low={ctx.act_low}, act_high={ctx.act_high}"
            )
        self.config, self.ctx = config, ctx
        self.is_dt = config.sequence  # trains on windows, acts with a return-to-go
        self.step = 0
        self.algo: Any = None
        self.target_return: float | None = None
        if dataset is not None:
            self.prepare(dataset)

    def prepare(self, dataset: TrajectoryDataset) -> None:
        """Take the scalings from ``dataset`` (observation statistics, reward factor, DT's
        target return) and build d3rlpy's networks for them."""
        config, ctx = self.config, self.ctx
        if (dataset.obs_dim, dataset.act_dim) != (ctx.obs_dim, ctx.act_dim):
            raise ValueError(
                f"baseline '{config.name}': dataset has obs_dim={dataset.obs_dim}, act_dim="
                f"{dataset.act_dim}; the context says {ctx.obs_dim}, {ctx.act_dim}"
            )
        obs = dataset.observations.astype(np.float64)
        self.obs_mean = obs.mean(0).astype(np.float32)
        self.obs_std = obs.std(0).astype(np.float32)
        self.reward_multiplier = float(config.reward_multiplier(dataset))
        if self.is_dt:
            self.target_return = config.resolved_target(dataset, ctx.env_id)
            if int(dataset.episode_lengths.max()) > config.max_timestep:
                raise ValueError(
                    f"baseline 'dt': episodes of {int(dataset.episode_lengths.max())} steps "
                    f"exceed max_timestep={config.max_timestep}"
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
        if self.algo is None:
            raise RuntimeError(f"baseline '{self.config.name}': fit or load it before acting")
        self.modules.set_eval()
        if self.is_dt:
            return DTActor(self.algo, self.target_return)
        return D3rlpyActor(self.algo)

    def acting_as(self, **options: Any) -> D3rlpyBaseline:
        """This trained baseline with other acting options (its config's ``acting_options``:
        ``dt``'s ``target_return``), sharing its weights; training options are refused."""
        bad = sorted(set(options) - set(type(self.config).acting_options))
        if bad:
            raise ValueError(f"baseline '{self.config.name}': {bad} are not acting options")
        other = copy.copy(self)
        other.config = self.config.replace(**options)
        if self.is_dt and "target_return" in options:
            if other.config.target_return is None:
                raise ValueError("baseline 'dt': give target_return a number to act with")
            other.target_return = float(other.config.target_return)
        return other

    @property
    def gamma(self) -> float:
        """The discount the algorithm's critic was trained with."""
        return float(getattr(self.algo.config, "gamma", 0.99))

    def q_function(self) -> Any:
        """``q(obs (B,O), act (B,A)) -> (B,)``: the min over the critic ensemble, in the
        dataset's reward units (d3rlpy's Q is in the scaled rewards it trained on), with
        gradients to obs and act; None for an algorithm without a critic (BC, DT)."""
        if self.algo is None:
            raise RuntimeError(f"baseline '{self.config.name}': fit or load it before acting")
        forwarder = getattr(self.algo.impl, "_q_func_forwarder", None)
        if forwarder is None or self.is_dt:
            return None
        config, scale = self.algo.config, self.reward_multiplier

        def q(obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
            x = config.observation_scaler.transform(obs) if config.observation_scaler else obs
            a = config.action_scaler.transform(act) if config.action_scaler else act
            return forwarder.compute_expected_q(x, a, reduction="min").reshape(-1) / scale

        return q

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
                "state": module_states(self.modules),
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
        load_module_states(self.modules, blob["state"], path, "baseline")
        self.step = int(blob.get("step", 0))

    # training
    def fit(
        self, dataset: TrajectoryDataset, work_dir: Path | None = None, log: Logger | None = None
    ) -> dict[str, float]:
        """``n_steps`` of d3rlpy's update on ``dataset``; resumes from ``work_dir``'s checkpoint."""
        self.prepare(dataset)
        buffer = to_d3rlpy(dataset)
        with seeded(self.ctx.seed):
            return self._loop(buffer, work_dir, log)

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

        def save(step: int) -> None:
            self.step = step
            ckpt.maybe_save(step, objects, force=True)

        metrics = run_updates(
            self.algo,
            lambda: self._sample(buffer),
            start,
            cfg.n_steps,
            cfg.log_every,
            cfg.checkpoint_every,
            save,
            log,
            f"baseline '{cfg.name}'",
        )
        self.step = int(metrics["steps"])
        return metrics
