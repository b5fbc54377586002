"""Environments behind datasets: D4RL reference scores and declared action spaces.

The D4RL-normalised score (Fu et al., 2020; the paper's tables report it) is
``100 (R - R_random) / (R_expert - R_random)``. The reference returns ship in
``ipd_plugins/assets/d4rl_ref_scores.json`` (copied from D4RL's ``infos.py``), keyed by task
(``hopper``, ``halfcheetah``, ...). Any gymnasium version of a task maps to the same key:
``Hopper-v5``, ``Hopper-v4``, ``hopper``, ``hopper-medium-v2`` and the Minari id
``mujoco/hopper/medium-v0`` all give ``hopper``. Other tasks (e.g. the tiny Pendulum datasets
used in tests) add their own with :func:`register_ref_scores`.

Every environment the package steps is built by :func:`make_env`, which also routes MuJoCo's
warnings through Python's :mod:`warnings` instead of stdout and ``MUJOCO_LOG.TXT``.
"""

from __future__ import annotations

import functools
import json
import re
import warnings
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import gymnasium as gym

__all__ = [
    "REF_SCORES",
    "env_key",
    "ref_scores",
    "register_ref_scores",
    "env_registered",
    "action_bounds",
    "set_state_from_observation",
    "make_env",
]

_VERSION = re.compile(r"-v\d+$")


def _load_shipped() -> dict[str, tuple[float, float]]:
    text = resources.files("ipd_plugins").joinpath("assets/d4rl_ref_scores.json").read_text()
    by_env = json.loads(text)["by_env"]
    return {k: (float(v["ref_min"]), float(v["ref_max"])) for k, v in by_env.items()}


# task key -> (ref_min, ref_max): the return of a random policy and of an expert.
REF_SCORES: dict[str, tuple[float, float]] = _load_shipped()
# ipd's own tiny family (Pendulum-v1 has no D4RL scores): a uniform random policy and the
# noiseless scripted controller of ``ipd_plugins.data.make``, 200 episodes each, seed 0.
REF_SCORES["pendulum"] = (-1218.2, -149.1)


def _normalise(name: str) -> str:
    """``"Walker2d-v5"`` -> ``"walker2d"``; ``"Half_Cheetah"`` -> ``"halfcheetah"``."""
    return re.sub(r"[^a-z0-9]", "", _VERSION.sub("", name.strip()).lower())


def _candidates(env_id: str) -> list[str]:
    """The whole id first, then its ``/``- and ``-``-separated parts (dataset ids)."""
    out = [_normalise(env_id)]
    for part in re.split(r"[/]", _VERSION.sub("", env_id.strip())):
        out.append(_normalise(part))
        out.extend(_normalise(p) for p in part.split("-"))
    return [c for c in out if c]


def env_key(env_id: str | None) -> str | None:
    """The reference-score key of ``env_id`` (``"Hopper-v5"`` -> ``"hopper"``), or None."""
    if not env_id:
        return None
    for cand in _candidates(env_id):
        if cand in REF_SCORES:
            return cand
    return None


def ref_scores(env_id: str | None) -> tuple[float, float] | None:
    """D4RL ``(ref_min, ref_max)`` for ``env_id`` (any version or a task name), or None."""
    key = env_key(env_id)
    return None if key is None else REF_SCORES[key]


def register_ref_scores(env_id_or_key: str, ref_min: float, ref_max: float) -> str:
    """Add (or replace) the reference returns of a task; returns the key used.

    ``register_ref_scores("Pendulum-v1", -1200.0, -150.0)`` makes ``ref_scores("Pendulum-v1")``
    and ``ref_scores("pendulum")`` answer. ``ref_max`` must exceed ``ref_min``.
    """
    key = _normalise(env_id_or_key)
    if not key:
        raise ValueError(f"register_ref_scores: cannot make a key from {env_id_or_key!r}")
    ref_min, ref_max = float(ref_min), float(ref_max)
    if not (np.isfinite(ref_min) and np.isfinite(ref_max)) or ref_max <= ref_min:
        raise ValueError(
            f"register_ref_scores({env_id_or_key!r}): need finite ref_min < ref_max, "
            f"got {ref_min} and {ref_max}"
        )
    REF_SCORES[key] = (ref_min, ref_max)
    return key


