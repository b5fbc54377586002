"""Behaviour policies: the small SAC actor that generates datasets, its snapshots, and rollouts.

D4RL (Fu et al., 2020, arXiv:2004.07219) made its MuJoCo datasets by running SAC actors saved
along one online training run: ``medium`` holds episodes of the actor stopped at about a third
of an expert's score, ``medium-replay`` the replay buffer of the training up to that point. This
module holds the pieces both the trainer (``sac.py``) and the generator (``make.py``) share:

- :class:`BehaviorActor`: a tanh-squashed Gaussian MLP (2 x 256 by default), scaled to the
  declared action box;
- :func:`save_snapshot` / :func:`load_snapshot`: actor weights in a safetensors file, with the
  network shape and the training facts (env, step, evaluation return) in its string metadata;
  nothing in a snapshot can run code;
- :func:`rollout_episodes`: whole episodes from a batch of environments stepped together with
  one batched actor call per step, deterministic for a seed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from ipd_plugins.data.envs import make_env as make_gym_env
from ipd_plugins.nn import mlp

__all__ = [
    "LOG_STD_MIN",
    "LOG_STD_MAX",
    "BehaviorActor",
    "tanh_gaussian_sample",
    "save_snapshot",
    "load_snapshot",
    "snapshot_metadata",
    "RolloutResult",
    "PolicyFn",
    "actor_policy",
    "rollout_episodes",
    "evaluate_actor",
]

LOG_STD_MIN = -20.0  # the usual SAC clamp on the Gaussian's log standard deviation
LOG_STD_MAX = 2.0
_EPS = 1e-6


def tanh_gaussian_sample(
    mean: torch.Tensor,
    log_std: torch.Tensor,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reparameterised sample of ``u ~ N(mean, std)`` squashed to ``a = tanh(u)``, with log pi(a).

    ``log pi(a) = sum_i [log N(u_i; mean_i, std_i) - log(1 - tanh(u_i)^2)]`` (Haarnoja et al.,
    2018, appendix C), using the stable form ``log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))``.

    Args:
        mean, log_std: (B, A).
        noise: (B, A) standard normal draws; drawn here when None.

    Returns:
        a (B, A) in (-1, 1) and log_prob (B,).
    """
    std = log_std.exp()
    if noise is None:
        noise = torch.randn_like(mean)
    u = mean + std * noise
    log_prob = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_prob = log_prob - (2.0 * (math.log(2.0) - u - nn.functional.softplus(-2.0 * u))).sum(-1)
    return torch.tanh(u), log_prob


