"""Dataset checks: every problem is reported with the field that has it.

Besides the checks of an in-memory dataset, the loaders share here how a dataset meets its
environment (:func:`resolve_environment`, :func:`conform_to_environment`): the id the user
names overrides the file's, the observation and action dims must match the environment's
spaces, and the actions must lie in its action space (or are clipped, with a warning).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Container, Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from ipd_plugins.data import envs
from ipd_plugins.data.errors import DatasetError, EnvironmentUnavailableError

if TYPE_CHECKING:
    from ipd_plugins.data.dataset import TrajectoryDataset

__all__ = [
    "validate_dataset",
    "check_action_bounds",
    "enforce_action_bounds",
    "require_keys",
    "named_source",
    "as_flags",
    "resolve_environment",
    "conform_to_environment",
]


def validate_dataset(ds: TrajectoryDataset) -> None:
    """Raise :class:`DatasetError` naming the field: NaN/inf, ranks, lengths, empty data, bounds."""
    n = ds.actions.shape[0] if ds.actions.ndim >= 1 else 0
    if n == 0:
        raise DatasetError("actions: the dataset is empty (0 steps)")
    ranks = {
        "observations": 2,
        "next_observations": 2,
        "actions": 2,
        "rewards": 1,
        "terminations": 1,
        "truncations": 1,
        "episode_lengths": 1,
    }
    for key, rank in ranks.items():
        arr = getattr(ds, key)
        if arr.ndim != rank:
            raise DatasetError(f"{key}: expected rank {rank}, got shape {arr.shape}")
    for key in ("observations", "next_observations", "rewards", "terminations", "truncations"):
        if getattr(ds, key).shape[0] != n:
            raise DatasetError(f"{key}: has {getattr(ds, key).shape[0]} rows but actions has {n}")
    for key in ("observations", "actions"):
        if getattr(ds, key).shape[1] == 0:
            raise DatasetError(f"{key}: dim 0 (shape {getattr(ds, key).shape}), nothing to learn")
    if ds.next_observations.shape[1] != ds.observations.shape[1]:
        raise DatasetError(
            f"next_observations: dim {ds.next_observations.shape[1]} != observations dim "
            f"{ds.observations.shape[1]}"
        )
    for key in ("observations", "next_observations", "actions", "rewards"):
        arr = getattr(ds, key)
        bad = ~np.isfinite(arr)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise DatasetError(f"{key}: {int(bad.sum())} NaN/inf value(s), first at step {row}")
    lengths = ds.episode_lengths
    if (lengths <= 0).any():
        raise DatasetError(f"episode_lengths: episode {int(np.argmax(lengths <= 0))} is empty")
    if int(lengths.sum()) != n:
        raise DatasetError(f"episode_lengths: sum to {int(lengths.sum())} but there are {n} steps")
    for key, arr in ds.extras.items():
        if arr.shape[0] != n:
            raise DatasetError(f"extras['{key}']: has {arr.shape[0]} rows but there are {n} steps")
    for key in ("action_low", "action_high"):
        arr = getattr(ds, key)
        if arr is not None and np.shape(arr) != (ds.actions.shape[1],):
            raise DatasetError(
                f"{key}: expected shape ({ds.actions.shape[1]},), got {np.shape(arr)}"
            )
    if ds.action_low is not None and ds.action_high is not None:
        check_action_bounds(ds.actions, ds.action_low, ds.action_high)


def check_action_bounds(
    actions: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    tolerance: float = 1e-5,
    *,
    space: str | None = None,
) -> None:
    """Fail when actions leave [low, high]; the message suggests the explicit clip flag.

    ``space`` names where the bounds come from (e.g. ``"Hopper-v5's action space"``).
    """
    below = actions < np.asarray(low) - tolerance
    above = actions > np.asarray(high) + tolerance
    bad = below | above
    if bad.any():
        step, dim = (int(x) for x in np.argwhere(bad)[0])
        whose = f"; the bounds are {space}" if space else ""
        raise DatasetError(
            f"actions: {int(bad.any(1).sum())} step(s) outside the action space "
            f"[{np.min(low):g}, {np.max(high):g}]; first at step {step}, dim {dim} "
            f"(value {actions[step, dim]:g}){whose}. Pass --clip-actions (clip_actions=True in "
            "Python) to clip them into the space, or check that the data belongs to this "
            "environment."
        )


def enforce_action_bounds(
    actions: np.ndarray,
    low: np.ndarray | None,
    high: np.ndarray | None,
    *,
    clip_actions: bool = False,
    source: str = "dataset",
    tolerance: float = 1e-5,
    space: str | None = None,
) -> tuple[np.ndarray, int]:
    """Check (default) or clip (``clip_actions=True``) actions against the declared space.

    Returns ``(actions, n_clipped_steps)``. Clipping is never silent: it warns with the number
    of steps changed. Without bounds the actions pass through unchanged. Errors name ``source``;
    ``space`` says whose bounds these are.
    """
    if low is None or high is None:
        return actions, 0
    actions = np.asarray(actions)
    if actions.dtype.kind == "f":
        bad = ~np.isfinite(actions)
        if bad.any():  # never clipped into the space: inf is not a large action
            raise DatasetError(
                f"{source}: actions: {int(bad.sum())} NaN/inf value(s), first at step "
                f"{int(np.argwhere(bad)[0][0])}"
            )
    low, high = np.asarray(low, np.float32), np.asarray(high, np.float32)
    if actions.ndim != 2 or actions.shape[1:] != low.shape or low.shape != high.shape:
        raise DatasetError(
            f"{source}: actions have shape {actions.shape} but the action space has shape "
            f"{low.shape}"
        )
    if not clip_actions:
        try:
            check_action_bounds(actions, low, high, tolerance, space=space)
        except DatasetError as err:
            raise DatasetError(f"{source}: {err}") from None
        return actions, 0
    outside = ((actions < low - tolerance) | (actions > high + tolerance)).any(1)
    n = int(outside.sum())
    if n:
        warnings.warn(
            f"{source}: clipped {n} of {len(actions)} step(s) whose actions left the action "
            f"space [{np.min(low):g}, {np.max(high):g}]{f' ({space})' if space else ''} "
            "(--clip-actions)",
            stacklevel=2,
        )
    return np.clip(actions, low, high).astype(actions.dtype, copy=False), n


def require_keys(present: Container[str], needed: Iterable[str], source: str, layout: str) -> None:
    """Fail naming the first key of ``needed`` missing from ``present`` and the file."""
    needed = list(needed)
    for key in needed:
        if key not in present:
            raise DatasetError(
                f"{source}: missing key '{key}' ({layout} needs {', '.join(needed)})"
            )


@contextlib.contextmanager
def named_source(source: str) -> Iterator[None]:
    """Prefix a :class:`DatasetError` raised inside with the file or id it came from."""
    try:
        yield
    except DatasetError as err:
        if str(err).startswith(source):
            raise
        raise DatasetError(f"{source}: {err}") from None


def as_flags(values: np.ndarray, key: str) -> np.ndarray:
    """Booleans from a flag column (bool, or numbers that are all 0 or 1), else an error naming
    ``key``: a NaN or a 0.5 is never turned into True without a word."""
    arr = np.asarray(values)
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind not in "iuf":
        raise DatasetError(f"{key}: dtype {arr.dtype} is not boolean or numeric")
    if arr.dtype.kind == "f":
        nan = np.isnan(arr)
        if nan.any():
            first = _first(nan)
            raise DatasetError(
                f"{key}: {int(nan.sum())} NaN value(s), first at step {first[0] if first else 0}"
                "; a flag must be 0/1 (or true/false)"
            )
    odd = (arr != 0) & (arr != 1)
    if odd.any():
        first = _first(odd)
        raise DatasetError(
            f"{key}: {int(odd.sum())} value(s) neither 0 nor 1, first at step "
            f"{first[0] if first else 0} (value {arr[first].item():g}); a flag must be 0/1 "
            "(or true/false)"
        )
    return arr.astype(bool)


def _first(mask: np.ndarray) -> tuple[int, ...]:
    """Index of the first True of ``mask`` (``()`` for a 0-d mask)."""
    return tuple(int(i) for i in np.argwhere(mask)[0])


def resolve_environment(
    env_id: str | None, file_env_id: str | None, source: str
) -> tuple[str | None, envs.EnvSpaces | None]:
    """The environment a dataset is checked against, and its spaces (None: no check).

    ``env_id`` (given by the user) overrides ``file_env_id`` (named by the data), with a warning
    when they differ, and must be buildable (else :class:`EnvironmentUnavailableError`). An id
    only the file names that gymnasium cannot build (e.g. D4RL's ``hopper-medium-v2``) is kept
    as the dataset's ``env_id`` with a warning that nothing was checked against it; no id at
    all is warned about too.
    """
    env_id = str(env_id).strip() if env_id is not None and str(env_id).strip() else None
    file_env_id = str(file_env_id) if file_env_id else None
    if env_id is not None:
        if file_env_id and file_env_id != env_id:
            warnings.warn(
                f"{source}: the data names the environment '{file_env_id}'; using the given "
                f"env_id '{env_id}' instead",
                stacklevel=3,
            )
        return env_id, envs.env_spaces(env_id)
    if file_env_id is None:
        warnings.warn(
            f"{source}: no environment: the data names none and none was given, so its dims "
            "and action bounds are not checked against one, and there are no reference scores "
            "unless the data has its own; name one with env_id (--env)",
            stacklevel=3,
        )
        return None, None
    try:
        return file_env_id, envs.env_spaces(file_env_id)
    except EnvironmentUnavailableError as err:
        warnings.warn(
            f"{source}: not checked against an environment: the data names '{file_env_id}', "
            f"which cannot be built ({err}). Name the environment with env_id (--env) to "
            "check the dims and the action bounds.",
            stacklevel=3,
        )
        return file_env_id, None


def conform_to_environment(
    observations: np.ndarray,
    actions: np.ndarray,
    *,
    env_id: str | None,
    spaces: envs.EnvSpaces | None,
    declared: tuple[np.ndarray | None, np.ndarray | None] = (None, None),
    clip_actions: bool = False,
    source: str = "dataset",
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Check ``observations``/``actions`` against ``env_id``'s ``spaces``; returns
    ``(actions, action_low, action_high)``.

    The dims must match the environment's (an error names the field and both dims). The bounds
    are the environment's, whatever the data declares (``declared``, e.g. stored in the file;
    used only without an environment, and a disagreement is warned about). Actions outside them
    are an error unless ``clip_actions=True``, which clips and warns with the count. Arrays of
    an unexpected rank pass through unchecked, for :func:`validate_dataset` to report.
    """
    low, high = (None, None) if declared is None else declared
    low = None if low is None else np.asarray(low, np.float32)
    high = None if high is None else np.asarray(high, np.float32)
    space = None
    if spaces is not None:
        for key, arr, dim, what in (
            ("actions", actions, spaces.act_dim, "action"),
            ("observations", observations, spaces.obs_dim, "observation"),
        ):
            if dim is not None and arr.ndim == 2 and arr.shape[1] != dim:
                raise DatasetError(
                    f"{source}: {key} have shape {arr.shape} but the {what} space has shape "
                    f"({dim},): the dataset's {what} dim is {arr.shape[1]}, {env_id}'s is {dim}"
                )
        if spaces.act_low is not None and spaces.act_high is not None:
            env_low, env_high = spaces.act_low, spaces.act_high
            if (
                low is not None
                and high is not None
                and low.shape == env_low.shape
                and high.shape == env_high.shape
                and not (np.allclose(low, env_low) and np.allclose(high, env_high))
            ):
                warnings.warn(
                    f"{source}: the data declares action bounds [{np.min(low):g}, "
                    f"{np.max(high):g}], {env_id}'s action space is [{np.min(env_low):g}, "
                    f"{np.max(env_high):g}]; checking against the environment's",
                    stacklevel=3,
                )
            low, high, space = env_low, env_high, f"{env_id}'s action space"
    if actions.ndim != 2:
        return actions, low, high
    actions, _ = enforce_action_bounds(
        actions, low, high, clip_actions=clip_actions, source=source, space=space
    )
    return actions, low, high
