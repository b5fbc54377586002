"""``ipd data info SOURCE``: sizes and return statistics of a dataset.

Prints episodes, steps, observation/action dims and the episode return min/mean/max; when the
environment has reference scores (the dataset's own, else the shipped D4RL table) also the
D4RL-normalised return ``100 (R - ref_min) / (ref_max - ref_min)``.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import click

from ipd_plugins.data.dataset import DatasetError, TrajectoryDataset

__all__ = ["info", "dataset_info"]


def dataset_info(ds: TrajectoryDataset, source: str | None = None) -> dict[str, Any]:
    """What ``ipd data info`` reports, as a JSON-ready dict."""
    out = {"source": source, **ds.summary()}
    out["truncations"] = int(ds.truncations.sum())
    out["ref_min_score"] = ds.ref_min_score
    out["ref_max_score"] = ds.ref_max_score
    out["extras"] = sorted(ds.extras)
    return out


def _fmt(x: float) -> str:
    return f"{x:.2f}"


@click.command()
@click.argument("source")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option(
    "--clip-actions",
    is_flag=True,
    help="Clip actions outside the declared action space (and say how many) instead of failing.",
)
def info(source: str, as_json: bool, clip_actions: bool) -> None:
    """Describe SOURCE: a Minari id (local store), a D4RL .hdf5/.h5 file or an .npz file."""
    from ipd_plugins.data.sources import load_dataset

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = load_dataset(source, clip_actions=clip_actions)
        except DatasetError as err:
            raise click.ClickException(str(err)) from None
    notes = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    for note in notes:
        click.echo(f"note: {note}", err=True)
    d = dataset_info(ds, source)
    if as_json:
        click.echo(json.dumps(d, indent=1))
        return
    rows = [
        ("source", source),
        ("name", d["name"]),
        ("env_id", d["env_id"] or "unknown"),
        ("episodes", d["episodes"]),
        ("steps", d["steps"]),
        ("obs_dim", d["obs_dim"]),
        ("act_dim", d["act_dim"]),
        ("terminations", d["terminations"]),
        ("truncations", d["truncations"]),
        (
            "return min/mean/max",
            " / ".join(_fmt(d[k]) for k in ("return_min", "return_mean", "return_max")),
        ),
    ]
    if "normalized_mean" in d:
        rows.append(
            (
                "normalised min/mean/max",
                " / ".join(
                    _fmt(d[k]) for k in ("normalized_min", "normalized_mean", "normalized_max")
                ),
            )
        )
        rows.append(("ref min/max", f"{d['ref_min_score']:g} / {d['ref_max_score']:g}"))
    else:
        rows.append(("normalised", "n/a (no reference scores for this environment)"))
    if d["extras"]:
        rows.append(("extras", ", ".join(d["extras"])))
    for key, value in rows:
        click.echo(f"{key:<24} {value}")
