"""A lean soft actor-critic (SAC) that trains the behaviour policies of the D4RL-style datasets.

Haarnoja et al., "Soft Actor-Critic Algorithms and Applications" (arXiv:1812.05905), with the
automatic entropy temperature. With ``Q_min = min_j Q'_j`` (twin target critics, Polyak-averaged
with rate ``tau``) and ``a' ~ pi(.|s')``:

    y        = r + gamma (1 - d) (Q_min(s', a') - alpha log pi(a'|s'))           (TD target)
    L_Q      = sum_j E[(Q_j(s, a) - y)^2]                                          (critics)
    L_pi     = E[alpha log pi(a~|s) - min_j Q_j(s, a~)],  a~ ~ pi(.|s) reparameterised (actor)
    L_alpha  = -E[log alpha (log pi(a~|s) + H_target)],   H_target = -dim(A)           (temperature)

Built for speed on one CPU thread: the twin critics are one batched :class:`EnsembleMLP`, the
replay buffer is preallocated tensors sampled with one ``randint``, the target update is a
single ``_foreach_lerp_``. It is resumable: every ``snapshot_every`` steps it evaluates the
actor (deterministic and stochastic returns), writes a safetensors snapshot and a line of
``snapshots.jsonl``, then checkpoints the training state (nets, optimisers, RNG) and the replay
buffer, so re-running the same command continues where it stopped. This trainer is offline-RL
plumbing (it makes data), not an IPD component, so it is not a registered plugin.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ipd_plugins.data.behavior import (
    BehaviorActor,
    evaluate_actor,
    save_snapshot,
    tanh_gaussian_sample,
)
from ipd_plugins.data.envs import make_env
from ipd_plugins.files import atomic_save, safe_load
from ipd_plugins.nn import EnsembleMLP
from ipd_plugins.training import Checkpointer, seed_everything

__all__ = [
    "SACConfig",
    "td_target",
    "critic_loss",
    "actor_loss",
    "temperature_loss",
    "ReplayBuffer",
    "SAC",
    "train_sac",
    "read_snapshot_log",
]


@dataclass
class SACConfig:
    """SAC hyperparameters (the paper's MuJoCo defaults) and the run's length and bookkeeping.

    Args:
        env_id: gymnasium environment id, e.g. ``"Hopper-v5"``.
        total_steps: environment steps of the run (one gradient update per step after
            ``start_steps``).
        start_steps: first steps taken with uniform random actions (exploration), no updates.
        batch_size: minibatch size of every update.
        hidden, n_hidden: width and depth of the actor and critic MLPs.
        lr: Adam learning rate of actor, critics and temperature.
        gamma: discount ``gamma``.
        tau: Polyak rate of the target critics.
        init_alpha: initial entropy temperature ``alpha``.
        target_entropy: ``H_target``; None means ``-dim(A)``.
        snapshot_every: steps between evaluation + snapshot + checkpoint.
        eval_episodes_det, eval_episodes_stoch: evaluation episodes with the mean action and
            with sampled actions (the datasets use sampled actions, as D4RL).
        stop_return: stop once a snapshot's stochastic mean return reaches this (None: never).
        seed: fixes the networks, the exploration and the environments.
    """

    env_id: str = "Hopper-v5"
    total_steps: int = 300_000  # longer -> better final policy, more time (about 1 h / 300k here)
    start_steps: int = 5_000  # more -> broader initial data, slower start
    batch_size: int = 256  # larger -> smoother gradients, slower updates
    hidden: int = 256  # wider -> more capacity, slower
    n_hidden: int = 2  # deeper -> more capacity, slower
    lr: float = 3e-4  # higher -> faster but less stable learning
    gamma: float = 0.99  # higher -> longer horizon, noisier targets
    tau: float = 0.005  # higher -> targets follow faster, less stable
    init_alpha: float = 1.0  # the temperature adapts; this only sets its start
    target_entropy: float | None = None  # higher -> more exploration
    snapshot_every: int = 5_000  # lower -> finer choice of the "medium" policy, more eval cost
    eval_episodes_det: int = 3
    eval_episodes_stoch: int = 10
    stop_return: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("total_steps", "batch_size", "hidden", "n_hidden", "snapshot_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"SACConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"SACConfig.tau must be in (0, 1], got {self.tau}")
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"SACConfig.gamma must be in [0, 1), got {self.gamma}")


# -- the maths -----------------------------------------------------------------------------
def td_target(
    rew: torch.Tensor,
    done: torch.Tensor,
    q_next_min: torch.Tensor,
    next_log_prob: torch.Tensor,
    alpha: torch.Tensor | float,
    gamma: float,
) -> torch.Tensor:
    """Soft TD target ``y = r + gamma (1 - d) (Q_min(s',a') - alpha log pi(a'|s'))``; all (B,)."""
    return rew + gamma * (1.0 - done) * (q_next_min - alpha * next_log_prob)


def critic_loss(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``sum_j mean_B (Q_j - y)^2`` for q (E, B) and target (B,)."""
    return (q - target.unsqueeze(0)).pow(2).mean(-1).sum()


def actor_loss(
    log_prob: torch.Tensor, q_min: torch.Tensor, alpha: torch.Tensor | float
) -> torch.Tensor:
    """``mean(alpha log pi(a~|s) - min_j Q_j(s, a~))``; (B,) inputs."""
    return (alpha * log_prob - q_min).mean()


def temperature_loss(
    log_alpha: torch.Tensor, log_prob: torch.Tensor, target_entropy: float
) -> torch.Tensor:
    """``-mean(log alpha (log pi + H_target))`` with log pi treated as a constant."""
    return -(log_alpha * (log_prob.detach() + target_entropy)).mean()


# -- the pieces ----------------------------------------------------------------------------
class ReplayBuffer:
    """Preallocated tensors of (s, a in (-1,1), r, s', terminated), sampled tensor-side."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int):
        self.capacity = int(capacity)
        self.obs = torch.zeros(capacity, obs_dim)
        self.act = torch.zeros(capacity, act_dim)
        self.rew = torch.zeros(capacity)
        self.next_obs = torch.zeros(capacity, obs_dim)
        self.done = torch.zeros(capacity)
        self.size = 0
        self.ptr = 0

    def add(
        self, obs: np.ndarray, act: np.ndarray, rew: float, next_obs: np.ndarray, done: bool
    ) -> None:
        i = self.ptr
        self.obs[i] = torch.from_numpy(np.asarray(obs, np.float32))
        self.act[i] = torch.from_numpy(np.asarray(act, np.float32))
        self.rew[i] = float(rew)
        self.next_obs[i] = torch.from_numpy(np.asarray(next_obs, np.float32))
        self.done[i] = float(done)
        self.ptr = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, ...]:
        idx = torch.randint(self.size, (batch_size,), generator=generator)
        return self.obs[idx], self.act[idx], self.rew[idx], self.next_obs[idx], self.done[idx]

    def state(self) -> dict[str, Any]:
        n = self.size
        return {
            "obs": self.obs[:n].clone(),
            "act": self.act[:n].clone(),
            "rew": self.rew[:n].clone(),
            "next_obs": self.next_obs[:n].clone(),
            "done": self.done[:n].clone(),
            "ptr": self.ptr,
        }

    def load(self, state: dict[str, Any]) -> None:
        n = state["obs"].shape[0]
        if n > self.capacity:
            raise ValueError(f"replay state holds {n} rows, more than the capacity {self.capacity}")
        for key in ("obs", "act", "rew", "next_obs", "done"):
            getattr(self, key)[:n] = state[key]
        self.size, self.ptr = n, int(state["ptr"])


class _LogAlpha(nn.Module):
    def __init__(self, init_alpha: float):
        super().__init__()
        self.value = nn.Parameter(torch.tensor(math.log(init_alpha)))


class SAC:
    """Actor, twin critics (one batched ensemble), their targets and the temperature."""

    def __init__(
        self,
        cfg: SACConfig,
        obs_dim: int,
        act_dim: int,
        action_low: np.ndarray,
        action_high: np.ndarray,
    ):
        self.cfg = cfg
        self.actor = BehaviorActor(
            obs_dim, act_dim, cfg.hidden, cfg.n_hidden, action_low, action_high
        )
        self.critic = EnsembleMLP(
            2, obs_dim + act_dim, 1, cfg.hidden, cfg.n_hidden, layer_norm=False
        )
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = _LogAlpha(cfg.init_alpha)
        self.target_entropy = (
            float(-act_dim) if cfg.target_entropy is None else float(cfg.target_entropy)
        )
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr)
        self.alpha_opt = torch.optim.Adam(self.log_alpha.parameters(), lr=cfg.lr)
        self._params = list(self.critic.parameters())
        self._target_params = list(self.critic_target.parameters())

    def objects(self) -> dict[str, Any]:
        return {
            "actor": self.actor,
            "critic": self.critic,
            "critic_target": self.critic_target,
            "log_alpha": self.log_alpha,
            "actor_opt": self.actor_opt,
            "critic_opt": self.critic_opt,
            "alpha_opt": self.alpha_opt,
        }

    def _q(self, net: nn.Module, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return net(torch.cat([obs, act], -1)).squeeze(-1)  # (2, B)

    def update(
        self,
        obs: torch.Tensor,
        act: torch.Tensor,
        rew: torch.Tensor,
        next_obs: torch.Tensor,
        done: torch.Tensor,
    ) -> dict[str, float]:
        """One gradient step on critics, actor and temperature; ``act`` in (-1, 1)."""
        alpha = self.log_alpha.value.exp().detach()
        with torch.no_grad():
            next_act, next_logp = self.actor.sample(next_obs)
            q_next = self._q(self.critic_target, next_obs, next_act).min(0).values
            y = td_target(rew, done, q_next, next_logp, alpha, self.cfg.gamma)
        q_loss = critic_loss(self._q(self.critic, obs, act), y)
        self.critic_opt.zero_grad(set_to_none=True)
        q_loss.backward()
        self.critic_opt.step()

        self.critic.requires_grad_(False)
        new_act, logp = self.actor.sample(obs)
        pi_loss = actor_loss(logp, self._q(self.critic, obs, new_act).min(0).values, alpha)
        self.actor_opt.zero_grad(set_to_none=True)
        pi_loss.backward()
        self.actor_opt.step()
        self.critic.requires_grad_(True)

        a_loss = temperature_loss(self.log_alpha.value, logp, self.target_entropy)
        self.alpha_opt.zero_grad(set_to_none=True)
        a_loss.backward()
        self.alpha_opt.step()

        with torch.no_grad():
            torch._foreach_lerp_(self._target_params, self._params, self.cfg.tau)
        return {"q_loss": q_loss.item(), "pi_loss": pi_loss.item(), "alpha": alpha.item()}


# -- the run -------------------------------------------------------------------------------
def read_snapshot_log(work_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``work_dir/snapshots.jsonl`` (one per snapshot, in step order)."""
    path = Path(work_dir) / "snapshots.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_sac(
    cfg: SACConfig,
    work_dir: str | Path,
    log: Callable[[int, dict[str, float]], None] | None = None,
    print_every: int = 5_000,
) -> list[dict[str, Any]]:
    """Train (or resume) SAC in ``work_dir``; returns the snapshot log.

    ``work_dir`` receives ``snapshots/step_<step, 7 digits>.safetensors`` (float32 actors),
    ``snapshots.jsonl`` (step, evaluation returns, snapshot file), ``config.json``, the
    checkpoint ``sac_state.pt`` and the replay buffer ``replay.pt``; ``DONE`` marks a
    finished run (re-running then returns at once).
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    if (work_dir / "DONE").exists():
        return read_snapshot_log(work_dir)

    gen = seed_everything(cfg.seed)
    env = make_env(cfg.env_id)
    obs_dim = int(np.prod(env.observation_space.shape))
    act_dim = int(np.prod(env.action_space.shape))
    low = np.asarray(env.action_space.low, np.float32)
    high = np.asarray(env.action_space.high, np.float32)
    sac = SAC(cfg, obs_dim, act_dim, low, high)
    replay = ReplayBuffer(cfg.total_steps, obs_dim, act_dim)
    ckpt = Checkpointer(work_dir, every=cfg.snapshot_every, name="sac_state")
    extra: dict[str, Any] = {"gen": gen.get_state()}
    step = ckpt.restore(sac.objects(), extra)
    if step > 0:
        replay.load(safe_load(work_dir / "replay.pt"))
        gen.set_state(extra["gen"])
        print(f"[sac {cfg.env_id}] resumed at step {step} (replay {replay.size})", flush=True)
    rows = [r for r in read_snapshot_log(work_dir) if r["step"] <= step]
    _rewrite_log(work_dir, rows)

    obs, _ = env.reset(seed=cfg.seed * 1_000_003 + step)
    ep_ret, ep_len, recent = 0.0, 0, []
    t0, s0 = time.time(), step
    stats: dict[str, float] = {}
    while step < cfg.total_steps:
        if step < cfg.start_steps:
            a_unit = torch.rand(act_dim, generator=gen).numpy() * 2.0 - 1.0
        else:
            with torch.no_grad():
                mean, log_std = sac.actor(torch.as_tensor(obs, dtype=torch.float32)[None])
                noise = torch.randn(mean.shape, generator=gen)
                a_t, _ = tanh_gaussian_sample(mean, log_std, noise)
            a_unit = a_t[0].numpy()
        a_env = low + 0.5 * (a_unit + 1.0) * (high - low)
        next_obs, rew, term, trunc, _ = env.step(a_env)
        replay.add(obs, a_unit, rew, next_obs, term)
        ep_ret += float(rew)
        ep_len += 1
        obs = next_obs
        if term or trunc:
            recent = (recent + [ep_ret])[-10:]
            obs, _ = env.reset()
            ep_ret, ep_len = 0.0, 0
        step += 1

        if step >= cfg.start_steps:
            stats = sac.update(*replay.sample(cfg.batch_size, gen))

        if step % print_every == 0:
            sps = (step - s0) / max(time.time() - t0, 1e-9)
            train_ret = float(np.mean(recent)) if recent else float("nan")
            print(
                f"[sac {cfg.env_id}] step {step} {sps:.0f} steps/s train return {train_ret:.1f} "
                + " ".join(f"{k} {v:.3g}" for k, v in stats.items()),
                flush=True,
            )
            if log is not None:
                log(step, {"steps_per_s": sps, "train_return": train_ret, **stats})

        if step % cfg.snapshot_every == 0 or step == cfg.total_steps:
            row = _snapshot(cfg, sac, work_dir, step)
            rows.append(row)
            _rewrite_log(work_dir, rows)
            print(
                f"[sac {cfg.env_id}] snapshot step {step}: eval det {row['eval_return_det']:.1f} "
                f"stoch {row['eval_return_stoch']:.1f} +- {row['eval_std_stoch']:.1f}",
                flush=True,
            )
            atomic_save(replay.state(), work_dir / "replay.pt")
            extra["gen"] = gen.get_state()
            ckpt.maybe_save(step, sac.objects(), extra, force=True)
            if cfg.stop_return is not None and row["eval_return_stoch"] >= cfg.stop_return:
                print(f"[sac {cfg.env_id}] reached stop_return {cfg.stop_return}", flush=True)
                break
    (work_dir / "DONE").write_text(f"{step}\n")
    env.close()
    return rows


def _snapshot(cfg: SACConfig, sac: SAC, work_dir: Path, step: int) -> dict[str, Any]:
    seed = cfg.seed * 7919 + step
    det = evaluate_actor(
        cfg.env_id, sac.actor, cfg.eval_episodes_det, deterministic=True, seed=seed
    )
    sto = evaluate_actor(
        cfg.env_id, sac.actor, cfg.eval_episodes_stoch, deterministic=False, seed=seed + 1
    )
    rel = Path("snapshots") / f"step_{step:07d}.safetensors"
    row = {
        "env_id": cfg.env_id,
        "step": step,
        "start_steps": cfg.start_steps,
        "eval_return_det": float(det.mean()),
        "eval_return_stoch": float(sto.mean()),
        "eval_std_stoch": float(sto.std()),
        "file": str(rel),
        "time": time.time(),
    }
    save_snapshot(work_dir / rel, sac.actor, row)
    return row


def _rewrite_log(work_dir: Path, rows: list[dict[str, Any]]) -> None:
    path = work_dir / "snapshots.jsonl"
    tmp = path.with_name(".snapshots.jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)
