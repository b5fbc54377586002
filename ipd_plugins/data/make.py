"""D4RL-style datasets made locally: the catalogue, the generators, ``ipd data make`` / ``list``.

D4RL (Fu et al., 2020, arXiv:2004.07219, section 5 and appendix C) built its Gym-MuJoCo data
from one online SAC run per task: ``medium`` is 1M steps of the actor stopped at about a third
of an expert's score, acting stochastically; ``medium-replay`` is the replay buffer of that
run up to the medium policy. We rebuild both here from the SAC snapshots shipped in
``ipd_plugins/assets/behavior/<task>/`` (trained by ``benchmarks/tools/train_behavior.py``):

- ``<task>-medium``: episodes of the medium snapshot, sampled actions, 1M steps by default;
- ``<task>-medium-replay``: episodes of each snapshot up to medium (the first part with
  uniform random actions, as SAC's warm-up), each in proportion to the training steps it
  stands for, so the mixture is what the replay buffer held; by default as many steps as the
  training took to reach medium (as D4RL).

A tiny family needs no training: ``pendulum-medium`` and ``pendulum-medium-replay`` on
``Pendulum-v1`` from a scripted swing-up controller (energy pumping, then a PD controller near
the top) whose actions are replaced by uniform random ones with probability ``epsilon``.
``medium`` uses ``epsilon = 0.6``; ``medium-replay`` sweeps ``epsilon`` from 1 (random) down
to 0.6 as a learning curve would. Pendulum has no D4RL scores, so its reference returns
(random policy and the noiseless controller) are registered here.

Every dataset is a function of its name, size and seed on one kind of CPU: environments are
seeded from the seed, sampled actions come from seeded generators, episodes are kept in a fixed
order. Another CPU rounds the actor's float32 maths differently and MuJoCo amplifies that, so
it makes another realisation (``REFERENCE_HASHES``). Environments are stepped in batches with
one batched actor call per step.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ipd_plugins.data import envs
from ipd_plugins.data.behavior import (
    PolicyFn,
    RolloutResult,
    actor_policy,
    load_snapshot,
    rollout_episodes,
)
from ipd_plugins.data.dataset import TrajectoryDataset

__all__ = [
    "DatasetSpec",
    "CATALOGUE",
    "PENDULUM_REF_MIN",
    "PENDULUM_REF_MAX",
    "SNAPSHOT_DIR_ENV",
    "REFERENCE_HASHES",
    "realisation_note",
    "BehaviorMissingError",
    "dataset_id",
    "behavior_dir",
    "pendulum_controller",
    "pendulum_policy",
    "generate",
    "make_dataset",
    "making",
    "store_size",
    "makeable",
]

SNAPSHOT_DIR_ENV = "IPD_BEHAVIOR_DIR"  # a folder with <task>/index.json overriding the shipped one

# Pendulum-v1 reference returns, measured once with this module (seed 0, 200 episodes each):
# a uniform random policy (epsilon = 1) and the noiseless scripted controller (epsilon = 0):
#   generate("pendulum-medium", n_steps=40_000, epsilon=1.0 / 0.0) -> mean episode return.
# They live in ``envs.REF_SCORES["pendulum"]`` so every loader knows them.
PENDULUM_REF_MIN, PENDULUM_REF_MAX = envs.REF_SCORES["pendulum"]

PENDULUM_MEDIUM_EPSILON = 0.6  # probability of a random action in pendulum-medium
PENDULUM_REPLAY_EPSILONS = (1.0, 0.9, 0.8, 0.7, 0.6)  # the learning curve of pendulum-medium-replay


#: Content hashes (``TrajectoryDataset.content_hash``) of the datasets ``benchmarks/results``
#: were made from: catalogue size, seed 0, on an Intel Xeon (another CPU makes another
#: realisation, see the module docstring); ``ipd data make`` says which one it made.
REFERENCE_HASHES: dict[str, str] = {
    "hopper-medium": "0cbb2e7103bed9ca",
    "hopper-medium-replay": "e2dd8dd420ac6b87",
    "halfcheetah-medium": "6f77a0b4e5c5c66d",
    "halfcheetah-medium-replay": "84002fbf3f29525e",
    "walker2d-medium": "4b7b72851d8c72ea",
    "walker2d-medium-replay": "78fc2312d0ba7dde",
}


def realisation_note(name: str, content_hash: str) -> str:
    """Whether ``content_hash`` is the reference realisation of catalogue dataset ``name``."""
    ref = REFERENCE_HASHES.get(name)
    if ref is None:
        return f"content hash {content_hash}"
    if content_hash == ref:
        return f"content hash {content_hash}: the reference realisation (benchmarks/results)"
    return (
        f"content hash {content_hash}: another realisation than the reference {ref} (made on an "
        "Intel Xeon); expected on another kind of CPU (benchmarks/results/datasets.md)"
    )


class BehaviorMissingError(FileNotFoundError):
    """The behaviour snapshots a dataset needs are not there (yet)."""


@dataclass(frozen=True)
class DatasetSpec:
    """One makeable dataset: ``<task>-<kind>`` on ``env_id``."""

    name: str  # e.g. "hopper-medium"
    task: str  # e.g. "hopper"
    kind: str  # "medium" or "medium-replay"
    env_id: str  # gymnasium id
    default_steps: int | None  # None: the behaviour's own length (medium-replay)
    family: str  # "mujoco" (SAC snapshots) or "pendulum" (scripted)

    @property
    def dataset_id(self) -> str:
        return f"ipd/{self.task}/{self.kind}-v0"


def _catalogue() -> dict[str, DatasetSpec]:
    out = {}
    for task, env_id in (
        ("hopper", "Hopper-v5"),
        ("halfcheetah", "HalfCheetah-v5"),
        ("walker2d", "Walker2d-v5"),
    ):
        out[f"{task}-medium"] = DatasetSpec(
            f"{task}-medium", task, "medium", env_id, 1_000_000, "mujoco"
        )
        out[f"{task}-medium-replay"] = DatasetSpec(
            f"{task}-medium-replay", task, "medium-replay", env_id, None, "mujoco"
        )
    out["pendulum-medium"] = DatasetSpec(
        "pendulum-medium", "pendulum", "medium", "Pendulum-v1", 20_000, "pendulum"
    )
    out["pendulum-medium-replay"] = DatasetSpec(
        "pendulum-medium-replay", "pendulum", "medium-replay", "Pendulum-v1", 20_000, "pendulum"
    )
    return out


CATALOGUE: dict[str, DatasetSpec] = _catalogue()


def _spec(name: str) -> DatasetSpec:
    if name not in CATALOGUE:
        raise KeyError(
            f"unknown dataset '{name}'; the ones that can be made are: {', '.join(CATALOGUE)}"
        )
    return CATALOGUE[name]


def dataset_id(name: str) -> str:
    """The Minari id of a catalogue name: ``"hopper-medium"`` -> ``"ipd/hopper/medium-v0"``."""
    return _spec(name).dataset_id


# -- pendulum: a scripted controller -------------------------------------------------------
def pendulum_controller(obs: np.ndarray) -> np.ndarray:
    """Swing-up torque (B, 1) for Pendulum-v1 observations (B, 3) = (cos th, sin th, th_dot).

    With th = 0 upright, the dynamics are th'' = 15 sin th + 3 u (g = 10, m = l = 1). The energy
    ``E = th_dot^2 / 2 + 15 (cos th - 1)`` is 0 at rest upright and changes as dE/dt = 3 u th_dot,
    so far from the top ``u = -E sign(th_dot)`` pumps it to 0; within 0.6 rad a PD law
    ``u = -(10 th + 2 th_dot)`` holds the pendulum up. Torques are clipped to [-2, 2].
    """
    c, s, w = obs[:, 0], obs[:, 1], obs[:, 2]
    th = np.arctan2(s, c)
    energy = 0.5 * w**2 + 15.0 * (c - 1.0)
    pump = -energy * np.where(w >= 0, 1.0, -1.0)
    pd = -(10.0 * th + 2.0 * w)
    u = np.where(np.abs(th) < 0.6, pd, pump)
    return np.clip(u, -2.0, 2.0).astype(np.float32)[:, None]


def pendulum_policy(epsilon: float, seed: int) -> PolicyFn:
    """The controller, replaced by a uniform random torque with probability ``epsilon``."""
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
    rng = np.random.default_rng(seed)

    def policy(obs: np.ndarray, _index: np.ndarray) -> np.ndarray:
        a = pendulum_controller(obs)
        explore = rng.random(len(obs)) < epsilon
        noise = rng.uniform(-2.0, 2.0, size=a.shape).astype(np.float32)
        return np.where(explore[:, None], noise, a)

    return policy


# -- MuJoCo: shipped SAC snapshots ---------------------------------------------------------
def behavior_dir(task: str) -> Path:
    """The snapshot folder of ``task``: ``$IPD_BEHAVIOR_DIR/<task>`` or the shipped one."""
    root = os.environ.get(SNAPSHOT_DIR_ENV)
    if root:
        return Path(root) / task
    return Path(str(resources.files("ipd_plugins").joinpath("assets", "behavior", task)))


def _behavior_index(spec: DatasetSpec) -> tuple[Path, dict[str, Any]]:
    folder = behavior_dir(spec.task)
    index = folder / "index.json"
    if not index.exists():
        raise BehaviorMissingError(
            f"no behaviour policy for '{spec.task}' yet ({index} is missing). Train it with\n"
            f"    python benchmarks/tools/train_behavior.py --work /work/behavior_runs "
            f"{spec.task}\n"
            f"then ship the snapshots with\n"
            f"    python benchmarks/tools/ship_behavior.py --work /work/behavior_runs "
            f"{spec.task}\n"
            f"(or point ${SNAPSHOT_DIR_ENV} at a folder holding {spec.task}/index.json)."
        )
    return folder, json.loads(index.read_text())


def _uniform_policy(low: np.ndarray, high: np.ndarray, seed: int) -> PolicyFn:
    rng = np.random.default_rng(seed)

    def policy(obs: np.ndarray, _index: np.ndarray) -> np.ndarray:
        return rng.uniform(low, high, size=(len(obs), len(low))).astype(np.float32)

    return policy


def _split(total: int, weights: list[float]) -> list[int]:
    """``total`` steps split in proportion to ``weights`` (largest remainders; sums to total)."""
    w = np.asarray(weights, np.float64)
    raw = total * w / w.sum()
    out = np.floor(raw).astype(np.int64)
    for i in np.argsort(-(raw - out), kind="stable")[: total - int(out.sum())]:
        out[i] += 1
    return [int(x) for x in out]


def _parts(spec: DatasetSpec, n_steps: int | None, seed: int) -> list[tuple[PolicyFn, int, str]]:
    """(policy, steps, label) for each part of the dataset."""
    if spec.family == "pendulum":
        steps = n_steps or spec.default_steps or 0
        if spec.kind == "medium":
            return [(pendulum_policy(PENDULUM_MEDIUM_EPSILON, seed), steps, "eps=0.6")]
        sizes = _split(steps, [1.0] * len(PENDULUM_REPLAY_EPSILONS))
        return [
            (pendulum_policy(eps, seed * 1_000 + i), n, f"eps={eps}")
            for i, (eps, n) in enumerate(zip(PENDULUM_REPLAY_EPSILONS, sizes, strict=True))
        ]

    folder, index = _behavior_index(spec)
    low, high = _env_bounds(spec.env_id)
    gen = torch.Generator().manual_seed(seed)

    def policy_of(entry: str, part_seed: int) -> PolicyFn:
        if entry == "uniform":
            return _uniform_policy(low, high, part_seed)
        actor, _ = load_snapshot(folder / entry)
        return actor_policy(actor, deterministic=False, generator=gen)

    if spec.kind == "medium":
        steps = n_steps or spec.default_steps or 0
        return [(policy_of(index["medium"], seed), steps, index["medium"])]
    replay = index["replay"]  # [{"file": ..., "steps": ...}], "uniform" for the warm-up
    total = n_steps or int(sum(r["steps"] for r in replay))
    sizes = _split(total, [r["steps"] for r in replay])
    return [
        (policy_of(r["file"], seed * 1_000 + i), n, r["file"])
        for i, (r, n) in enumerate(zip(replay, sizes, strict=True))
        if n > 0
    ]


def _env_bounds(env_id: str) -> tuple[np.ndarray, np.ndarray]:
    bounds = envs.action_bounds(env_id)
    if bounds is None:
        raise ValueError(f"gymnasium cannot create '{env_id}' or its action space is not a Box")
    return bounds


# -- generation ----------------------------------------------------------------------------
def generate(
    name: str,
    *,
    n_steps: int | None = None,
    seed: int = 0,
    n_envs: int = 16,
    epsilon: float | None = None,
    progress: bool = False,
) -> TrajectoryDataset:
    """The dataset ``name`` as a :class:`TrajectoryDataset` (not written anywhere).

    Args:
        name: a catalogue name (``ipd data list``).
        n_steps: total steps (default: the catalogue's size).
        seed: fixes every environment reset and every sampled action.
        n_envs: environments stepped together (one batched policy call per step).
        epsilon: pendulum only, replaces the catalogue's noise (used to measure the
            reference returns: 1.0 random, 0.0 the controller).
        progress: show a progress bar per part.
    """
    spec = _spec(name)
    if n_steps is not None and n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if epsilon is not None:
        if spec.family != "pendulum":
            raise ValueError("epsilon only applies to the pendulum datasets")
        parts = [(pendulum_policy(epsilon, seed), n_steps or spec.default_steps, f"eps={epsilon}")]
    else:
        parts = _parts(spec, n_steps, seed)

    results: list[RolloutResult] = []
    for i, (policy, steps, _label) in enumerate(parts):
        results.append(
            rollout_episodes(
                functools.partial(envs.make_env, spec.env_id),
                policy,
                n_steps=int(steps),
                n_envs=n_envs,
                seed=seed * 1_000 + i,
                progress=progress,
            )
        )
    episodes = [ep for r in results for ep in r.episodes]
    ref = envs.ref_scores(spec.env_id)
    low, high = _env_bounds(spec.env_id)
    return TrajectoryDataset.from_episodes(
        episodes,
        env_id=spec.env_id,
        name=name,
        ref_min_score=None if ref is None else ref[0],
        ref_max_score=None if ref is None else ref[1],
        action_low=low,
        action_high=high,
    )


_MAKING: set[str] = set()  # the ids whose lock this process holds (:func:`making`)


@contextlib.contextmanager
def making(dataset_id_: str) -> Iterator[None]:
    """Hold the lock of making ``dataset_id_`` in the local Minari store (a dotfile beside it):
    another process making it is waited for, so two runs that need a dataset not made yet make
    it once and neither reads it half-written. Reentrant within a process; no lock in a store
    this user cannot write (nothing can be made there)."""
    from minari.storage import get_dataset_path

    from ipd_plugins.stages import stage_lock

    path = get_dataset_path(dataset_id_)
    lock = path.parent / f".{path.name}.making.lock"
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.touch()
    except OSError:  # a read-only store (shared, say): readers only
        lock = None
    if dataset_id_ in _MAKING or lock is None:
        yield
        return
    with stage_lock(lock):
        _MAKING.add(dataset_id_)
        try:
            yield
        finally:
            _MAKING.discard(dataset_id_)


def make_dataset(
    name: str,
    *,
    steps: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = False,
) -> str:
    """Generate ``name`` and write it into the local Minari store; returns its Minari id.

    An existing dataset is kept (and its id returned) unless ``overwrite``; one that another
    process is making is waited for, then kept (:func:`making`).
    """
    from ipd_plugins.data.minari_io import minari_local_ids, to_minari

    spec = _spec(name)
    with making(spec.dataset_id):
        if spec.dataset_id in minari_local_ids() and not overwrite:
            return spec.dataset_id
        ds = generate(name, n_steps=steps, seed=seed, progress=progress)
        summary = (
            f"ipd '{name}' ({spec.env_id}): {ds.n_episodes} episodes, {ds.n_steps} steps, seed "
            f"{seed}, mean return {ds.episode_returns().mean():.1f}. Made by `ipd data make "
            f"{name}`; "
        )
        source = (
            "scripted swing-up controller with random actions."
            if spec.family == "pendulum"
            else "SAC behaviour snapshots shipped in ipd_plugins/assets/behavior."
        )
        to_minari(
            ds,
            spec.dataset_id,
            algorithm_name=f"ipd-{spec.family}-{spec.kind}",
            description=summary + source,
            overwrite=overwrite,
        )
    return spec.dataset_id


def store_size(dataset_id_: str) -> int | None:
    from minari.storage import get_dataset_path

    path = Path(get_dataset_path(dataset_id_))
    if not path.exists():
        return None
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def makeable(spec: DatasetSpec) -> bool:
    return spec.family == "pendulum" or (behavior_dir(spec.task) / "index.json").exists()
