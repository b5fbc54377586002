"""Environments behind datasets: D4RL reference scores and declared action spaces.

The D4RL-normalised score (Fu et al., 2020; the paper's tables report it) is
``100 (R - R_random) / (R_expert - R_random)``. The reference returns ship in
``ipd_plugins/assets/d4rl_ref_scores.json`` (copied from D4RL's ``infos.py``), keyed by task
(``hopper``, ``halfcheetah``, ...). Any gymnasium version of a task maps to the same key:
``Hopper-v5``, ``Hopper-v4``, ``hopper``, ``hopper-medium-v2`` and the Minari id
``mujoco/hopper/medium-v0`` all give ``hopper``. Other tasks (e.g. the tiny Pendulum datasets
used in tests) add their own with :func:`register_ref_scores`.

gymnasium-robotics' Adroit ids map to D4RL's tasks too (``AdroitHandDoor-v1`` -> ``door``; the
``aliases`` of the JSON file).

Every environment the package steps is built by :func:`make_env`, which also routes MuJoCo's
warnings through Python's :mod:`warnings` instead of stdout and ``MUJOCO_LOG.TXT``.
:func:`check_environment` tells before any training whether an id can be built (and which
package to install when it cannot); :func:`env_spaces` reads an environment's dims and action
bounds (built once per id, cached) for the loaders to check datasets against.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import json
import re
import warnings
from importlib import resources
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ipd_plugins.data.errors import EnvironmentUnavailableError

if TYPE_CHECKING:
    import gymnasium as gym

__all__ = [
    "REF_SCORES",
    "env_key",
    "ref_scores",
    "register_ref_scores",
    "env_registered",
    "action_bounds",
    "check_environment",
    "env_spaces",
    "EnvSpaces",
    "max_episode_steps",
    "EnvironmentUnavailableError",
    "set_state_from_observation",
    "make_env",
]

_VERSION = re.compile(r"-v\d+$")


def _load_shipped() -> tuple[dict[str, tuple[float, float]], dict[str, str]]:
    text = resources.files("ipd_plugins").joinpath("assets/d4rl_ref_scores.json").read_text()
    shipped = json.loads(text)
    by_env = shipped["by_env"]
    scores = {k: (float(v["ref_min"]), float(v["ref_max"])) for k, v in by_env.items()}
    return scores, dict(shipped.get("aliases", {}))


# task key -> (ref_min, ref_max): the return of a random policy and of an expert.
REF_SCORES: dict[str, tuple[float, float]]
# another normalised name of a task -> its key (``adroithanddoor`` -> ``door``)
REF_ALIASES: dict[str, str]
REF_SCORES, REF_ALIASES = _load_shipped()
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
        cand = REF_ALIASES.get(cand, cand)
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
        _import_family(env_id)
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


# -- can an environment be built, and what are its spaces ----------------------------------
#: Families whose ids only exist once a package is imported: (id pattern, module, pip name).
_PLUGIN_FAMILIES: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (
        re.compile(r"^(AdroitHand|FrankaKitchen|AntMaze|PointMaze|Fetch|HandReach|HandManipulate)"),
        "gymnasium_robotics",
        "gymnasium-robotics",
    ),
)
#: Families registered in gymnasium whose simulator is an optional extra: (pattern, extra).
_EXTRAS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(
            r"^(Ant|HalfCheetah|Hopper|Humanoid|HumanoidStandup|InvertedDoublePendulum|"
            r"InvertedPendulum|Pusher|Reacher|Swimmer|Walker2d)-v\d+$"
        ),
        "mujoco",
    ),
    (re.compile(r"^(BipedalWalker|BipedalWalkerHardcore|CarRacing|LunarLander)"), "box2d"),
)
#: The gymnasium id of each reference-score task, for hints on D4RL-style names.
_TASK_ENV = {
    "hopper": "Hopper-v5",
    "halfcheetah": "HalfCheetah-v5",
    "walker2d": "Walker2d-v5",
    "ant": "Ant-v5",
    "door": "AdroitHandDoor-v1",
    "pen": "AdroitHandPen-v1",
    "hammer": "AdroitHandHammer-v1",
    "relocate": "AdroitHandRelocate-v1",
    "kitchen": "FrankaKitchen-v1",
    "pendulum": "Pendulum-v1",
}


class EnvSpaces(NamedTuple):
    """What a dataset is checked against: dims of flat Box spaces (None if not a flat Box) and
    the action bounds (None when the action space is not a bounded Box)."""

    obs_dim: int | None
    act_dim: int | None
    act_low: np.ndarray | None
    act_high: np.ndarray | None


def _unavailable(
    env_id: str, message: str, install: str | None = None
) -> EnvironmentUnavailableError:
    return EnvironmentUnavailableError(message, env_id=env_id, install=install)


def _import_family(env_id: str) -> None:
    """Import the package that registers ``env_id``'s family (e.g. gymnasium-robotics)."""
    for pattern, module, package in _PLUGIN_FAMILIES:
        if pattern.match(env_id.split(":")[-1]):
            try:
                importlib.import_module(module)
            except ImportError:
                raise _unavailable(
                    env_id,
                    f"environment '{env_id}' is provided by {package}, which is not installed: "
                    f"pip install {package}",
                    f"pip install {package}",
                ) from None
            return


