"""One source string picks the loader: a D4RL HDF5 path, an ``.npz`` path or a Minari id.

* ``path/to/file.hdf5`` or ``.h5`` -> :func:`ipd_plugins.data.hdf5_io.from_d4rl_hdf5`
* ``path/to/file.npz`` -> :func:`ipd_plugins.data.npz_io.load_npz`
* anything else -> a dataset id in the local Minari store (``MINARI_DATASETS_PATH``), read by
  :func:`ipd_plugins.data.minari_io.from_minari`.

:func:`resolve_dataset` also takes the names of ``ipd data make`` (and their Minari ids) and
makes such a dataset first when the store does not hold it yet.

``env_id`` names the environment for any format (it overrides the one the data names); the
dims are checked against its spaces and the actions against its action space. Actions outside
it are an error; ``clip_actions=True`` clips them and warns with the count (the CLI's
``--clip-actions``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

from ipd_plugins.data.dataset import TrajectoryDataset
from ipd_plugins.data.errors import DatasetError

__all__ = ["load_dataset", "resolve_dataset", "source_kind", "HDF5_SUFFIXES", "NPZ_SUFFIXES"]

HDF5_SUFFIXES = (".hdf5", ".h5")
NPZ_SUFFIXES = (".npz",)
_FORMS = (
    "a Minari dataset id in the local store (e.g. 'mujoco/hopper/medium-v0'), a path to a "
    "D4RL-style HDF5 file ('.hdf5' or '.h5') or a path to an ipd '.npz' file"
)


def source_kind(source: str) -> str:
    """``"hdf5"``, ``"npz"`` or ``"minari"``: which loader ``source`` goes to."""
    suffix = Path(source).suffix.lower()
    if suffix in HDF5_SUFFIXES:
        return "hdf5"
    if suffix in NPZ_SUFFIXES:
        return "npz"
    return "minari"


def load_dataset(
    source: str,
    *,
    env_id: str | None = None,
    clip_actions: bool = False,
    episode_length: int | None = None,
) -> TrajectoryDataset:
    """Load ``source`` (see the module docstring); unknown sources fail listing what exists.

    ``episode_length`` is the time limit of an HDF5 file without ``timeouts`` (see
    :mod:`ipd_plugins.data.hdf5_io`); other formats store their episodes and ignore it, saying
    so.
    """
    source = str(source)
    kind = source_kind(source)
    if kind == "hdf5":
        from ipd_plugins.data.hdf5_io import from_d4rl_hdf5

        return from_d4rl_hdf5(
            source, env_id, clip_actions=clip_actions, episode_length=episode_length
        )
    if episode_length is not None:
        warnings.warn(
            f"{source}: episode_length={episode_length} ignored: the {kind} format stores its "
            "episodes (it applies to HDF5 files without 'timeouts')",
            stacklevel=2,
        )
    if kind == "npz":
        from ipd_plugins.data.npz_io import load_npz

        return load_npz(source, env_id=env_id, clip_actions=clip_actions)

    from ipd_plugins.data.minari_io import from_minari, minari_local_ids, minari_store_path

    ids = minari_local_ids()
    if source in ids:
        return from_minari(source, env_id=env_id, clip_actions=clip_actions)
    hint = ""
    if Path(source).exists():
        hint = f" '{source}' is a file or folder, but its suffix is not .hdf5, .h5 or .npz."
    raise DatasetError(
        f"unknown dataset source '{source}'.{hint} Accepted: {_FORMS}, or a name that "
        f"`ipd data make` makes. The local Minari store {minari_store_path()} holds: "
        f"{', '.join(ids) if ids else 'no datasets'}."
    )


def resolve_dataset(
    source: str,
    *,
    env_id: str | None = None,
    clip_actions: bool = False,
    episode_length: int | None = None,
    echo: Callable[[str], None] = print,
) -> TrajectoryDataset:
    """:func:`load_dataset`, where an ``ipd data make`` name (``pendulum-medium``) or its Minari
    id (``ipd/pendulum/medium-v0``) that is not in the local store yet is made first."""
    from ipd_plugins.data import make as catalogue
    from ipd_plugins.data.minari_io import minari_local_ids

    source = str(source)
    if not (source.endswith((*HDF5_SUFFIXES, *NPZ_SUFFIXES)) or Path(source).exists()):
        by_id = {spec.dataset_id: n for n, spec in catalogue.CATALOGUE.items()}
        name = source if source in catalogue.CATALOGUE else by_id.get(source)
        if name is not None:
            dataset_id = catalogue.dataset_id(name)
            with catalogue.making(dataset_id):  # another process making it: wait for it
                if dataset_id not in minari_local_ids():
                    echo(f"[data] {dataset_id} is not in the local Minari store: making it")
                    catalogue.make_dataset(name)
            source = dataset_id
    return load_dataset(
        source, env_id=env_id, clip_actions=clip_actions, episode_length=episode_length
    )
