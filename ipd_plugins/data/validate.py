"""Dataset checks: every problem is reported with the field that has it."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Container, Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ipd_plugins.data.dataset import TrajectoryDataset

__all__ = [
    "validate_dataset",
    "check_action_bounds",
    "enforce_action_bounds",
    "require_keys",
    "named_source",
]


def validate_dataset(ds: TrajectoryDataset) -> None:
    """Raise :class:`DatasetError` naming the field: NaN/inf, ranks, lengths, empty data, bounds."""
    from ipd_plugins.data.dataset import DatasetError

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
    actions: np.ndarray, low: np.ndarray, high: np.ndarray, tolerance: float = 1e-5
) -> None:
    """Fail when actions leave [low, high]; the message suggests the explicit clip flag."""
    from ipd_plugins.data.dataset import DatasetError

    below = actions < np.asarray(low) - tolerance
    above = actions > np.asarray(high) + tolerance
    bad = below | above
    if bad.any():
        step, dim = (int(x) for x in np.argwhere(bad)[0])
        raise DatasetError(
            f"actions: {int(bad.any(1).sum())} step(s) outside the action space "
            f"[{np.min(low):g}, {np.max(high):g}]; first at step {step}, dim {dim} "
            f"(value {actions[step, dim]:g}). Pass clip_actions=True (--clip-actions) to clip them."
        )


def enforce_action_bounds(
    actions: np.ndarray,
    low: np.ndarray | None,
    high: np.ndarray | None,
    *,
    clip_actions: bool = False,
    source: str = "dataset",
    tolerance: float = 1e-5,
) -> tuple[np.ndarray, int]:
    """Check (default) or clip (``clip_actions=True``) actions against the declared space.

    Returns ``(actions, n_clipped_steps)``. Clipping is never silent: it warns with the number
    of steps changed. Without bounds the actions pass through unchanged. Errors name ``source``.
    """
    from ipd_plugins.data.dataset import DatasetError

    if low is None or high is None:
        return actions, 0
    actions = np.asarray(actions)
    low, high = np.asarray(low, np.float32), np.asarray(high, np.float32)
    if actions.ndim != 2 or actions.shape[1:] != low.shape or low.shape != high.shape:
        raise DatasetError(
            f"{source}: actions have shape {actions.shape} but the action space has shape "
            f"{low.shape}"
        )
    if not clip_actions:
        try:
            check_action_bounds(actions, low, high, tolerance)
        except DatasetError as err:
            raise DatasetError(f"{source}: {err}") from None
        return actions, 0
    outside = ((actions < low - tolerance) | (actions > high + tolerance)).any(1)
    n = int(outside.sum())
    if n:
        warnings.warn(
            f"{source}: clipped {n} of {len(actions)} step(s) whose actions left the action "
            f"space [{np.min(low):g}, {np.max(high):g}] (clip_actions=True)",
            stacklevel=2,
        )
    return np.clip(actions, low, high).astype(actions.dtype, copy=False), n


def require_keys(present: Container[str], needed: Iterable[str], source: str, layout: str) -> None:
    """Fail naming the first key of ``needed`` missing from ``present`` and the file."""
    from ipd_plugins.data.dataset import DatasetError

    needed = list(needed)
    for key in needed:
        if key not in present:
            raise DatasetError(
                f"{source}: missing key '{key}' ({layout} needs {', '.join(needed)})"
            )


@contextlib.contextmanager
def named_source(source: str) -> Iterator[None]:
    """Prefix a :class:`DatasetError` raised inside with the file or id it came from."""
    from ipd_plugins.data.dataset import DatasetError

    try:
        yield
    except DatasetError as err:
        if str(err).startswith(source):
            raise
        raise DatasetError(f"{source}: {err}") from None
