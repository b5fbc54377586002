"""``ipd baseline``: a registered baseline on IPD's data, scored like ``ipd run``."""

from __future__ import annotations

from typing import Any

import click

from ipd_plugins.commands.options import echo, run_options, usage_errors
from ipd_plugins.commands.run import print_scores, summarise_seeds

__all__ = ["baseline"]


@click.command("baseline")
@click.argument("algo", metavar="ALGO")
@click.option(
    "--adapter",
    help="adapt the actor's weights while it acts, e.g. dwm: Q is the baseline's critic, the "
    "world model the dataset's pe (trained once in the stage cache, shared with ipd run)",
)
@run_options("training and evaluation")
def baseline(
    algo: str,
    adapter: str | None,
    run: dict[str, Any],
    seeds: list[int | None],
    config_file: str | None,
    overrides: tuple[str, ...],
) -> None:
    """Train the baseline ALGO (iql, cql, td3+bc, rebrac, bc, dt, or a plugin's) and score it.

    The baseline trains on the same dataset object as `ipd run` and is evaluated by the same
    evaluator (same episodes and seeds, D4RL-normalised x100, last checkpoint); results land in
    the same run-folder format, so `ipd compare` reads both. Step budgets follow the profile
    (MLP baselines: the value learner's steps; dt: the IPD policy's steps and transformer
    size). `--set` takes the sections `baseline`, `run`, `adapter` and `world_model`. Training
    resumes from its last checkpoint; an adapter changes the run folder, not the trained
    baseline (it is reused).

    \b
    Examples:
      ipd baseline iql --dataset hopper-medium --profile default --seeds 0,1,2
      ipd baseline dt --dataset hopper-medium --set baseline.target_return=3600
      ipd baseline rebrac --dataset hopper-medium --adapter dwm
      ipd compare runs/
    """
    from ipd_plugins.baselines.run import (
        SECTIONS,
        resolve_adaptation,
        resolve_settings,
        run_baseline,
    )
    from ipd_plugins.run_config import load_config_file, parse_overrides
    from registry import get_registry

    names = get_registry().names("baseline")
    if algo not in names:
        raise click.BadParameter(f"{algo!r} is not one of {', '.join(names)}", param_hint="ALGO")
    with usage_errors():  # a bad option fails before training
        file = load_config_file(config_file) if config_file else {}
        parsed = parse_overrides(overrides, sections=SECTIONS)
        for s in seeds:
            settings, _ = resolve_settings(algo, {**run, "seed": s}, parsed, file)
            resolve_adaptation(settings, parsed, file, adapter)
    all_results = []
    for s in seeds:
        results = run_baseline(
            algo, run={**run, "seed": s}, overrides=parsed, file=file, echo=echo, adapter=adapter
        )
        print_scores(results)
        all_results.append(results)
    if len(all_results) > 1:
        summarise_seeds(all_results)
