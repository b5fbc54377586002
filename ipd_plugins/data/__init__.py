"""Trajectory datasets: the in-memory format, loaders, converters, validation and generators."""

from ipd_plugins.data.d3rlpy_io import from_d3rlpy, to_d3rlpy
from ipd_plugins.data.dataset import Episode, TrajectoryDataset
from ipd_plugins.data.envs import (
    check_environment,
    env_key,
    env_spaces,
    ref_scores,
    register_ref_scores,
)
from ipd_plugins.data.errors import DatasetError, EnvironmentUnavailableError
from ipd_plugins.data.hdf5_io import from_d4rl_hdf5, to_d4rl_hdf5
from ipd_plugins.data.minari_io import from_minari, minari_local_ids, to_minari
from ipd_plugins.data.npz_io import load_npz, save_npz
from ipd_plugins.data.sources import load_dataset, resolve_dataset

__all__ = [
    "DatasetError",
    "EnvironmentUnavailableError",
    "Episode",
    "TrajectoryDataset",
    "check_environment",
    "env_key",
    "env_spaces",
    "from_d3rlpy",
    "from_d4rl_hdf5",
    "from_minari",
    "load_dataset",
    "load_npz",
    "minari_local_ids",
    "ref_scores",
    "register_ref_scores",
    "resolve_dataset",
    "save_npz",
    "to_d3rlpy",
    "to_d4rl_hdf5",
    "to_minari",
]
