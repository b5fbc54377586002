"""``ipd data export``: write any dataset, or a run's augmented dataset, as a Minari dataset.

A run folder (``<out>/<name>/seed_<k>``) exports the data its policy was trained on: the
original dataset followed by the imagined segments, with the provenance columns ``imagined``
and ``source_index`` in each step's ``infos``. Any d3rlpy algorithm (or anything else that
reads Minari) can then train on the augmented data, e.g. ``ipd baseline iql --dataset ID``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ipd_plugins.data.dataset import DatasetError, TrajectoryDataset

__all__ = ["export", "load_augmented"]


def load_augmented(run_dir: str | Path) -> TrajectoryDataset:
    """The original dataset of a run followed by its augmented segments."""
    from ipd_plugins.data.npz_io import load_npz
    from ipd_plugins.runner import load_run, resolve_dataset

    cfg, stages = load_run(run_dir)
    ds = resolve_dataset(cfg.run.dataset, clip_actions=cfg.run.clip_actions)
    segments = Path(stages["augment"]["path"]) / "segments.npz"
    if not segments.exists():
        return ds  # nothing was kept (N_aug 0, or every rollout was cut)
    augmented = TrajectoryDataset.concatenate([ds, load_npz(segments)])
    return augmented.replace(name=f"{ds.name}+ipd-augmented")


@click.command()
@click.argument("source")
@click.argument("dataset_id")
@click.option("--overwrite", is_flag=True, help="replace an existing dataset with this id")
def export(source: str, dataset_id: str, overwrite: bool) -> None:
    """Write SOURCE (a dataset source or an `ipd run` seed folder) as Minari DATASET_ID.

    \b
    Examples:
      ipd data export runs/<run>/seed_0 ipd/hopper/medium-augmented-v0
      ipd data export d4rl_hopper.hdf5 local/hopper/medium-v0
    """
    from ipd_plugins.data.minari_io import to_minari
    from ipd_plugins.data.sources import load_dataset

    path = Path(source)
    try:
        if path.is_dir() and (path / "stages.json").exists():
            ds = load_augmented(path)
            stages = json.loads((path / "stages.json").read_text())
            description = (
                f"ipd augmented dataset of run {path} (augment stage {stages['augment']['key']})"
            )
        else:
            ds = load_dataset(source)
            description = f"exported by ipd from {source}"
        to_minari(ds, dataset_id, description=description, overwrite=overwrite)
    except (DatasetError, FileNotFoundError, KeyError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    imagined = int(ds.extras["imagined"].sum()) if "imagined" in ds.extras else 0
    click.echo(
        f"wrote {dataset_id}: {ds.n_episodes} episodes, {ds.n_steps} steps ({imagined} imagined)"
    )
