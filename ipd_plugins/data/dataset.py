"""The in-memory trajectory dataset every component trains on.

Steps of all episodes are stored back to back in flat numpy arrays (``N`` steps, ``M``
episodes); ``episode_lengths`` gives the boundaries. Each step holds its own observation and
the next one, so no episode ever borrows a neighbour's observation (see the d3rlpy ``get_minari``
pitfall in the README).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from ipd_plugins.data.errors import DatasetError
from ipd_plugins.data.validate import as_flags, validate_dataset

__all__ = ["TrajectoryDataset", "Episode", "DatasetError", "ARRAY_FIELDS", "STEP_FIELDS"]

# The arrays a dataset is made of (besides ``extras``): one row per step (STEP_FIELDS), then
# the episode lengths; ARRAY_FIELDS is what concat joins, content_hash hashes and an npz holds.
STEP_FIELDS = (
    "observations",
    "actions",
    "rewards",
    "next_observations",
    "terminations",
    "truncations",
)
ARRAY_FIELDS = (*STEP_FIELDS, "episode_lengths")


@dataclass(frozen=True)
class Episode:
    """A view of one episode: arrays of length ``T`` (observations and next observations)."""

    observations: np.ndarray  # (T, O)
    actions: np.ndarray  # (T, A)
    rewards: np.ndarray  # (T,)
    next_observations: np.ndarray  # (T, O)
    terminations: np.ndarray  # (T,) bool
    truncations: np.ndarray  # (T,) bool

    def __len__(self) -> int:
        return len(self.actions)


@dataclass(frozen=True, eq=False)
class TrajectoryDataset:
    """Episodes of (s, a, r, s', terminated, truncated), flat.

    ``extras`` holds optional per-step columns (length ``N``), e.g. the augmentation's
    provenance: ``imagined`` (bool), ``source_index`` (int, the real step an imagined
    segment grew from, -1 for real steps) and ``timestep`` (int, a segment step's index in the
    episode it continues, -1 where that is its index here; see :meth:`timesteps`).
    """

    observations: np.ndarray  # (N, O) float32
    actions: np.ndarray  # (N, A) float32
    rewards: np.ndarray  # (N,) float32
    next_observations: np.ndarray  # (N, O) float32
    terminations: np.ndarray  # (N,) bool
    truncations: np.ndarray  # (N,) bool
    episode_lengths: np.ndarray  # (M,) int64, sums to N
    env_id: str | None = None  # gymnasium id, e.g. "Hopper-v5"
    name: str = "dataset"
    ref_min_score: float | None = None  # D4RL-style normalisation: return of a random policy
    ref_max_score: float | None = None  # ... and of an expert
    action_low: np.ndarray | None = None  # (A,) declared action space, when known
    action_high: np.ndarray | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_dataset(self)

    # -- sizes ---------------------------------------------------------------------------
    @property
    def n_steps(self) -> int:
        return int(self.actions.shape[0])

    @property
    def n_episodes(self) -> int:
        return int(self.episode_lengths.shape[0])

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    def __len__(self) -> int:
        return self.n_steps

    @property
    def episode_starts(self) -> np.ndarray:
        """(M,) index of each episode's first step."""
        return np.concatenate([[0], np.cumsum(self.episode_lengths)[:-1]]).astype(np.int64)

    @property
    def episode_index(self) -> np.ndarray:
        """(N,) which episode each step belongs to."""
        return np.repeat(np.arange(self.n_episodes), self.episode_lengths)

    def timesteps(self) -> np.ndarray:
        """(N,) int64 each step's time index in its episode (what DT's timestep embedding reads).

        The position within the episode, except where ``extras["timestep"]`` is >= 0: an
        augmented segment starts mid-episode and carries the times of the steps it continues.
        """
        own = np.arange(self.n_steps, dtype=np.int64) - np.repeat(
            self.episode_starts, self.episode_lengths
        )
        given = self.extras.get("timestep")
        return own if given is None else np.where(given >= 0, given, own).astype(np.int64)

    @property
    def action_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The declared action space, or the data's own range when none was declared."""
        low = self.action_low if self.action_low is not None else self.actions.min(0)
        high = self.action_high if self.action_high is not None else self.actions.max(0)
        return np.asarray(low, np.float32), np.asarray(high, np.float32)

    # -- episodes ------------------------------------------------------------------------
    def episode(self, i: int) -> Episode:
        start = int(self.episode_starts[i])
        sl = slice(start, start + int(self.episode_lengths[i]))
        return Episode(
            self.observations[sl],
            self.actions[sl],
            self.rewards[sl],
            self.next_observations[sl],
            self.terminations[sl],
            self.truncations[sl],
        )

    def episodes(self) -> Iterator[Episode]:
        for i in range(self.n_episodes):
            yield self.episode(i)

    def episode_returns(self) -> np.ndarray:
        """(M,) undiscounted return of each episode."""
        return np.add.reduceat(self.rewards.astype(np.float64), self.episode_starts)

    def normalized_score(self, returns: np.ndarray | float) -> np.ndarray | float:
        """D4RL-normalised score x100: 100 (R - ref_min) / (ref_max - ref_min)."""
        if self.ref_min_score is None or self.ref_max_score is None:
            raise DatasetError(f"dataset '{self.name}' has no ref_min_score/ref_max_score")
        span = self.ref_max_score - self.ref_min_score
        return 100.0 * (np.asarray(returns) - self.ref_min_score) / span

    # -- construction --------------------------------------------------------------------
    @classmethod
    def from_episodes(cls, episodes: list[dict[str, np.ndarray]], **meta: Any) -> TrajectoryDataset:
        """Build from per-episode dicts.

        Each dict has ``observations`` with ``T+1`` rows (Minari layout: the last row is the
        final next observation) or ``T`` rows plus ``next_observations``; and ``actions``,
        ``rewards``, ``terminations``, ``truncations`` with ``T`` rows. Extra keys of length T
        go to ``extras``.
        """
        if not episodes:
            raise DatasetError("no episodes: the dataset is empty")
        cols: dict[str, list[np.ndarray]] = {}
        lengths = []
        for i, ep in enumerate(episodes):
            for key in ("observations", "actions", "rewards", "terminations", "truncations"):
                if key not in ep:
                    raise DatasetError(f"episode {i}: missing key '{key}'")
            t = len(ep["actions"])
            obs = np.asarray(ep["observations"])
            if "next_observations" in ep:
                next_obs = np.asarray(ep["next_observations"])
                obs = obs[:t]
            elif len(obs) == t + 1:
                obs, next_obs = obs[:-1], obs[1:]
            else:
                raise DatasetError(
                    f"episode {i}: observations has {len(obs)} rows for {t} actions; expected "
                    f"{t + 1} (with the final observation) or next_observations"
                )
            row = {
                "observations": obs,
                "next_observations": next_obs,
                **{
                    k: np.asarray(v)
                    for k, v in ep.items()
                    if k not in ("observations", "next_observations")
                },
            }
            for key, value in row.items():
                cols.setdefault(key, []).append(value)
            lengths.append(t)
        joined = {}
        for key, parts in cols.items():
            try:
                joined[key] = np.concatenate(parts)
            except ValueError as err:  # e.g. episodes with different observation dims
                raise DatasetError(f"{key}: the episodes do not fit together ({err})") from None
        extras = {k: v for k, v in joined.items() if k not in STEP_FIELDS}
        return cls.from_arrays(
            {k: joined[k] for k in STEP_FIELDS},
            np.asarray(lengths, np.int64),
            extras=extras,
            **meta,
        )

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, np.ndarray], episode_lengths: np.ndarray, **meta: Any
    ) -> TrajectoryDataset:
        """Build from flat arrays, cast to the standard dtypes (float32 / bool / int64).

        Nothing changes without a word: a missing field, a non-numeric dtype, a value too large
        for float32, a flag that is not 0/1 (a NaN included) and a non-integer episode length
        are errors naming the field. (N, 1) rewards and flags and (N,) actions are reshaped.
        """

        def get(key: str) -> Any:
            if key not in arrays:
                raise DatasetError(f"{key}: missing (from_arrays needs {', '.join(_CORE)})")
            return arrays[key]

        return cls(
            observations=_floats(get("observations"), "observations"),
            actions=_2d(_floats(get("actions"), "actions")),
            rewards=_1d(_floats(get("rewards"), "rewards")),
            next_observations=_floats(get("next_observations"), "next_observations"),
            terminations=_1d(as_flags(_array(get("terminations"), "terminations"), "terminations")),
            truncations=_1d(as_flags(_array(get("truncations"), "truncations"), "truncations")),
            episode_lengths=_lengths(episode_lengths),
            **meta,
        )

    def replace(self, **changes: Any) -> TrajectoryDataset:
        return replace(self, **changes)

    def select_episodes(self, index: np.ndarray | list[int]) -> TrajectoryDataset:
        """A dataset of the chosen episodes, in the given order."""
        index = np.asarray(index, np.int64)
        starts, lengths = self.episode_starts[index], self.episode_lengths[index]
        steps = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths, strict=True)])
        return self._take(steps, lengths)

    def _take(self, steps: np.ndarray, lengths: np.ndarray) -> TrajectoryDataset:
        per_step = {
            f.name: getattr(self, f.name)[steps]
            for f in fields(self)
            if f.name
            in (
                "observations",
                "actions",
                "rewards",
                "next_observations",
                "terminations",
                "truncations",
            )
        }
        return replace(
            self,
            **per_step,
            episode_lengths=np.asarray(lengths, np.int64),
            extras={k: v[steps] for k, v in self.extras.items()},
        )

    @staticmethod
    def concatenate(parts: list[TrajectoryDataset], name: str | None = None) -> TrajectoryDataset:
        """Episodes of ``parts`` one after another; metadata from the first part.

        Extra columns missing from a part are filled with its default (False / -1 / 0).
        """
        if not parts:
            raise DatasetError("concatenate needs at least one dataset")
        first = parts[0]
        keys = sorted({k for p in parts for k in p.extras})
        extras = {}
        for k in keys:
            sample = next(p.extras[k] for p in parts if k in p.extras)
            fill = False if sample.dtype == bool else (-1 if sample.dtype.kind == "i" else 0)
            extras[k] = np.concatenate(
                [p.extras.get(k, np.full(p.n_steps, fill, sample.dtype)) for p in parts]
            )
        cat = {key: np.concatenate([getattr(p, key) for p in parts]) for key in ARRAY_FIELDS}
        return replace(first, **cat, extras=extras, name=name or first.name)

    # -- identity ------------------------------------------------------------------------
    def content_hash(self) -> str:
        """sha256 of every array and the metadata that changes training (16 hex chars)."""
        h = hashlib.sha256()
        for key in ARRAY_FIELDS:
            arr = np.ascontiguousarray(getattr(self, key))
            h.update(key.encode())
            h.update(str(arr.dtype).encode() + str(arr.shape).encode())
            h.update(arr.tobytes())
        for key in sorted(self.extras):
            h.update(key.encode())
            h.update(np.ascontiguousarray(self.extras[key]).tobytes())
        h.update(repr((self.env_id, self.ref_min_score, self.ref_max_score)).encode())
        return h.hexdigest()[:16]

    def summary(self) -> dict[str, Any]:
        """Sizes and return statistics (what ``ipd data info`` prints).

        In an augmented dataset (``extras["imagined"]``) an episode with an imagined step is an
        imagined segment: ``episodes`` and the return statistics cover the real episodes only
        (``returns_of`` says so), ``imagined_segments`` and ``imagined_steps`` count the rest;
        ``steps`` counts every row. A dataset of segments only reports their returns.
        """
        returns = self.episode_returns()
        imagined = self.extras.get("imagined")
        segment = np.zeros(self.n_episodes, bool)
        if imagined is not None:
            segment = np.logical_or.reduceat(np.asarray(imagined, bool), self.episode_starts)
        real = ~segment if (~segment).any() else np.ones_like(segment)
        returns = returns[real]
        out: dict[str, Any] = {
            "name": self.name,
            "env_id": self.env_id,
            "episodes": int(real.sum()),
            "steps": self.n_steps,
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "return_min": float(returns.min()),
            "return_mean": float(returns.mean()),
            "return_max": float(returns.max()),
            "terminations": int(self.terminations.sum()),
        }
        if imagined is not None:
            out.update(
                imagined_segments=int(segment.sum()),
                imagined_steps=int(np.asarray(imagined, bool).sum()),
                returns_of="real episodes" if (~segment).any() else "imagined segments",
            )
        if self.ref_min_score is not None and self.ref_max_score is not None:
            norm = self.normalized_score(returns)
            out.update(
                normalized_min=float(norm.min()),
                normalized_mean=float(norm.mean()),
                normalized_max=float(norm.max()),
            )
        return out


