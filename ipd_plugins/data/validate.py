"""Dataset checks: every problem is reported with the field that has it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ipd_plugins.data.dataset import TrajectoryDataset

__all__ = ["validate_dataset", "check_action_bounds"]


def validate_dataset(ds: TrajectoryDataset) -> None:
    """Raise :class:`DatasetError` naming the field on NaN/inf, wrong ranks, bad lengths, empty data."""
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
            raise DatasetError(
                f"{key}: has {getattr(ds, key).shape[0]} rows but actions has {n}"
            )
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
            raise DatasetError(f"{key}: expected shape ({ds.actions.shape[1]},), got {np.shape(arr)}")
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
