"""Finished run folders read back: their config, stages, data and trained components."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ipd_plugins.data.dataset import TrajectoryDataset
from registry import BuildContext, get_registry

__all__ = ["load_run", "TrainedRun", "load_trained", "load_augmented", "read_stages"]


def read_stages(run_dir: str | Path) -> dict[str, Any]:
    """A run folder's ``stages.json`` (written when every stage has trained)."""
    path = Path(run_dir) / "stages.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{run_dir} has no stages.json: not a run folder, or its run did not finish training"
        )
    return json.loads(path.read_text())


def load_run(
    run_dir: str | Path,
    components: dict[str, str | None] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The :class:`~ipd_plugins.run_config.RunConfig` and stage record of an ``ipd run`` folder
    (``components``/``overrides``: applied over its config, as ``ipd eval --adapter --set``)."""
    from ipd_plugins.run_config import load_config_file, resolve_config

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise FileNotFoundError(f"{run_dir} has no config.yaml: not an `ipd run` seed folder")
    file = load_config_file(run_dir / "config.yaml")
    if "baseline" in file:
        raise ValueError(f"{run_dir} is an `ipd baseline` run folder, not an `ipd run` one")
    cfg = resolve_config(file=file, components=components, overrides=overrides)
    cfg.run.out_dir = str(run_dir.resolve().parents[1])  # so that cfg.run_dir is this folder
    cfg.run.name = run_dir.resolve().parent.name
    return cfg, read_stages(run_dir)


@dataclass
class TrainedRun:
    """A finished run folder reloaded: its config, stages, data and trained components."""

    cfg: Any  # RunConfig
    stages: dict[str, Any]
    dataset: TrajectoryDataset
    ctx: BuildContext
    components: dict[str, Any]  # kind -> the trained component, weights loaded


def load_trained(
    run_dir: str | Path,
    kinds: tuple[str, ...] = ("value", "policy"),
    echo: Callable[[str], None] = print,
    components: dict[str, str | None] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> TrainedRun:
    """Rebuild the ``kinds`` components of a finished run and load their trained weights
    (``components``/``overrides``: see :func:`load_run`)."""
    from ipd_plugins.pipeline import prepare_run

    cfg, stages = load_run(run_dir, components, overrides)
    p = prepare_run(cfg.run, echo)
    reg = get_registry()
    components = {}
    for kind in kinds:
        if kind not in stages:
            raise FileNotFoundError(f"{run_dir}: stages.json has no '{kind}' stage")
        component = reg.create(kind, cfg.components[kind], cfg.configs[kind], p.ctx)
        component.load(Path(stages[kind]["path"]) / "weights.pt")
        components[kind] = component
    return TrainedRun(cfg, stages, p.dataset, p.ctx, components)


def load_augmented(run_dir: str | Path) -> TrajectoryDataset:
    """The original dataset of a run followed by its augmented segments."""
    from ipd_plugins.data.npz_io import load_npz
    from ipd_plugins.data.sources import resolve_dataset

    cfg, stages = load_run(run_dir)
    run = cfg.run
    ds = resolve_dataset(
        run.dataset,
        env_id=run.env_id,
        clip_actions=run.clip_actions,
        episode_length=run.episode_length,
    )
    segments = Path(stages["augment"]["path"]) / "segments.npz"
    if not segments.exists():
        return ds  # nothing was kept (N_aug 0, or every rollout was cut)
    augmented = TrajectoryDataset.concatenate([ds, load_npz(segments)])
    return augmented.replace(name=f"{ds.name}+ipd-augmented")
