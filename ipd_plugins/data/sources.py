"""One source string picks the loader: a D4RL HDF5 path, an ``.npz`` path or a Minari id.

* ``path/to/file.hdf5`` or ``.h5`` -> :func:`ipd_plugins.data.hdf5_io.from_d4rl_hdf5`
* ``path/to/file.npz`` -> :func:`ipd_plugins.data.npz_io.load_npz`
* anything else -> a dataset id in the local Minari store (``MINARI_DATASETS_PATH``), read by
  :func:`ipd_plugins.data.minari_io.from_minari`.

Actions outside the declared action space are an error; ``clip_actions=True`` clips them and
warns with the count (the CLI's ``--clip-actions``).
"""

from __future__ import annotations

from pathlib import Path

from ipd_plugins.data.dataset import DatasetError, TrajectoryDataset

__all__ = ["load_dataset", "source_kind", "HDF5_SUFFIXES", "NPZ_SUFFIXES"]

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


def load_dataset(source: str, *, clip_actions: bool = False) -> TrajectoryDataset:
    """Load ``source`` (see the module docstring); unknown sources fail listing what exists."""
    source = str(source)
    kind = source_kind(source)
    if kind == "hdf5":
        from ipd_plugins.data.hdf5_io import from_d4rl_hdf5

        return from_d4rl_hdf5(source, clip_actions=clip_actions)
    if kind == "npz":
        from ipd_plugins.data.npz_io import load_npz

        return load_npz(source, clip_actions=clip_actions)

    from ipd_plugins.data.minari_io import from_minari, minari_local_ids, minari_store_path

    ids = minari_local_ids()
    if source in ids:
        return from_minari(source, clip_actions=clip_actions)
    hint = ""
    if Path(source).exists():
        hint = f" '{source}' is a file or folder, but its suffix is not .hdf5, .h5 or .npz."
    raise DatasetError(
        f"unknown dataset source '{source}'.{hint} Accepted: {_FORMS}. The local Minari store "
        f"{minari_store_path()} holds: {', '.join(ids) if ids else 'no datasets'}."
    )