_CORE = (
    "observations",
    "actions",
    "rewards",
    "next_observations",
    "terminations",
    "truncations",
)


def _array(values: Any, key: str) -> np.ndarray:
    try:
        return np.asarray(values)
    except (ValueError, TypeError) as err:  # ragged nested lists and the like
        raise DatasetError(f"{key}: not a rectangular array ({err})") from None


def _floats(values: Any, key: str) -> np.ndarray:
    """float32 copy (or view) of ``values``; an error names ``key`` for a non-numeric dtype or
    a finite value that float32 cannot hold."""
    arr = _array(values, key)
    if arr.dtype.kind not in "biuf":
        raise DatasetError(f"{key}: dtype {arr.dtype} is not a real number type")
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(arr, np.float32)
    if arr.dtype.kind == "f" and arr.dtype.itemsize > 4:
        over = np.isfinite(arr) & ~np.isfinite(out)
        if over.any():
            first = tuple(int(i) for i in np.argwhere(over)[0])
            raise DatasetError(
                f"{key}: {int(over.sum())} value(s) too large for float32, first at step "
                f"{first[0] if first else 0} (value {arr[first].item():g})"
            )
    return out


def _lengths(values: Any) -> np.ndarray:
    """int64 episode lengths; a fractional, non-finite or non-numeric length is an error."""
    arr = _array(values, "episode_lengths")
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if not bad.any():
            return arr.astype(np.int64)
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DatasetError(
            f"episode_lengths: {int(bad.sum())} value(s) that are not whole numbers, first "
            f"at episode {first[0] if first else 0} (value {arr[first].item():g})"
        )
    raise DatasetError(f"episode_lengths: dtype {arr.dtype} is not an integer type")


def _2d(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1, 1) if a.ndim == 1 else a


def _1d(a: np.ndarray) -> np.ndarray:
    """(N, 1) -> (N,); any other shape is left for validation to report (no silent reshape)."""
    return a.reshape(-1) if a.ndim == 2 and a.shape[1] == 1 else a