class BehaviorActor(nn.Module):
    """SAC's actor: an MLP giving the mean and log std of a Gaussian squashed by tanh.

    Actions are scaled from (-1, 1) to the box ``[action_low, action_high]`` (buffers, saved
    with the weights), so the actor speaks the environment's units.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: int = 256,
        n_hidden: int = 2,
        action_low: np.ndarray | None = None,
        action_high: np.ndarray | None = None,
    ):
        super().__init__()
        if obs_dim < 1 or act_dim < 1:
            raise ValueError(f"BehaviorActor needs obs_dim, act_dim >= 1, got {obs_dim}, {act_dim}")
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.hidden, self.n_hidden = int(hidden), int(n_hidden)
        self.net = mlp(obs_dim, 2 * act_dim, hidden=hidden, n_hidden=n_hidden)
        low = -np.ones(act_dim) if action_low is None else np.asarray(action_low)
        high = np.ones(act_dim) if action_high is None else np.asarray(action_high)
        if low.shape != (act_dim,) or high.shape != (act_dim,):
            raise ValueError(
                f"action bounds must have shape ({act_dim},), got {low.shape} and {high.shape}"
            )
        self.register_buffer("action_low", torch.as_tensor(low, dtype=torch.float32))
        self.register_buffer("action_high", torch.as_tensor(high, dtype=torch.float32))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, O) -> mean (B, A), log_std (B, A) of the pre-tanh Gaussian."""
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def scale(self, a: torch.Tensor) -> torch.Tensor:
        """(-1, 1) -> the action box."""
        return self.action_low + 0.5 * (a + 1.0) * (self.action_high - self.action_low)

    def unscale(self, a: torch.Tensor) -> torch.Tensor:
        """The action box -> (-1, 1)."""
        return 2.0 * (a - self.action_low) / (self.action_high - self.action_low) - 1.0

    def sample(
        self, obs: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Squashed action in (-1, 1) (B, A) and its log-probability (B,), reparameterised."""
        mean, log_std = self(obs)
        return tanh_gaussian_sample(mean, log_std, noise)

    @torch.no_grad()
    def act(
        self,
        obs: np.ndarray | torch.Tensor,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
    ) -> np.ndarray:
        """Environment actions (B, A) float32 for observations (B, O)."""
        obs_t = torch.as_tensor(np.asarray(obs, np.float32))
        mean, log_std = self(obs_t)
        if deterministic:
            a = torch.tanh(mean)
        else:
            noise = torch.randn(mean.shape, generator=generator)
            a, _ = tanh_gaussian_sample(mean, log_std, noise)
        return self.scale(a).numpy().astype(np.float32)


# -- snapshots -----------------------------------------------------------------------------
def snapshot_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a snapshot file (without loading its tensors)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "ipd_behavior" not in meta:
        raise ValueError(f"{path} is not an ipd behaviour snapshot (no 'ipd_behavior' metadata)")
    return json.loads(meta["ipd_behavior"])


def save_snapshot(
    path: str | Path,
    actor: BehaviorActor,
    info: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write the actor's weights (as ``dtype``) and ``info`` (JSON-able) to a safetensors file.

    The write goes to a temporary name renamed over ``path``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: (v.detach().to(dtype) if k.startswith("net.") else v.detach().float()).contiguous()
        for k, v in actor.state_dict().items()
    }
    meta = {
        "obs_dim": actor.obs_dim,
        "act_dim": actor.act_dim,
        "hidden": actor.hidden,
        "n_hidden": actor.n_hidden,
        **(info or {}),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"ipd_behavior": json.dumps(meta)})
    tmp.replace(path)
    return path


def load_snapshot(path: str | Path) -> tuple[BehaviorActor, dict[str, Any]]:
    """A float32 :class:`BehaviorActor` in eval mode and the snapshot's metadata."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no behaviour snapshot at {path}")
    meta = snapshot_metadata(path)
    actor = BehaviorActor(meta["obs_dim"], meta["act_dim"], meta["hidden"], meta["n_hidden"])
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    actor.load_state_dict(state)
    return actor.eval(), meta


# -- rollouts ------------------------------------------------------------------------------
@dataclass
class RolloutResult:
    """Whole episodes in Minari layout (``observations`` has T+1 rows) in completion order."""

    episodes: list[dict[str, np.ndarray]]
    n_steps: int

    @property
    def returns(self) -> np.ndarray:
        return np.array([float(np.sum(ep["rewards"], dtype=np.float64)) for ep in self.episodes])


PolicyFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``policy(obs (B,O), env_index (B,)) -> actions (B,A)``: one batched call per step."""


def rollout_episodes(
    make_env: Callable[[], gym.Env],
    policy: PolicyFn,
    *,
    n_steps: int | None = None,
    n_episodes: int | None = None,
    n_envs: int = 8,
    seed: int = 0,
    progress: bool = False,
) -> RolloutResult:
    """Run ``n_envs`` environments in lock step until enough whole episodes are done.

    With ``n_steps``: episodes are kept in completion order (ties by environment index) until
    their steps reach ``n_steps``; the last one is cut there and marked truncated (as D4RL's
    timeouts), so the result has exactly ``n_steps`` steps. With ``n_episodes``: the first
    ``n_episodes`` finished. Environment ``i`` is reset with seed ``seed * 10_007 + i`` once,
    then continues its own random stream, so the data is a function of ``seed`` alone.
    """
    if (n_steps is None) == (n_episodes is None):
        raise ValueError("rollout_episodes needs exactly one of n_steps and n_episodes")
    if (n_steps is not None and n_steps < 1) or (n_episodes is not None and n_episodes < 1):
        raise ValueError(f"n_steps/n_episodes must be >= 1, got {n_steps}/{n_episodes}")
    n_envs = max(1, int(n_envs if n_episodes is None else min(n_envs, n_episodes)))
    envs = [make_env() for _ in range(n_envs)]
    obs = np.stack(
        [np.asarray(e.reset(seed=seed * 10_007 + i)[0], np.float32) for i, e in enumerate(envs)]
    )
    bufs: list[dict[str, list]] = [_new_buf(o) for o in obs]
    done_eps: list[dict[str, np.ndarray]] = []
    total = 0
    index = np.arange(n_envs)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_steps or n_episodes, unit="step" if n_steps else "ep", disable=None)
    try:
        while True:
            actions = np.asarray(policy(obs, index), np.float32)
            for i, env in enumerate(envs):
                next_obs, rew, term, trunc, _ = env.step(actions[i])
                b = bufs[i]
                b["actions"].append(actions[i])
                b["rewards"].append(float(rew))
                b["terminations"].append(bool(term))
                b["truncations"].append(bool(trunc))
                b["observations"].append(np.asarray(next_obs, np.float32))
                if term or trunc:
                    ep = _finish(b)
                    if n_steps is not None and total + len(ep["actions"]) >= n_steps:
                        done_eps.append(_cut(ep, n_steps - total))
                        total = n_steps
                        return RolloutResult(done_eps, total)
                    done_eps.append(ep)
                    total += len(ep["actions"])
                    if bar is not None:
                        bar.update(len(ep["actions"]) if n_steps else 1)
                    if n_episodes is not None and len(done_eps) >= n_episodes:
                        return RolloutResult(done_eps, total)
                    first = np.asarray(env.reset()[0], np.float32)
                    bufs[i] = _new_buf(first)
                    obs[i] = first
                else:
                    obs[i] = next_obs
    finally:
        if bar is not None:
            bar.close()
        for env in envs:
            env.close()


def _new_buf(first_obs: np.ndarray) -> dict[str, list]:
    return {
        "observations": [np.asarray(first_obs, np.float32)],
        "actions": [],
        "rewards": [],
        "terminations": [],
        "truncations": [],
    }


def _finish(b: dict[str, list]) -> dict[str, np.ndarray]:
    return {
        "observations": np.stack(b["observations"]).astype(np.float32),
        "actions": np.stack(b["actions"]).astype(np.float32),
        "rewards": np.asarray(b["rewards"], np.float32),
        "terminations": np.asarray(b["terminations"], bool),
        "truncations": np.asarray(b["truncations"], bool),
    }


def _cut(ep: dict[str, np.ndarray], t: int) -> dict[str, np.ndarray]:
    """The first ``t`` steps of an episode; a cut episode ends truncated, not terminated."""
    if t >= len(ep["actions"]):
        return ep
    out = {k: v[:t].copy() for k, v in ep.items() if k != "observations"}
    out["observations"] = ep["observations"][: t + 1].copy()
    out["terminations"][-1] = False
    out["truncations"][-1] = True
    return out


def actor_policy(
    actor: BehaviorActor, deterministic: bool, generator: torch.Generator | None = None
) -> PolicyFn:
    """A batched :data:`PolicyFn` from an actor (stochastic draws come from ``generator``)."""

    def policy(obs: np.ndarray, _index: np.ndarray) -> np.ndarray:
        return actor.act(obs, deterministic=deterministic, generator=generator)

    return policy


def evaluate_actor(
    env_id: str,
    actor: BehaviorActor,
    n_episodes: int = 5,
    deterministic: bool = True,
    seed: int = 0,
) -> np.ndarray:
    """(n_episodes,) returns of the actor on fresh ``env_id`` environments stepped together."""
    gen = torch.Generator().manual_seed(seed)
    result = rollout_episodes(
        lambda: make_gym_env(env_id),
        actor_policy(actor, deterministic, gen),
        n_episodes=n_episodes,
        n_envs=n_episodes,
        seed=seed,
    )
    return result.returns
