"""``ipd data``: inspect, make, list and export trajectory datasets."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import click
import numpy as np

from ipd_plugins.commands.options import debug_option, echo, episode_length_option, fail

__all__ = ["data", "info", "make", "list_datasets", "export", "dataset_info"]

_STORE_HELP = "Minari store folder (default: $MINARI_DATASETS_PATH or ~/.minari/datasets)."


@click.group()
def data() -> None:
    """Trajectory datasets: inspect, make, list and export them."""


def _with_store(store: str | None) -> None:
    if store:
        os.environ["MINARI_DATASETS_PATH"] = str(Path(store).expanduser().resolve())


def dataset_info(ds: Any, source: str | None = None) -> dict[str, Any]:
    """What ``ipd data info`` reports, as a JSON-ready dict."""
    out = {"source": source, **ds.summary()}
    out["truncations"] = int(ds.truncations.sum())
    out["ref_min_score"] = ds.ref_min_score
    out["ref_max_score"] = ds.ref_max_score
    out["extras"] = sorted(ds.extras)
    return out


@data.command()
@click.argument("source")
@click.option("--env", "env_id", metavar="ENV_ID", help="the data's gymnasium id (e.g. Hopper-v5)")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option(
    "--clip-actions",
    is_flag=True,
    help="Clip actions outside the action space (and say how many) instead of failing.",
)
@episode_length_option
@debug_option
def info(
    source: str,
    env_id: str | None,
    as_json: bool,
    clip_actions: bool,
    episode_length: int | None,
) -> None:
    """Describe SOURCE: a Minari id, an `ipd data make` name, a D4RL .hdf5/.h5 or an .npz file.

    Prints episodes, steps, dims and the episode return min/mean/max, and the D4RL-normalised
    return when the environment has reference scores.
    """
    from ipd_plugins.data.sources import resolve_dataset

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = resolve_dataset(
            source,
            env_id=env_id,
            clip_actions=clip_actions,
            episode_length=episode_length,
            echo=echo,
        )
    for w in caught:
        if issubclass(w.category, UserWarning):
            echo(f"note: {w.message}")
    d = dataset_info(ds, source)
    if as_json:
        click.echo(json.dumps(d, indent=1))
        return

    def triple(prefix: str) -> str:
        return " / ".join(f"{d[f'{prefix}_{k}']:.2f}" for k in ("min", "mean", "max"))

    rows = [
        ("source", source),
        ("name", d["name"]),
        ("env_id", d["env_id"] or "unknown (pass --env ENV_ID)"),
        ("episodes", d["episodes"]),
        ("steps", d["steps"]),
        ("obs_dim", d["obs_dim"]),
        ("act_dim", d["act_dim"]),
        ("terminations", d["terminations"]),
        ("truncations", d["truncations"]),
        ("return min/mean/max", triple("return")),
    ]
    if "normalized_mean" in d:
        rows.append(("normalised min/mean/max", triple("normalized")))
        rows.append(("ref min/max", f"{d['ref_min_score']:g} / {d['ref_max_score']:g}"))
    else:
        rows.append(("normalised", "n/a (no reference scores for this environment)"))
    for key in sorted(k for k in d if k.startswith("imagined")):
        rows.append((key.replace("_", " "), d[key]))
    if d["extras"]:
        rows.append(("extras", ", ".join(d["extras"])))
    for key, value in rows:
        click.echo(f"{key:<24} {value}")


@data.command("make")
@click.argument("name", metavar="NAME")
@click.option("--steps", type=click.IntRange(min=1), help="Total steps (default: the catalogue's).")
@click.option("--seed", type=int, default=0, show_default=True, help="Fixes the whole dataset.")
@click.option("--overwrite", is_flag=True, help="Replace the dataset if the store has it.")
@click.option("--store", type=click.Path(file_okay=False), default=None, help=_STORE_HELP)
@debug_option
def make(name: str, steps: int | None, seed: int, overwrite: bool, store: str | None) -> None:
    """Make dataset NAME (`ipd data list` shows them) and write it into the local Minari store."""
    from ipd_plugins.data.make import CATALOGUE, make_dataset, realisation_note
    from ipd_plugins.data.minari_io import from_minari, minari_local_ids

    if name not in CATALOGUE:
        raise click.BadParameter(
            f"{name!r} is not one of {', '.join(CATALOGUE)}", param_hint="NAME"
        )
    _with_store(store)
    spec = CATALOGUE[name]
    if spec.dataset_id in minari_local_ids() and not overwrite:
        fail(f"'{spec.dataset_id}' is already in the store; pass --overwrite to make it again")
    mid = make_dataset(name, steps=steps, seed=seed, overwrite=overwrite, progress=True)
    ds = from_minari(mid)
    returns = ds.episode_returns()
    line = (
        f"{mid}: {ds.n_steps} steps, {ds.n_episodes} episodes, return {returns.mean():.1f} "
        f"+- {returns.std():.1f}"
    )
    if ds.ref_min_score is not None and ds.ref_max_score is not None:
        line += f", normalised {float(ds.normalized_score(returns.mean())):.1f}"
    click.echo(line)
    if steps is None and seed == 0:  # the catalogue's dataset: is it the reference one?
        click.echo(realisation_note(name, ds.content_hash()))


@data.command("list")
@click.option("--store", type=click.Path(file_okay=False), default=None, help=_STORE_HELP)
@debug_option
def list_datasets(store: str | None) -> None:
    """What `ipd data make` can make, and every dataset the local Minari store holds."""
    from ipd_plugins.data.make import CATALOGUE, makeable, store_size
    from ipd_plugins.data.minari_io import minari_local_ids

    _with_store(store)
    click.echo(f"{'name':<26} {'minari id':<36} {'makeable':<9} {'in store':<9} size")

    def size_text(size: int | None) -> str:
        return "" if size is None else f"{size / 1e6:.1f} MB"

    for spec in CATALOGUE.values():
        size = store_size(spec.dataset_id)
        avail = "yes" if makeable(spec) else "train"
        present = "yes" if size is not None else "no"
        click.echo(
            f"{spec.name:<26} {spec.dataset_id:<36} {avail:<9} {present:<9} {size_text(size)}"
        )
    made = {spec.dataset_id for spec in CATALOGUE.values()}
    for other in (i for i in minari_local_ids() if i not in made):
        click.echo(f"{'-':<26} {other:<36} {'-':<9} {'yes':<9} {size_text(store_size(other))}")


@data.command()
@click.argument("source")
@click.argument("dataset_id")
@click.option("--env", "env_id", metavar="ENV_ID", help="the data's gymnasium id (e.g. Hopper-v5)")
@click.option("--clip-actions", is_flag=True, help="clip actions into the action space")
@episode_length_option
@click.option(
    "--best",
    type=click.IntRange(min=1),
    metavar="N",
    help="keep only the N episodes of highest return (a small 'expert' subset, as D4RL's).",
)
@click.option("--overwrite", is_flag=True, help="replace an existing dataset with this id")
@debug_option
def export(
    source: str,
    dataset_id: str,
    env_id: str | None,
    clip_actions: bool,
    episode_length: int | None,
    best: int | None,
    overwrite: bool,
) -> None:
    """Write SOURCE (a dataset source or an `ipd run` seed folder) as Minari DATASET_ID.

    A run folder exports the data its policy was trained on: the original episodes, then the
    imagined segments with their provenance (`imagined`, `source_index` per step).

    \b
    Examples:
      ipd data export runs/<run>/seed_0 ipd/hopper/medium-augmented-v0
      ipd data export d4rl_hopper.hdf5 local/hopper/medium-v0 --env Hopper-v5
      ipd data export hopper-medium ipd/hopper/best5-v0 --best 5
    """
    from ipd_plugins.data.minari_io import minari_local_ids, to_minari
    from ipd_plugins.data.runs import load_augmented
    from ipd_plugins.data.sources import resolve_dataset

    if dataset_id in minari_local_ids() and not overwrite:
        fail(f"Minari dataset '{dataset_id}' already exists; pass --overwrite to replace it")
    path = Path(source)
    if path.is_dir() and (path / "stages.json").exists():
        ds = load_augmented(path)
        stages = json.loads((path / "stages.json").read_text())
        description = (
            f"ipd augmented dataset of run {path} (augment stage {stages['augment']['key']})"
        )
    else:
        ds = resolve_dataset(
            source,
            env_id=env_id,
            clip_actions=clip_actions,
            episode_length=episode_length,
            echo=echo,
        )
        description = f"exported by ipd from {source}"
    if best is not None:
        if "imagined" in ds.extras:
            fail("--best takes whole episodes by return; export a dataset, not a run folder")
        returns = ds.episode_returns()
        keep = np.sort(np.argsort(-returns, kind="stable")[:best])  # in their original order
        ds = ds.select_episodes(keep).replace(name=f"{ds.name}-best{len(keep)}")
        description += f": the {len(keep)} episodes of highest return"
        lo, hi = returns[keep].min(), returns[keep].max()
        echo(
            f"kept {len(keep)} of {len(returns)} episodes, returns {lo:.1f} to {hi:.1f} "
            f"(all: mean {returns.mean():.1f})"
        )
    to_minari(ds, dataset_id, description=description, overwrite=overwrite)
    imagined = int(ds.extras["imagined"].sum()) if "imagined" in ds.extras else 0
    click.echo(
        f"wrote {dataset_id}: {ds.n_episodes} episodes, {ds.n_steps} steps ({imagined} imagined)"
    )
