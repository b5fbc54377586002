"""Environment rollouts and D4RL-normalised scores (paper sec. 4: "tenfold episode evaluations").

Episodes run in a batch of separate gymnasium environments stepped in lockstep: one batched
actor call per step for all running envs; an env that has finished is no longer stepped and its
row of the batch is ignored. Episode ``i`` starts from ``env.reset(seed=seed + i)``, so a seed
fixes the evaluation (given a deterministic actor).

The D4RL normalised score is ``100 * (R - R_random) / (R_expert - R_random)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from ipd_plugins.data.envs import make_env
from registry.protocols import Actor

__all__ = ["EvalResult", "evaluate", "score", "normalized_scores", "CallableActor", "EVAL_SEED"]

#: Evaluation episodes of a run with seed k start from ``env.reset(seed=EVAL_SEED + k + i)``:
#: the same episodes for every method trained with that seed, none of them a training seed.
EVAL_SEED = 100_000


def normalized_scores(returns: np.ndarray, ref_min: float, ref_max: float) -> np.ndarray:
    """D4RL formula, x100: ``100 * (R - ref_min) / (ref_max - ref_min)``."""
    if ref_max == ref_min:
        raise ValueError(f"ref scores must differ to normalise, got min=max={ref_min}")
    return 100.0 * (np.asarray(returns, np.float64) - ref_min) / (ref_max - ref_min)


@dataclass(frozen=True)
class EvalResult:
    """Returns and lengths per episode, and their summary (normalised when refs were given)."""

    env_id: str
    seed: int
    returns: tuple[float, ...]  # (N,) undiscounted return of each episode
    lengths: tuple[int, ...]  # (N,) steps of each episode
    mean_return: float
    std_return: float
    normalized_mean: float | None = None  # x100, D4RL formula
    normalized_std: float | None = None

    @property
    def n_episodes(self) -> int:
        return len(self.returns)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["returns"], out["lengths"] = list(self.returns), list(self.lengths)
        out["n_episodes"] = self.n_episodes
        return out


class CallableActor:
    """An :class:`~registry.protocols.Actor` around a memoryless ``fn(obs (B,O)) -> (B,A)``.

    For baselines: a value learner's ``act``, or a d3rlpy algorithm's ``predict``
    (``as_numpy=True``: ``fn`` gets and returns numpy arrays).
    """

    def __init__(self, fn: Callable[[Any], Any], as_numpy: bool = False):
        self.fn, self.as_numpy = fn, as_numpy

    def reset(self, obs: torch.Tensor) -> None:
        pass

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        obs = torch.as_tensor(obs, dtype=torch.float32)
        out = self.fn(obs.cpu().numpy()) if self.as_numpy else self.fn(obs)
        out = torch.as_tensor(np.asarray(out) if self.as_numpy else out, dtype=torch.float32)
        assert out.dim() == 2 and out.shape[0] == obs.shape[0], (
            f"the wrapped function must return (B,A) for B={obs.shape[0]}, got {tuple(out.shape)}"
        )
        return out

    def observe(self, reward: torch.Tensor) -> None:
        pass


def _make_env(env_id: str) -> gym.Env:
    try:
        return make_env(env_id)
    except gym.error.Error as err:
        raise ValueError(f"cannot make gymnasium environment {env_id!r}: {err}") from err


def evaluate(
    actor: Actor,
    env_id: str,
    n_episodes: int = 10,
    seed: int = 0,
    ref_scores: tuple[float, float] | None = None,
    max_steps: int | None = None,
    n_envs: int | None = None,
) -> EvalResult:
    """Run ``n_episodes`` episodes of ``actor`` in ``env_id``, ``n_envs`` at a time (default all).

    ``ref_scores`` = (random, expert) returns for the normalised score; ``max_steps`` caps each
    episode (on top of the env's own time limit).
    """
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    n_envs = n_episodes if n_envs is None else n_envs
    if n_envs < 1:
        raise ValueError(f"n_envs must be >= 1, got {n_envs}")
    n_envs = min(n_envs, n_episodes)
    envs = [_make_env(env_id) for _ in range(n_envs)]
    space = envs[0].action_space
    if not isinstance(space, gym.spaces.Box):
        raise ValueError(
            f"{env_id} has a {type(space).__name__} action space; evaluate needs a Box"
        )
    low, high = space.low.astype(np.float32), space.high.astype(np.float32)
    returns: list[float] = []
    lengths: list[int] = []
    try:
        for first in range(0, n_episodes, n_envs):  # waves of up to n_envs episodes
            wave = envs[: min(n_envs, n_episodes - first)]
            rets, lens = _run_wave(actor, wave, seed + first, low, high, max_steps)
            returns += rets
            lengths += lens
    finally:
        for env in envs:
            env.close()

    arr = np.asarray(returns, np.float64)
    norm_mean = norm_std = None
    if ref_scores is not None:
        norm = normalized_scores(arr, float(ref_scores[0]), float(ref_scores[1]))
        norm_mean, norm_std = float(norm.mean()), float(norm.std())
    return EvalResult(
        env_id=env_id,
        seed=seed,
        returns=tuple(float(r) for r in returns),
        lengths=tuple(int(n) for n in lengths),
        mean_return=float(arr.mean()),
        std_return=float(arr.std()),
        normalized_mean=norm_mean,
        normalized_std=norm_std,
    )


def _run_wave(
    actor: Actor,
    envs: list[gym.Env],
    first_seed: int,
    low: np.ndarray,
    high: np.ndarray,
    max_steps: int | None,
) -> tuple[list[float], list[int]]:
    """One episode in each env, all stepped in lockstep; env j is reset with first_seed + j."""
    B = len(envs)
    obs = np.stack([env.reset(seed=first_seed + j)[0] for j, env in enumerate(envs)])
    obs = obs.astype(np.float32).reshape(B, -1)  # (B, O)
    for j, env in enumerate(envs):
        env.action_space.seed(first_seed + j)
    running = np.ones(B, bool)
    ret = np.zeros(B, np.float64)
    length = np.zeros(B, np.int64)
    limit = math.inf if max_steps is None else max_steps
    actor.reset(torch.from_numpy(obs.copy()))
    while running.any():
        # a fresh tensor each step: ``obs`` is overwritten below, and actors may keep what they get
        action = actor.act(torch.from_numpy(obs.copy()))  # (B, A): finished rows are ignored
        action = np.asarray(torch.as_tensor(action).detach().float().cpu().numpy(), np.float32)
        if action.shape[0] != B:
            raise ValueError(f"actor returned {action.shape[0]} actions for {B} envs")
        action = np.clip(action, low, high)
        reward = np.zeros(B, np.float32)
        for j in np.flatnonzero(running):
            next_obs, r, terminated, truncated, _ = envs[j].step(action[j].reshape(low.shape))
            reward[j] = r
            ret[j] += r
            length[j] += 1
            obs[j] = np.asarray(next_obs, np.float32).reshape(-1)
            if terminated or truncated or length[j] >= limit:
                running[j] = False
        actor.observe(torch.from_numpy(reward))
    return ret.tolist(), length.tolist()


def score(actor: Actor, env_id: str, episodes: int, seed: int, dataset: Any = None) -> EvalResult:
    """What every run reports: ``episodes`` of ``actor`` in ``env_id`` from the evaluation
    seeds of training seed ``seed``, normalised with the dataset's reference scores (else the
    shipped D4RL table's for ``env_id``)."""
    from ipd_plugins.data.envs import ref_scores

    refs = None
    if dataset is not None and dataset.ref_min_score is not None:
        if dataset.ref_max_score is not None:
            refs = (dataset.ref_min_score, dataset.ref_max_score)
    refs = refs or ref_scores(env_id)
    return evaluate(actor, env_id, n_episodes=episodes, seed=EVAL_SEED + seed, ref_scores=refs)
