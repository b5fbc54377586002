"""``ipd run`` and ``ipd eval``."""

from __future__ import annotations

import json

import click

from registry import KINDS

__all__ = ["run", "eval_run", "parse_seeds", "print_scores", "summarise_seeds"]


def _echo(msg: str) -> None:
    click.echo(msg, err=True)


def parse_seeds(seed: int | None, seeds: str | None) -> list[int]:
    """``--seed 3`` -> [3]; ``--seeds 0,1,2`` -> [0, 1, 2]; neither -> [None] (the default)."""
    if seeds is None:
        return [seed]  # type: ignore[list-item]
    if seed is not None:
        raise ValueError("give either --seed or --seeds, not both")
    try:
        out = [int(s) for s in seeds.replace(" ", "").split(",") if s]
    except ValueError as err:
        raise ValueError(
            f"--seeds expects comma-separated integers like 0,1,2, got {seeds!r}"
        ) from err
    if not out:
        raise ValueError(f"--seeds expects comma-separated integers like 0,1,2, got {seeds!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"--seeds has a seed twice: {seeds!r}")
    return out


def summarise_seeds(all_results: list[dict]) -> None:
    """One line per actor: the normalised score's mean +- std over the seeds just run."""
    import numpy as np

    seeds = [r["seed"] for r in all_results]
    click.echo(
        f"\nover seeds {', '.join(str(s) for s in seeds)} (mean +- std of the per-seed means):"
    )
    for actor in all_results[0]["scores"]:
        vals = [r["scores"][actor].get("normalized_mean") for r in all_results]
        if any(v is None for v in vals):
            vals = [r["scores"][actor]["mean_return"] for r in all_results]
            what = "return"
        else:
            what = "normalised x100"
        arr = np.asarray(vals, float)
        click.echo(f"  {actor:<10} {what}: {arr.mean():.1f} +- {arr.std(ddof=1):.1f}")


def print_scores(results: dict) -> None:
    _print_scores(results)


def _print_scores(results: dict) -> None:
    rows = results["scores"]
    click.echo("")
    click.echo(f"{'actor':<10} {'episodes':>8} {'return':>18} {'normalised x100':>18}")
    for actor, r in rows.items():
        ret = f"{r['mean_return']:.1f} +- {r['std_return']:.1f}"
        norm = (
            f"{r['normalized_mean']:.1f} +- {r['normalized_std']:.1f}"
            if r.get("normalized_mean") is not None
            else "-"
        )
        click.echo(f"{actor:<10} {r['n_episodes']:>8} {ret:>18} {norm:>18}")
    click.echo("(last checkpoint; 'qop' is the value learner's own policy pi_QOP)")


@click.command()
@click.option(
    "--dataset",
    help="Minari id, .hdf5/.h5/.npz path or `ipd data make` name "
    "(default: the profile's dataset, made if missing).",
)
@click.option("--value", help="value learner (default qov)")
@click.option("--world-model", "world_model", help="world model (default pe)")
@click.option("--uncertainty", help="uncertainty metric (default gjs)")
@click.option("--planner", help="planner (default mpc)")
@click.option("--policy", help="sequence policy (default ipd-dt)")
@click.option("--seed", type=int, help="seed of training, augmentation and evaluation (default 0)")
@click.option(
    "--seeds",
    help="several independent seeds in one command, e.g. 0,1,2 (every trained stage is per seed; "
    "`ipd compare` aggregates them)",
)
@click.option(
    "--profile",
    type=click.Choice(["quick", "default", "paper"]),
    help="step counts and sizes: quick (minutes, demo), default (hopper-medium in "
    "~30 min on 2 CPU cores), paper (the paper's, for a GPU). Default: quick.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True),
    help="YAML/TOML run config; a run folder (or its config.yaml) replays that run.",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="override any option, e.g. --set planner.n_mpc=8 --set augment.n_aug=2",
)
@click.option("--out", "out_dir", help="folder for run folders and the stage cache (default runs)")
@click.option("--name", help="run folder name (default: dataset, components and config hash)")
@click.option("--device", help="torch device (default cpu)")
@click.option("--eval-episodes", type=int, help="evaluation episodes (default: profile's)")
@click.option("--quiet", is_flag=True, help="no progress bars")
def run(
    dataset,
    value,
    world_model,
    uncertainty,
    planner,
    policy,
    seed,
    seeds,
    profile,
    config_file,
    overrides,
    out_dir,
    name,
    device,
    eval_episodes,
    quiet,
) -> None:
    """Run IPD: value -> world model -> augment -> distill -> evaluate.

    With no options: the quick profile on the tiny default dataset (made if missing). Any
    registered component name works for each kind, third-party ones included. Stages are cached
    by the hash of their inputs, so changing only the planner reuses the value function and the
    world model; an interrupted run resumes where it stopped. `--seeds 0,1,2` runs several
    independent seeds (one run folder each: <out>/<name>/seed_<k>); `ipd compare` aggregates them.
    """
    try:
        seed_list = parse_seeds(seed, seeds)
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    all_results = []
    for one_seed in seed_list:
        all_results.append(
            _run_one(
                dataset,
                value,
                world_model,
                uncertainty,
                planner,
                policy,
                one_seed,
                profile,
                config_file,
                overrides,
                out_dir,
                name,
                device,
                eval_episodes,
                quiet,
            )
        )
    if len(all_results) > 1:
        summarise_seeds(all_results)


def _run_one(
    dataset,
    value,
    world_model,
    uncertainty,
    planner,
    policy,
    seed,
    profile,
    config_file,
    overrides,
    out_dir,
    name,
    device,
    eval_episodes,
    quiet,
) -> dict:
    from ipd_plugins.runner import Pipeline, load_config_file, parse_overrides, resolve_config

    try:
        cfg = resolve_config(
            file=load_config_file(config_file) if config_file else None,
            components={
                "value": value,
                "world_model": world_model,
                "uncertainty": uncertainty,
                "planner": planner,
                "policy": policy,
            },
            run={
                "dataset": dataset,
                "seed": seed,
                "profile": profile,
                "out_dir": out_dir,
                "name": name,
                "device": device,
                "eval_episodes": eval_episodes,
            },
            overrides=parse_overrides(overrides),
        )
    except (KeyError, ValueError, FileNotFoundError) as err:
        raise click.UsageError(str(err.args[0] if isinstance(err, KeyError) else err)) from err
    _echo(
        "components: "
        + ", ".join(f"{k}={cfg.components[k]}" for k in KINDS)
        + f" | profile {cfg.run.profile} | dataset {cfg.run.dataset} | seed {cfg.run.seed}"
    )
    results = Pipeline(cfg, echo=_echo, progress=not quiet).run()
    _print_scores(results)
    click.echo(f"results: {cfg.run_dir / 'results.json'}")
    return results


@click.command("eval")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--episodes", type=int, help="episodes (default: the run's eval_episodes)")
def eval_run(run_dir: str, episodes: int | None) -> None:
    """Re-evaluate the final policy of a finished run folder (writes eval.json there)."""
    from ipd_plugins.runner import load_trained

    try:
        run = load_trained(run_dir, echo=_echo)
    except (FileNotFoundError, ValueError, KeyError) as err:
        raise click.UsageError(str(err)) from err
    pipe, ds, ctx = run.pipeline, run.dataset, run.ctx
    if episodes is not None:
        pipe.cfg.run.eval_episodes = episodes
    value, policy = run.components["value"], run.components["policy"]
    scores = pipe.evaluate_all(policy, value, ds, ctx)
    _print_scores({"scores": scores})
    click.echo(json.dumps({k: v.get("normalized_mean") for k, v in scores.items()}))
