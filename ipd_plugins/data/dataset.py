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

__all__ = ["TrajectoryDataset", "Episode", "DatasetError"]


class DatasetError(ValueError):
    """A dataset is malformed; the message names the field and the problem."""


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
        from ipd_plugins.data.validate import validate_dataset

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
        core = {
            "observations",
            "actions",
            "rewards",
            "next_observations",
            "terminations",
            "truncations",
        }
        extras = {k: np.concatenate(v) for k, v in cols.items() if k not in core}
        return cls.from_arrays(
            {k: np.concatenate(cols[k]) for k in core},
            np.asarray(lengths, np.int64),
            extras=extras,
            **meta,
        )

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, np.ndarray], episode_lengths: np.ndarray, **meta: Any
    ) -> TrajectoryDataset:
        """Build from flat arrays with the standard dtypes (float32 / bool / int64)."""
        return cls(
            observations=np.ascontiguousarray(arrays["observations"], np.float32),
            actions=_2d(np.ascontiguousarray(arrays["actions"], np.float32)),
            rewards=_1d(np.ascontiguousarray(arrays["rewards"], np.float32)),
            next_observations=np.ascontiguousarray(arrays["next_observations"], np.float32),
            terminations=_1d(np.asarray(arrays["terminations"]).astype(bool)),
            truncations=_1d(np.asarray(arrays["truncations"]).astype(bool)),
            episode_lengths=np.asarray(episode_lengths, np.int64),
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
        cat = {
            key: np.concatenate([getattr(p, key) for p in parts])
            for key in (
                "observations",
                "actions",
                "rewards",
                "next_observations",
                "terminations",
                "truncations",
                "episode_lengths",
            )
        }
        return replace(first, **cat, extras=extras, name=name or first.name)

    # -- identity ------------------------------------------------------------------------
    def content_hash(self) -> str:
        """sha256 of every array and the metadata that changes training (16 hex chars)."""
        h = hashlib.sha256()
        for key in (
            "observations",
            "actions",
            "rewards",
            "next_observations",
            "terminations",
            "truncations",
            "episode_lengths",
        ):
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
        """Sizes and return statistics (what ``ipd data info`` prints)."""
        returns = self.episode_returns()
        out: dict[str, Any] = {
            "name": self.name,
            "env_id": self.env_id,
            "episodes": self.n_episodes,
            "steps": self.n_steps,
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "return_min": float(returns.min()),
            "return_mean": float(returns.mean()),
            "return_max": float(returns.max()),
            "terminations": int(self.terminations.sum()),
        }
        if self.ref_min_score is not None and self.ref_max_score is not None:
            norm = self.normalized_score(returns)
            out.update(
                normalized_min=float(norm.min()),
                normalized_mean=float(norm.mean()),
                normalized_max=float(norm.max()),
            )
        return out


def _2d(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1, 1) if a.ndim == 1 else a


def _1d(a: np.ndarray) -> np.ndarray:
    """(N, 1) -> (N,); any other shape is left for validation to report (no silent reshape)."""
    return a.reshape(-1) if a.ndim == 2 and a.shape[1] == 1 else a
