"""Minari datasets <-> :class:`TrajectoryDataset` (local store, ``MINARI_DATASETS_PATH`` honoured).

A Minari episode of ``T`` steps holds ``T+1`` observations: ``observations[t]`` is s_t and
``observations[t+1]`` is s'_t, so the last row is the final next observation. We read each
episode on its own, so every episode starts with its own first observation. (d3rlpy's
``get_minari`` concatenates all episodes and slices by the action count, so from the second
episode on each episode starts with the previous episode's last observation; see
``shared/reference/stack-notes.md``. That bug cannot happen here.)

Writing needs no jax: we build one ``minari.data_collector.EpisodeBuffer`` per episode (T+1
observations) and call ``minari.create_dataset_from_buffers``. What Minari has no field for goes
into the metadata (``ipd_env_id``, ``ipd_name``, ``ref_min_score``/``ref_max_score``) and the
per-step ``extras`` go into each episode's ``infos['ipd_extras']`` with Minari's ``T+1`` info
layout (row 0 is the reset slot; it repeats step 0's value and is dropped on reading).
"""

from __future__ import annotations

import shutil
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from ipd_plugins.data import envs
from ipd_plugins.data.dataset import DatasetError, TrajectoryDataset
from ipd_plugins.data.validate import conform_to_environment, named_source, resolve_environment

if TYPE_CHECKING:
    import minari

__all__ = ["to_minari", "from_minari", "minari_local_ids", "minari_store_path"]

_EXTRAS_INFO_KEY = "ipd_extras"
# minari warns on every optional metadata field left empty; these say nothing about the data
_QUIET = ("`code_permalink`", "`author`", "`author_email`", "`eval_env`", "env_spec is None")


def minari_store_path() -> str:
    """The local Minari store (``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``)."""
    from minari.storage import get_dataset_path

    return str(get_dataset_path())


def minari_local_ids() -> list[str]:
    """Ids of every dataset in the local Minari store, sorted."""
    import minari

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a misconfigured folder is skipped, not fatal
        return sorted(minari.list_local_datasets().keys())


def _box(low: np.ndarray, high: np.ndarray):
    import gymnasium as gym

    low, high = np.asarray(low, np.float32), np.asarray(high, np.float32)
    return gym.spaces.Box(low, high, dtype=np.float32)


def _episode_buffers(ds: TrajectoryDataset) -> list[Any]:
    from minari.data_collector import EpisodeBuffer

    buffers = []
    for i, ep in enumerate(ds.episodes()):
        # Minari keeps T+1 observations, so s'_t must be s_{t+1} inside an episode.
        if len(ep) > 1 and not np.array_equal(ep.next_observations[:-1], ep.observations[1:]):
            t = int(np.argwhere((ep.next_observations[:-1] != ep.observations[1:]).any(1))[0][0])
            raise DatasetError(
                f"episode {i}: next_observations[{t}] differs from observations[{t + 1}]; a Minari "
                "episode stores T+1 chained observations and cannot hold this episode"
            )
        start = int(ds.episode_starts[i])
        infos = None
        if ds.extras:
            sl = slice(start, start + len(ep))
            infos = {
                _EXTRAS_INFO_KEY: {
                    k: np.concatenate([v[sl][:1], v[sl]]) for k, v in ds.extras.items()
                }
            }
        buffers.append(
            EpisodeBuffer(
                id=i,
                observations=np.concatenate([ep.observations, ep.next_observations[-1:]]),
                actions=ep.actions,
                rewards=ep.rewards,
                terminations=ep.terminations,
                truncations=ep.truncations,
                infos=infos,
            )
        )
    return buffers


def to_minari(
    ds: TrajectoryDataset,
    dataset_id: str,
    *,
    algorithm_name: str = "ipd",
    description: str = "",
    author: str | None = None,
    overwrite: bool = False,
) -> minari.MinariDataset:
    """Write ``ds`` as a real Minari dataset ``dataset_id`` into the local store.

    The environment spec comes from ``ds.env_id`` when gymnasium knows it (the observation and
    action spaces are then the environment's; their shapes must match the data). Otherwise the
    spaces are Boxes of the data's dims: the declared action bounds, or unbounded when none are
    declared. Reference scores are stored when ``ds`` has them (``minari.get_normalized_score``
    then works). An existing id is an error unless ``overwrite=True``; a failed write removes
    its partial folder so the next attempt is not blocked.

    Args:
        ds: the dataset; every episode must chain (``next_observations[t] == observations[t+1]``).
        dataset_id: Minari id, ``(namespace/)name-vN``.
        algorithm_name: recorded in the metadata.
        description: recorded in the metadata (a size summary when empty).
        author: recorded in the metadata when given.
        overwrite: replace an existing dataset with the same id.
    """
    import minari
    from minari.storage import get_dataset_path

    path = get_dataset_path(dataset_id)
    if path.exists():
        if not overwrite:
            raise DatasetError(
                f"Minari dataset '{dataset_id}' already exists at {path}; pass overwrite=True "
                "to replace it or choose another id"
            )
        shutil.rmtree(path)

    buffers = _episode_buffers(ds)
    kwargs: dict[str, Any] = {}
    if envs.env_registered(ds.env_id):
        spaces = envs.env_spaces(ds.env_id)  # built once per id (cached)
        obs_shape, act_shape = (spaces.obs_dim,), (spaces.act_dim,)
        if obs_shape != (ds.obs_dim,) or act_shape != (ds.act_dim,):
            raise DatasetError(
                f"env_id '{ds.env_id}' has observations {obs_shape} and actions {act_shape} but "
                f"the dataset has ({ds.obs_dim},) and ({ds.act_dim},)"
            )
        kwargs.update(env=ds.env_id, eval_env=ds.env_id)
    else:
        inf = np.full(ds.act_dim, np.inf, np.float32)
        low = ds.action_low if ds.action_low is not None else -inf
        high = ds.action_high if ds.action_high is not None else inf
        kwargs.update(
            observation_space=_box(np.full(ds.obs_dim, -np.inf), np.full(ds.obs_dim, np.inf)),
            action_space=_box(low, high),
        )
    if not description:
        description = (
            f"ipd trajectory dataset '{ds.name}': {ds.n_episodes} episodes, {ds.n_steps} steps"
        )
    try:
        with warnings.catch_warnings():
            for text in _QUIET:
                warnings.filterwarnings("ignore", message=f".*{text}.*")
            mds = minari.create_dataset_from_buffers(
                dataset_id=dataset_id,
                buffer=buffers,
                algorithm_name=algorithm_name,
                author=author,
                description=description,
                **kwargs,
            )
            extra: dict[str, Any] = {"ipd_name": ds.name}
            if ds.env_id:
                extra["ipd_env_id"] = ds.env_id
            if ds.ref_min_score is not None and ds.ref_max_score is not None:
                extra.update(ref_min_score=ds.ref_min_score, ref_max_score=ds.ref_max_score)
            mds.storage.update_metadata(extra)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return minari.load_dataset(dataset_id)