def _unknown_message(env_id: str, err: Exception) -> str:
    from gymnasium.envs.registration import registry

    parts = [f"unknown environment '{env_id}': gymnasium has no such id ({err})."]
    lowered = {k.lower(): k for k in registry}
    close = difflib.get_close_matches(env_id.lower(), list(lowered), n=3, cutoff=0.6)
    if close:
        parts.append(f"Close matches: {', '.join(lowered[c] for c in close)}.")
    key = env_key(env_id)
    if key in _TASK_ENV and _TASK_ENV[key] != env_id:
        parts.append(f"The gymnasium environment of the task '{key}' is {_TASK_ENV[key]}.")
    parts.append("Name a gymnasium environment id, e.g. Hopper-v5 or Pendulum-v1.")
    return " ".join(parts)


def _build(env_id: str) -> gym.Env:
    """Build ``env_id`` or raise :class:`EnvironmentUnavailableError` saying why and the fix."""
    import gymnasium as gym

    if not isinstance(env_id, str) or not env_id.strip():
        raise _unavailable(str(env_id), f"no environment id given (got {env_id!r})")
    _import_family(env_id)
    try:
        gym.spec(env_id)
    except ImportError as err:  # "module:Env-v0" with a module that is not installed
        raise _unavailable(
            env_id, f"environment '{env_id}': cannot import its module ({err})"
        ) from err
    except Exception as err:  # NameNotFound, VersionNotFound, DeprecatedEnv, ...
        raise _unavailable(env_id, _unknown_message(env_id, err)) from None
    try:
        return make_env(env_id)
    except (gym.error.DependencyNotInstalled, ImportError) as err:
        extra = next((x for pattern, x in _EXTRAS if pattern.match(env_id)), None)
        install = f'pip install "gymnasium[{extra}]"' if extra else None
        hint = f": {install}" if install else ""
        raise _unavailable(
            env_id,
            f"environment '{env_id}' cannot be built, a package it needs is missing ({err}){hint}",
            install,
        ) from err
    except Exception as err:
        raise _unavailable(
            env_id, f"environment '{env_id}' cannot be built: {type(err).__name__}: {err}"
        ) from err


def _flat_box_dim(space: Any) -> int | None:
    import gymnasium as gym

    if isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
        return int(space.shape[0])
    return None


@functools.lru_cache(maxsize=64)
def _spaces(env_id: str) -> tuple[Any, ...]:
    """Built once per id (failures are not cached): dims and bounds as tuples."""
    env = _build(env_id)
    try:
        obs_dim = _flat_box_dim(env.observation_space)
        space = env.action_space
        act_dim = _flat_box_dim(space)
        low = high = None
        if act_dim is not None and np.isfinite(space.low).all() and np.isfinite(space.high).all():
            low = tuple(space.low.astype(float).ravel())
            high = tuple(space.high.astype(float).ravel())
        return obs_dim, act_dim, low, high
    finally:
        env.close()


def env_spaces(env_id: str) -> EnvSpaces:
    """``(obs_dim, act_dim, act_low, act_high)`` of ``env_id``; the environment is built once
    per id (cached) and closed. Raises :class:`EnvironmentUnavailableError` when it cannot be
    built (the message says why and, for a known family, what to install)."""
    obs_dim, act_dim, low, high = _spaces(env_id)
    return EnvSpaces(
        obs_dim,
        act_dim,
        None if low is None else np.asarray(low, np.float32),
        None if high is None else np.asarray(high, np.float32),
    )


def check_environment(env_id: str) -> None:
    """Raise :class:`EnvironmentUnavailableError` unless ``env_id`` can be built.

    An unknown id says so (with close matches from gymnasium's registry, and the gymnasium id
    of a D4RL task name); a known family whose package is missing names the package to install
    (gymnasium-robotics for AdroitHand*, FrankaKitchen, AntMaze, PointMaze; ``gymnasium[mujoco]``
    for the MuJoCo tasks).
    """
    _spaces(env_id)


def max_episode_steps(env_id: str | None) -> int | None:
    """The time limit of ``env_id``'s registered spec, or None (unknown id, or no limit)."""
    if not env_id:
        return None
    import gymnasium as gym

    try:
        _import_family(env_id)
        steps = gym.spec(env_id).max_episode_steps
    except Exception:  # unknown id or a missing package: no limit known
        return None
    return None if steps is None else int(steps)


def action_bounds(env_id: str | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The declared Box action space ``(low, high)`` of ``env_id`` (float32, (A,)), or None.

    Creates the environment once per id (cached); None when gymnasium cannot create it or its
    action space is not a bounded Box.
    """
    if not env_registered(env_id):
        return None
    try:
        spaces = env_spaces(env_id)
    except EnvironmentUnavailableError:
        return None
    if spaces.act_low is None or spaces.act_high is None:
        return None
    return spaces.act_low, spaces.act_high


def set_state_from_observation(env, obs: np.ndarray) -> None:
    """Put a MuJoCo locomotion env in the state an observation describes.

    For gymnasium's Hopper, Walker2d and HalfCheetah the observation is ``qpos[1:]`` followed
    by ``qvel`` (the x position is left out; it enters neither the dynamics nor the reward), so
    ``qpos = [0, obs[:nq-1]]``, ``qvel = obs[nq-1:]`` restores the simulation exactly (up to
    the velocity clipping some versions apply to the observation). Used to replay imagined
    segments in the true simulator (``benchmarks/probes/augment_quality.py``).
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
