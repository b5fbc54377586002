"""``ipd run`` (``ipd eval`` is in :mod:`ipd_plugins.commands.eval`)."""

from __future__ import annotations

from typing import Any

import click

from ipd_plugins.commands.options import echo, run_options, usage_errors
from ipd_plugins.compare import mean_std
from registry import KINDS

__all__ = ["run", "print_scores", "summarise_seeds"]


def print_scores(results: dict[str, Any]) -> None:
    """The score table of one run (stdout)."""
    click.echo("")
    click.echo(f"{'actor':<10} {'episodes':>8} {'return':>18} {'normalised x100':>18}")
    for actor, r in results["scores"].items():
        ret = f"{r['mean_return']:.1f} +- {r['std_return']:.1f}"
        norm = (
            f"{r['normalized_mean']:.1f} +- {r['normalized_std']:.1f}"
            if r.get("normalized_mean") is not None
            else "-"
        )
        click.echo(f"{actor:<10} {r['n_episodes']:>8} {ret:>18} {norm:>18}")
    if "qop" in results["scores"]:
        click.echo("(last checkpoint; 'qop' is the value learner's own policy pi_QOP)")


def summarise_seeds(all_results: list[dict[str, Any]]) -> None:
    """One line per actor: the normalised score's mean +- std over the seeds just run."""
    seeds = ", ".join(str(r["seed"]) for r in all_results)
    click.echo(f"\nover seeds {seeds} (mean +- std of the per-seed means):")
    for actor in all_results[0]["scores"]:
        vals = [r["scores"][actor].get("normalized_mean") for r in all_results]
        what = "normalised x100"
        if any(v is None for v in vals):
            vals, what = [r["scores"][actor]["mean_return"] for r in all_results], "return"
        click.echo(f"  {actor:<10} {what}: {mean_std(vals)}")


@click.command()
@click.option("--value", help="value learner (default qov)")
@click.option("--world-model", "world_model", help="world model (default pe)")
@click.option("--uncertainty", help="uncertainty metric (default gjs)")
@click.option("--planner", help="planner (default mpc)")
@click.option("--policy", help="policy (default ipd-dt; e.g. gtp)")
@click.option(
    "--adapter",
    help="adapt the actors' weights while they act in evaluation, e.g. dwm (default none)",
)
@run_options("training, augmentation and evaluation")
@click.option(
    "--retrain",
    metavar="STAGE,...",
    help="train these stages again although cached (value, world_model, augment, policy; e.g. "
    "after changing a component's code): their files are set aside as *.replaced (never "
    "overwritten), and the stages made from them retrain if their inputs changed",
)
@click.option("--quiet", is_flag=True, help="no progress bars")
def run(
    run: dict[str, Any],
    seeds: list[int | None],
    config_file: str | None,
    overrides: tuple[str, ...],
    retrain: str | None,
    quiet: bool,
    **components: str | None,
) -> None:
    """Run IPD: value -> world model -> augment -> distill -> evaluate.

    With no options: the quick profile on the tiny default dataset (made if missing). Any
    registered component name works for each kind (`ipd plugins` lists them). Every option is
    checked before anything trains. Stages are cached by the hash of their inputs, so changing
    only the planner reuses the value function and the world model, and an interrupted run
    resumes where it stopped.

    \b
    Examples:
      ipd run --planner greedy
      ipd run --adapter dwm --set adapter.lr=5e-5
      ipd run --dataset hopper-medium --profile default --seeds 0,1,2
      ipd run --dataset expert.hdf5 --env Hopper-v5 --clip-actions
      ipd run --config runs/<run>/seed_0      # replay a run
      ipd run --planner random --retrain augment   # after editing the planner's code
    """
    from ipd_plugins.pipeline import check_stages, run_pipeline
    from ipd_plugins.run_config import load_config_file, parse_overrides, resolve_config

    with usage_errors():  # every seed's config first: a bad option fails before training
        file = load_config_file(config_file) if config_file else None
        parsed = parse_overrides(overrides)
        stages = [x.strip() for x in (retrain or "").split(",") if x.strip()]
        check_stages(stages)
        configs = [
            resolve_config(file, components, run={**run, "seed": s}, overrides=parsed)
            for s in seeds
        ]
    all_results = []
    for cfg in configs:
        kinds = (*KINDS, "adapter") if cfg.adapting else KINDS
        echo(
            "components: "
            + ", ".join(f"{k}={cfg.components[k]}" for k in kinds)
            + f" | profile {cfg.run.profile} | dataset {cfg.run.dataset} | seed {cfg.run.seed}"
        )
        results = run_pipeline(cfg, echo=echo, progress=not quiet, retrain=stages)
        print_scores(results)
        click.echo(f"results: {cfg.run_dir / 'results.json'}")
        all_results.append(results)
    if len(all_results) > 1:
        summarise_seeds(all_results)
