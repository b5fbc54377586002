"""D4RL-style HDF5 files <-> :class:`TrajectoryDataset` (h5py).

Layout (D4RL's ``get_dataset``): flat datasets ``observations`` (N, O), ``actions`` (N, A),
``rewards`` (N,), ``terminals`` (N,), ``timeouts`` (N,) and optionally ``next_observations``
(N, O). A row with ``terminals | timeouts`` ends an episode; rows after the last such row form
a final, unterminated episode.

Without ``next_observations``, s'_t is the next row of the same episode. The file does not hold
the next observation of an episode's last row, so (as D4RL's ``qlearning_dataset`` does):

* the last row of a timeout episode and of the final unterminated episode is **dropped** (a
  warning counts them); the row before becomes the episode's end and is marked truncated, its
  s' being the dropped row's observation. A one-row episode of this kind disappears.
* the last row of a terminated episode is **kept** (the termination is what value learning needs
  from it); s' is unknown and is set to the row's own observation, and the boolean extra column
  ``next_obs_missing`` flags it so dynamics models can leave it out. (D4RL puts the next
  episode's first observation there instead.)

``to_d4rl_hdf5`` always writes ``next_observations``, so its files read back exactly. An
episode that ends with neither flag is written with ``timeouts=True`` on its last row (that is
what D4RL's layout means by an episode end that is not a termination). ``env_id``, the name,
reference scores and action bounds go into file attributes; ``extras`` into the group
``extras/``.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from ipd_plugins.data import envs
from ipd_plugins.data.dataset import DatasetError, TrajectoryDataset
from ipd_plugins.data.validate import enforce_action_bounds, named_source, require_keys

__all__ = ["to_d4rl_hdf5", "from_d4rl_hdf5", "D4RL_KEYS", "NEXT_OBS_MISSING"]

D4RL_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")
NEXT_OBS_MISSING = "next_obs_missing"  # extras column: s' of this row is a placeholder


def to_d4rl_hdf5(ds: TrajectoryDataset, path: str | os.PathLike) -> Path:
    """Write ``ds`` as a D4RL-layout HDF5 file (atomically: temp file, then rename)."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ends = np.zeros(ds.n_steps, bool)
    ends[np.cumsum(ds.episode_lengths) - 1] = True
    timeouts = ds.truncations | (ends & ~ds.terminations)
    fd, tmp = tempfile.mkstemp(suffix=".h5.tmp", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("observations", data=ds.observations)
            f.create_dataset("actions", data=ds.actions)
            f.create_dataset("rewards", data=ds.rewards)
            f.create_dataset("terminals", data=ds.terminations)
            f.create_dataset("timeouts", data=timeouts)
            f.create_dataset("next_observations", data=ds.next_observations)
            for key, value in ds.extras.items():
                f.create_dataset(f"extras/{key}", data=value)
            f.attrs["name"] = ds.name
            if ds.env_id:
                f.attrs["env_id"] = ds.env_id
            if ds.ref_min_score is not None and ds.ref_max_score is not None:
                f.attrs["ref_min_score"] = ds.ref_min_score
                f.attrs["ref_max_score"] = ds.ref_max_score
            if ds.action_low is not None and ds.action_high is not None:
                f.attrs["action_low"] = np.asarray(ds.action_low, np.float32)
                f.attrs["action_high"] = np.asarray(ds.action_high, np.float32)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _attr(f, key: str):
    value = f.attrs.get(key)
    if isinstance(value, bytes):
        value = value.decode()
    return value


def _read(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    import h5py

    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise DatasetError(f"{path}: not a readable HDF5 file ({err})") from None
    with f:
        require_keys(f, D4RL_KEYS, str(path), "the D4RL layout")
        keys = [*D4RL_KEYS, *(["next_observations"] if "next_observations" in f else [])]
        for key in keys:
            if not isinstance(f[key], h5py.Dataset):
                raise DatasetError(f"{path}: '{key}' is a group, expected a dataset")
        arrays = {k: f[k][()] for k in keys}
        extras = {}
        if "extras" in f:
            extras = {k: v[()] for k, v in f["extras"].items() if isinstance(v, h5py.Dataset)}
        attrs = {k: _attr(f, k) for k in f.attrs}
    return arrays, extras, attrs


def _check_shapes(arrays: dict[str, np.ndarray], extras: dict[str, np.ndarray], src: str) -> int:
    ranks = {
        "observations": (2,),
        "next_observations": (2,),
        "actions": (1, 2),
        "rewards": (1, 2),
        "terminals": (1, 2),
        "timeouts": (1, 2),
    }
    n = arrays["actions"].shape[0] if arrays["actions"].ndim else 0
    if n == 0:
        raise DatasetError(f"{src}: the file holds no steps (actions is empty)")
    for key, arr in {**arrays, **{f"extras/{k}": v for k, v in extras.items()}}.items():
        if arr.ndim == 0 or arr.shape[0] != n:
            raise DatasetError(f"{src}: {key} has shape {arr.shape} but actions has {n} rows")
        if key in ranks and arr.ndim not in ranks[key]:
            raise DatasetError(
                f"{src}: {key} has rank {arr.ndim} (shape {arr.shape}), "
                f"expected rank {' or '.join(map(str, ranks[key]))}"
            )
        if key in ("rewards", "terminals", "timeouts") and arr.ndim == 2 and arr.shape[1] != 1:
            raise DatasetError(f"{src}: {key} has shape {arr.shape}, expected ({n},)")
    return n


def from_d4rl_hdf5(
    path: str | os.PathLike, env_id: str | None = None, *, clip_actions: bool = False
) -> TrajectoryDataset:
    """Read a D4RL-layout HDF5 file (see the module docstring for rows without s').

    ``env_id`` overrides the file's ``env_id`` attribute; it picks the reference scores (when the
    file has none) and the declared action space (when the file has no ``action_low``/
    ``action_high`` and gymnasium can create the environment). Actions outside that space are
    an error unless ``clip_actions=True``.
    """
    path = Path(path)
    src = str(path)
    arrays, extras, attrs = _read(path)
    n = _check_shapes(arrays, extras, src)
    terminals = arrays["terminals"].reshape(n).astype(bool)
    timeouts = arrays["timeouts"].reshape(n).astype(bool)
    obs = arrays["observations"]
    ends = terminals | timeouts
    last_is_end = bool(ends[-1])
    ends[-1] = True  # a final unterminated episode still ends with the file
    keep = np.ones(n, bool)
    truncations = timeouts.copy()
    if "next_observations" in arrays:
        next_obs = arrays["next_observations"]
    else:
        next_obs = np.empty_like(obs)
        next_obs[:-1] = obs[1:]
        missing_s1 = ends & ~terminals  # timeout / final rows: s' unknown and bootstrapped
        missing_s1[-1] = not terminals[-1]
        keep &= ~missing_s1
        # the kept row before each dropped one ends its (shorter) episode: truncated
        before = np.flatnonzero(missing_s1) - 1
        before = before[(before >= 0) & ~ends[np.maximum(before, 0)]]
        truncations[before] = True
        ends[before] = True
        missing_term = terminals & ends
        next_obs[missing_term] = obs[missing_term]
        if missing_term.any():
            extras = {**extras, NEXT_OBS_MISSING: missing_term}
        dropped = int(missing_s1.sum())
        if dropped:
            warnings.warn(
                f"{src}: no next_observations in the file; dropped {dropped} row(s) whose next "
                f"observation is unknown (the last row of each timeout episode"
                f"{'' if last_is_end else ' and of the final unterminated episode'}), as D4RL's "
                f"qlearning_dataset does; {int(missing_term.sum())} terminal row(s) kept with "
                f"extras['{NEXT_OBS_MISSING}']",
                stacklevel=2,
            )
    idx = np.flatnonzero(keep)
    if idx.size == 0:
        raise DatasetError(f"{src}: no step has a known next observation")
    # episode lengths of the kept rows: count kept rows between consecutive ends
    end_rows = np.flatnonzero(ends & keep)
    lengths = np.diff(np.concatenate([[-1], np.searchsorted(idx, end_rows)]))
    lengths = lengths[lengths > 0]

    env_id = env_id or attrs.get("env_id")
    ref = (attrs.get("ref_min_score"), attrs.get("ref_max_score"))
    if ref[0] is None or ref[1] is None:
        ref = envs.ref_scores(env_id) or (None, None)
    if attrs.get("action_low") is not None and attrs.get("action_high") is not None:
        bounds = (
            np.asarray(attrs["action_low"], np.float32),
            np.asarray(attrs["action_high"], np.float32),
        )
    else:
        bounds = envs.action_bounds(env_id)
    actions = arrays["actions"][idx]
    actions = actions.reshape(len(idx), -1)
    low, high = bounds if bounds is not None else (None, None)
    actions, _ = enforce_action_bounds(actions, low, high, clip_actions=clip_actions, source=src)
    with named_source(src):
        return TrajectoryDataset.from_arrays(
            {
                "observations": obs[idx],
                "next_observations": next_obs[idx],
                "actions": actions,
                "rewards": arrays["rewards"].reshape(n)[idx],
                "terminations": terminals[idx],
                "truncations": truncations[idx],
            },
            lengths.astype(np.int64),
            env_id=env_id,
            name=str(attrs.get("name") or path.stem),
            ref_min_score=None if ref[0] is None else float(ref[0]),
            ref_max_score=None if ref[1] is None else float(ref[1]),
            action_low=low,
            action_high=high,
            extras={k: np.asarray(v)[idx] for k, v in extras.items()},
        )