def env_registered(env_id: str | None) -> bool:
    """Whether gymnasium knows ``env_id`` (without creating the environment)."""
    if not env_id:
        return False
    import gymnasium as gym

    try:
        gym.spec(env_id)
    except Exception:  # gymnasium raises several error types for unknown / bad ids
        return False
    return True


#: MuJoCo 4 deprecates the ``settotalmass`` compiler attribute that gymnasium 1.0's
#: ``half_cheetah.xml`` uses; it still applies it, so the model is unchanged. Its default
#: handler printed the notice on every HalfCheetah built (hundreds per ``ipd data make``) and
#: appended each to ``MUJOCO_LOG.TXT`` in the working directory.
_KNOWN_MUJOCO_NOTICES = ("compiler attribute 'settotalmass' is deprecated",)


def _mujoco_warning(message: str) -> None:
    """MuJoCo's user-warning hook: drop the known notices, pass the rest to :mod:`warnings`."""
    if not message.startswith(_KNOWN_MUJOCO_NOTICES):
        warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=2)


@functools.cache
def _route_mujoco_warnings() -> None:
    """Install :func:`_mujoco_warning` once, unless the user set a MuJoCo warning hook."""
    try:
        import mujoco
    except ImportError:  # environments without MuJoCo (Pendulum, toy ones) need nothing
        return
    if mujoco.get_mju_user_warning() is None:
        mujoco.set_mju_user_warning(_mujoco_warning)


def make_env(env_id: str, **kwargs: Any) -> gym.Env:
    """``gymnasium.make(env_id, **kwargs)``, with MuJoCo's warnings routed (see above)."""
    import gymnasium as gym

    _route_mujoco_warnings()
    return gym.make(env_id, **kwargs)


@functools.lru_cache(maxsize=64)
def _bounds(env_id: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    import gymnasium as gym

    try:
        env = make_env(env_id)
    except Exception:  # not registered, or its simulator is not installed
        return None
    try:
        space = env.action_space
        if not isinstance(space, gym.spaces.Box):
            return None
        return tuple(space.low.astype(float).ravel()), tuple(space.high.astype(float).ravel())
    finally:
        env.close()


def action_bounds(env_id: str | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The declared Box action space ``(low, high)`` of ``env_id`` (float32, (A,)), or None.

    Creates the environment once per id (cached); None when gymnasium cannot create it or its
    action space is not a Box.
    """
    if not env_registered(env_id):
        return None
    got = _bounds(env_id)
    if got is None:
        return None
    return np.asarray(got[0], np.float32), np.asarray(got[1], np.float32)


def set_state_from_observation(env, obs: np.ndarray) -> None:
    """Put a MuJoCo locomotion env in the state an observation describes.

    For gymnasium's Hopper, Walker2d and HalfCheetah the observation is ``qpos[1:]`` followed
    by ``qvel`` (the x position is left out; it enters neither the dynamics nor the reward), so
    ``qpos = [0, obs[:nq-1]]``, ``qvel = obs[nq-1:]`` restores the simulation exactly (up to
    the velocity clipping some versions apply to the observation). Used to replay imagined
    segments in the true simulator (``benchmarks/augment_quality.py``).
    """
    sim = env.unwrapped
    model = getattr(sim, "model", None)
    if model is None or not hasattr(sim, "set_state"):
        raise ValueError(f"{sim.spec.id if sim.spec else sim}: not a MuJoCo environment")
    obs = np.asarray(obs, np.float64).reshape(-1)
    nq, nv = model.nq, model.nv
    if obs.shape[0] != nq - 1 + nv:
        raise ValueError(
            f"{sim.spec.id if sim.spec else type(sim).__name__}: an observation of "
            f"{obs.shape[0]} numbers is not qpos[1:] + qvel ({nq - 1} + {nv}); only "
            "locomotion tasks observed that way (Hopper, Walker2d, HalfCheetah) can be restored"
        )
    sim.set_state(np.r_[0.0, obs[: nq - 1]], obs[nq - 1 :])