def _open(dataset: str | minari.MinariDataset) -> minari.MinariDataset:
    import minari

    if not isinstance(dataset, str):
        return dataset
    try:
        return minari.load_dataset(dataset)
    except FileNotFoundError:
        ids = minari_local_ids()
        raise DatasetError(
            f"Minari dataset '{dataset}' is not in the local store {minari_store_path()} "
            f"(local ids: {', '.join(ids) if ids else 'none'}); download it with "
            f"`minari download {dataset}` on a machine with internet"
        ) from None


def from_minari(
    dataset: str | minari.MinariDataset,
    *,
    env_id: str | None = None,
    clip_actions: bool = False,
) -> TrajectoryDataset:
    """Read a Minari dataset (an id in the local store, or an open ``MinariDataset``).

    Each episode's ``T+1`` observations give its own s_t and s'_t. ``env_id`` (else the
    dataset's env spec) names the environment the dims and actions are checked against (a
    given id overrides the spec's, with a warning when they differ); reference scores come
    from the metadata (else the shipped D4RL table); the action bounds are the environment's,
    else the dataset's Box action space. Actions outside are an error unless
    ``clip_actions=True``.
    """
    import gymnasium as gym

    mds = _open(dataset)
    source = f"Minari dataset '{mds.id}'"
    meta = mds.storage.metadata
    if not isinstance(mds.observation_space, gym.spaces.Box) or not isinstance(
        mds.action_space, gym.spaces.Box
    ):
        raise DatasetError(
            f"{source}: only Box observation and action spaces are supported, got "
            f"{mds.observation_space} and {mds.action_space}"
        )
    cols: dict[str, list[np.ndarray]] = {}
    lengths = []
    for ep in mds.iterate_episodes():
        obs, t = np.asarray(ep.observations), len(ep.actions)
        if obs.ndim != 2 or len(obs) != t + 1:
            raise DatasetError(
                f"{source}, episode {ep.id}: observations has shape {obs.shape} for {t} "
                f"actions; expected ({t + 1}, O)"
            )
        row = {
            "observations": obs[:-1],
            "next_observations": obs[1:],
            "actions": np.asarray(ep.actions).reshape(t, -1),
            "rewards": np.asarray(ep.rewards),
            "terminations": np.asarray(ep.terminations),
            "truncations": np.asarray(ep.truncations),
        }
        for key, value in ((ep.infos or {}).get(_EXTRAS_INFO_KEY) or {}).items():
            value = np.asarray(value)
            row[f"extra:{key}"] = value[1:] if len(value) == t + 1 else value
        for key, value in row.items():
            cols.setdefault(key, []).append(value)
        lengths.append(t)
    if not lengths:
        raise DatasetError(f"{source}: the dataset is empty (0 episodes)")
    arrays = {k: np.concatenate(v) for k, v in cols.items() if not k.startswith("extra:")}
    extras = {k[6:]: np.concatenate(v) for k, v in cols.items() if k.startswith("extra:")}

    file_env_id = mds.env_spec.id if mds.env_spec is not None else meta.get("ipd_env_id")
    env_id, spaces = resolve_environment(env_id, file_env_id, source)
    ref = (meta.get("ref_min_score"), meta.get("ref_max_score"))
    if ref[0] is None or ref[1] is None:
        ref = envs.ref_scores(env_id) or (None, None)
    space = mds.action_space
    low, high = np.asarray(space.low, np.float32), np.asarray(space.high, np.float32)
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        low = high = None
    with named_source(source):
        arrays["actions"], low, high = conform_to_environment(
            arrays["observations"],
            arrays["actions"],
            env_id=env_id,
            spaces=spaces,
            declared=(low, high),
            clip_actions=clip_actions,
            source=source,
        )
        return TrajectoryDataset.from_arrays(
            arrays,
            np.asarray(lengths, np.int64),
            env_id=env_id,
            name=str(meta.get("ipd_name") or mds.id),
            ref_min_score=None if ref[0] is None else float(ref[0]),
            ref_max_score=None if ref[1] is None else float(ref[1]),
            action_low=low,
            action_high=high,
            extras=extras,
        )
