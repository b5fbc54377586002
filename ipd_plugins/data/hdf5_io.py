"""D4RL-style HDF5 files <-> :class:`TrajectoryDataset` (h5py).

Layout (D4RL's ``get_dataset``): flat datasets ``observations`` (N, O), ``actions`` (N, A),
``rewards`` (N,), ``terminals`` (N,), ``timeouts`` (N,) and optionally ``next_observations``
(N, O). A row with ``terminals | timeouts`` ends an episode; rows after the last such row form
a final, unterminated episode. Files from other projects differ; each difference is accepted
with a warning (a ``note:`` in the CLI) that says what was assumed:

* no ``timeouts``: episodes end only at terminals and at the end of the file, unless
  ``episode_length=N`` is given: then an episode also ends (truncated) after N steps.
* no ``terminals``: no step is a termination.
* neither: an error, unless ``episode_length=N`` is given (episodes of N steps, the last one
  possibly shorter, each ending in a time limit; the raw DAPG Adroit demos look like this).
* an episode whose last step is a terminal at exactly the time limit (``episode_length``, else
  the environment's ``max_episode_steps``) is kept as a termination, with a warning that it
  looks like a time limit.
* (N, 1) rewards/terminals/timeouts are squeezed; float64 and integer arrays are cast to
  float32 (a value float32 cannot hold is an error). A flag that is NaN or not 0/1 is an error.

Without ``next_observations``, s'_t is the next row of the same episode. The file does not hold
the next observation of an episode's last row, so (as D4RL's ``qlearning_dataset`` does):

* the last row of a time-limit episode and of the final unterminated episode is **dropped** (a
  warning counts them); the row before becomes the episode's end and is marked truncated, its
  s' being the dropped row's observation. A one-row episode of this kind disappears.
* the last row of a terminated episode is **kept** (the termination is what value learning needs
  from it); s' is unknown and is set to the row's own observation, and the boolean extra column
  ``next_obs_missing`` flags it so dynamics models can leave it out (the warning says so too).
  (D4RL puts the next episode's first observation there instead.)

The environment (``env_id``, else the file's ``env_id`` attribute) supplies the reference
scores (when the file has none) and the dims and action bounds the data is checked against.

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
from ipd_plugins.data.validate import (
    as_flags,
    conform_to_environment,
    named_source,
    require_keys,
    resolve_environment,
)

__all__ = ["to_d4rl_hdf5", "from_d4rl_hdf5", "D4RL_KEYS", "NEXT_OBS_MISSING"]

D4RL_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")
REQUIRED_KEYS = ("observations", "actions", "rewards")  # terminals/timeouts: see the docstring
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
        require_keys(f, REQUIRED_KEYS, str(path), "the D4RL layout")
        optional = ("terminals", "timeouts", "next_observations")
        keys = [*REQUIRED_KEYS, *(k for k in optional if k in f)]
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
        if key in arrays and arr.dtype.kind not in "biuf":
            raise DatasetError(f"{src}: {key} has dtype {arr.dtype}, expected numbers")
        if key in ("rewards", "terminals", "timeouts") and arr.ndim == 2 and arr.shape[1] != 1:
            raise DatasetError(f"{src}: {key} has shape {arr.shape}, expected ({n},)")
    return n


def _episode_flags(
    arrays: dict[str, np.ndarray], n: int, src: str, episode_length: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """``(terminals, timeouts)`` as booleans, with the assumptions for missing keys (warned)."""
    has_term, has_time = "terminals" in arrays, "timeouts" in arrays
    if episode_length is not None and (
        isinstance(episode_length, bool)
        or not isinstance(episode_length, int | np.integer)
        or episode_length <= 0
    ):
        raise DatasetError(f"episode_length: must be a positive integer, got {episode_length!r}")
    if not has_term and not has_time and episode_length is None:
        raise DatasetError(
            f"{src}: neither 'terminals' nor 'timeouts' is in the file, so where episodes end is "
            "unknown; pass --episode-length N (episode_length=N in Python) to take them as "
            "consecutive episodes of N steps (the last one possibly shorter), each ending in a "
            "time limit"
        )
    with named_source(src):
        terminals = (
            as_flags(arrays["terminals"].reshape(n), "terminals") if has_term else np.zeros(n, bool)
        )
        timeouts = (
            as_flags(arrays["timeouts"].reshape(n), "timeouts") if has_time else np.zeros(n, bool)
        )
    notes = []
    if not has_term:
        notes.append("no 'terminals' in the file: no step is taken as a termination")
    if not has_time and episode_length is None:
        notes.append(
            "no 'timeouts' in the file: episodes end only at terminals and at the end of the "
            "file (pass --episode-length N if they also end at a time limit)"
        )
    elif not has_time:
        # a time limit: N steps after the start of each episode (a terminal starts a new one)
        begins = np.zeros(n, np.int64)
        after_terminal = np.flatnonzero(terminals[:-1]) + 1
        begins[after_terminal] = after_terminal
        position = np.arange(n) - np.maximum.accumulate(begins)
        timeouts = ((position + 1) % episode_length == 0) & ~terminals
        notes.append(
            f"no 'timeouts' in the file: an episode ends at a terminal or after episode_length="
            f"{episode_length} steps (a time limit, marked truncated; {int(timeouts.sum())} "
            "such end(s))"
        )
    elif episode_length is not None:
        notes.append(f"episode_length={episode_length} ignored: the file has 'timeouts'")
    for note in notes:
        warnings.warn(f"{src}: {note}", stacklevel=3)
    return terminals, timeouts


def _warn_time_limit_terminals(
    terminals: np.ndarray, timeouts: np.ndarray, limit: int | None, whose: str, src: str
) -> None:
    """Warn when episodes end with a terminal (and no timeout) at exactly step ``limit``."""
    if limit is None:
        return
    ends = terminals | timeouts
    ends[-1] = True
    end_rows = np.flatnonzero(ends)
    lengths = np.diff(np.concatenate([[-1], end_rows]))
    suspect = (lengths == limit) & terminals[end_rows] & ~timeouts[end_rows]
    if suspect.any():
        warnings.warn(
            f"{src}: {int(suspect.sum())} of {len(end_rows)} episode(s) end with a terminal at "
            f"exactly step {limit}, {whose}: that looks like a time limit recorded as a "
            "termination. Kept as terminations; if they are time-outs, set 'timeouts' (and clear "
            "'terminals') on those rows.",
            stacklevel=3,
        )


def from_d4rl_hdf5(
    path: str | os.PathLike,
    env_id: str | None = None,
    *,
    clip_actions: bool = False,
    episode_length: int | None = None,
) -> TrajectoryDataset:
    """Read a D4RL-layout HDF5 file (see the module docstring for the quirks handled).

    ``env_id`` overrides the file's ``env_id`` attribute (warning when they differ); it picks
    the reference scores (when the file has none), and the data's dims and actions are checked
    against its spaces (the action bounds are the environment's; the file's ``action_low``/
    ``action_high`` serve only without one). Actions outside are an error unless
    ``clip_actions=True``. ``episode_length`` gives the time limit of files without
    ``timeouts``.
    """
    path = Path(path)
    src = str(path)
    arrays, extras, attrs = _read(path)
    n = _check_shapes(arrays, extras, src)
    terminals, timeouts = _episode_flags(arrays, n, src, episode_length)
    env_id, spaces = resolve_environment(env_id, attrs.get("env_id"), src)
    if episode_length is not None and "timeouts" not in arrays:
        _warn_time_limit_terminals(terminals, timeouts, episode_length, "episode_length", src)
    elif spaces is not None:
        limit = envs.max_episode_steps(env_id)
        _warn_time_limit_terminals(terminals, timeouts, limit, f"{env_id}'s time limit", src)
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
        said = [f"{src}: no next_observations in the file; s' is the next row's observation"]
        if dropped:
            said.append(
                f"dropped {dropped} row(s) whose next observation is unknown (the last row of "
                f"each time-limit episode"
                f"{'' if last_is_end else ' and of the final unterminated episode'}), as D4RL's "
                "qlearning_dataset does"
            )
        if missing_term.any():
            said.append(
                f"kept {int(missing_term.sum())} terminal row(s) whose next observation is "
                "unknown: their s' is set to the row's own observation and flagged in "
                f"extras['{NEXT_OBS_MISSING}']"
            )
        warnings.warn("; ".join(said), stacklevel=2)
    idx = np.flatnonzero(keep)
    if idx.size == 0:
        raise DatasetError(f"{src}: no step has a known next observation")
    # episode lengths of the kept rows: count kept rows between consecutive ends
    end_rows = np.flatnonzero(ends & keep)
    lengths = np.diff(np.concatenate([[-1], np.searchsorted(idx, end_rows)]))
    lengths = lengths[lengths > 0]

    ref = (attrs.get("ref_min_score"), attrs.get("ref_max_score"))
    if ref[0] is None or ref[1] is None:
        ref = envs.ref_scores(env_id) or (None, None)
    declared = (None, None)
    if attrs.get("action_low") is not None and attrs.get("action_high") is not None:
        declared = (
            np.asarray(attrs["action_low"], np.float32),
            np.asarray(attrs["action_high"], np.float32),
        )
    actions = arrays["actions"][idx]
    actions = actions.reshape(len(idx), -1)
    with named_source(src):
        actions, low, high = conform_to_environment(
            obs,
            actions,
            env_id=env_id,
            spaces=spaces,
            declared=declared,
            clip_actions=clip_actions,
            source=src,
        )
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
