"""Trajectory datasets: the in-memory format, loaders, converters, validation and generators."""

from ipd_plugins.data.dataset import DatasetError, Episode, TrajectoryDataset

__all__ = ["DatasetError", "Episode", "TrajectoryDataset"]
