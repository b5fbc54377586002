"""``ipd compare`` and ``ipd ablate``: tables of finished runs, and the paper's ablation grids."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ipd_plugins.commands.options import debug_option, echo, parse_seeds, usage_errors
from ipd_plugins.profiles import PROFILES

__all__ = ["compare", "ablate"]


@click.command("compare")
@click.argument("runs", nargs=-1, required=True)
@click.option(
    "--out",
    "out_file",
    default="compare.md",
    show_default=True,
    help="Markdown file to write; the bar chart goes next to it as .png",
)
@click.option(
    "--actor",
    type=click.Choice(["policy", "qop"]),
    default="policy",
    show_default=True,
    help="which actor's score: the final policy, or IPD's value learner's own pi_QOP",
)
@click.option("--reps", type=int, default=2000, show_default=True, help="bootstrap replicates")
@click.option("--seed", type=int, default=0, show_default=True, help="bootstrap seed")
@click.option("--title", default="Scores", show_default=True)
@click.option(
    "--against",
    metavar="LABEL",
    help="also a table of every method's change against this one, seed by seed (e.g. ipd)",
)
@click.option("--every-run", is_flag=True, help="also a table of every run's score, seed by seed")
@debug_option
def compare(runs, out_file, actor, reps, seed, title, against, every_run) -> None:
    """Table of normalised scores of finished runs: per dataset and method, and IQM with CIs.

    RUNS are run folders, seed folders, whole --out folders or globs (quote them to let ipd
    expand them), from `ipd run` and `ipd baseline` alike. Scores are D4RL-normalised x100 of
    the last checkpoint; per dataset the mean ± std over seeds, per method the interquartile
    mean over all its runs with a 95% stratified bootstrap CI (rliable's recommendation).

    \b
    Examples:
      ipd compare runs/                       # everything under runs/
      ipd compare 'runs/hopper-medium__*' --out hopper.md
      ipd compare runs/ --against ipd         # + each method's paired change against ipd
      ipd compare runs/ --every-run           # + every run's score, a row per dataset and seed
    """
    from ipd_plugins.compare import (
        bar_chart,
        load_records,
        paired_markdown,
        per_seed_markdown,
        summarise,
        to_markdown,
    )

    with usage_errors():
        records = load_records(runs, actor=actor)
        cmp = summarise(records, reps=reps, seed=seed, order=["ipd"])
        text = to_markdown(cmp, title)
        order = [m.label for m in cmp.methods]
        if against:
            text += "\n" + paired_markdown(records, against, order)
        if every_run:
            text += "\n" + per_seed_markdown(records, order)
    click.echo(text)
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    bar_chart(cmp, out.with_suffix(".png"))
    echo(f"wrote {out} and {out.with_suffix('.png')}")


def _ablation_options(f: Any) -> Any:
    opts = [
        click.option("--dataset", help="dataset source (default: the profile's)"),
        click.option("--env", "env_id", metavar="ENV_ID", help="the data's gymnasium env id"),
        click.option("--seeds", default="0,1,2", show_default=True, help="comma-separated seeds"),
        click.option(
            "--profile", type=click.Choice(list(PROFILES)), help="step counts (default quick)"
        ),
        click.option("--out", "out_dir", help="run folders + stage cache (default runs)"),
        click.option(
            "--set",
            "overrides",
            multiple=True,
            metavar="SECTION.KEY=VALUE",
            help="extra overrides for every variant, e.g. --set run.threads=2",
        ),
        click.option(
            "--reps", type=int, default=2000, show_default=True, help="bootstrap replicates"
        ),
        click.option("--quiet", is_flag=True, help="no progress bars"),
        click.option(
            "--address",
            metavar="auto|HOST:PORT",
            help="run the cells on a Ray cluster (as `ipd sweep --address`); default: here, "
            "one after another",
        ),
        debug_option,
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _finish(kind: str, variants: Callable[[], list], opts: dict[str, Any]) -> None:
    from ipd_plugins.ablations import ablation_cells, run_ablation

    with usage_errors():  # every cell's config first: a bad option fails before training
        seed_list = parse_seeds(None, opts["seeds"])
        run = {k: opts[k] for k in ("dataset", "env_id", "profile", "out_dir")}
        cells = ablation_cells(variants(), run, seed_list, opts["overrides"])
    res = run_ablation(
        kind,
        cells,
        echo=echo,
        progress=not opts["quiet"],
        reps=opts["reps"],
        executor="ray" if opts["address"] else "serial",
        address=opts["address"],
    )
    click.echo(res.markdown.read_text())
    echo(f"wrote {res.markdown} and {res.plot}")


@click.group()
def ablate() -> None:
    """The paper's ablations as one command each: planner, n-aug, rtg (paper section 4.3);
    policy: another policy after IPD's augmentation and alone.

    Every variant is an `ipd run` in its own run folder; variants run seed by seed so the stage
    cache trains the value function and world model once per seed. Finished variants are not
    re-run. The table (D4RL-normalised x100, last checkpoint, mean ± std over seeds, IQM with a
    bootstrap CI) and a plot go to <out>/ablations/<kind>__<dataset>.md/.png.

    \b
    Examples:
      ipd ablate planner --dataset walker2d-medium-replay --seeds 0,1,2 --profile default
      ipd ablate n-aug --dataset hopper-medium --values 0,0.5,1,2
      ipd ablate rtg --dataset halfcheetah-medium-replay --targets 0.5x,1x,1.5x,6000
      ipd ablate policy --policy gtp --dataset hopper-medium
    """


@ablate.command("planner")
@_ablation_options
def ablate_planner(**opts: Any) -> None:
    """MPC vs greedy imaginary augmentation (paper fig. 2)."""
    from ipd_plugins.ablations import planner_variants

    _finish("planner", planner_variants, opts)


@ablate.command("n-aug")
@_ablation_options
@click.option(
    "--values",
    default="0,0.5,1,2",
    show_default=True,
    help="N_aug values (eq. 21; 0 = no augmentation)",
)
def ablate_n_aug(values: str, **opts: Any) -> None:
    """Augmentation volume N_aug vs score (the scaling claim; a line plot)."""
    from ipd_plugins.ablations import n_aug_variants

    def variants() -> list:
        try:
            return n_aug_variants([float(v) for v in values.split(",") if v.strip()])
        except ValueError as err:
            raise ValueError(f"--values: {err}") from None

    _finish("n-aug", variants, opts)


@ablate.command("rtg")
@_ablation_options
@click.option(
    "--targets",
    default="0.5x,1x,1.5x",
    show_default=True,
    help="return-to-go targets of the dt policy: returns, or Fx = min + F (max - min) of the "
    "dataset's episode returns",
)
def ablate_rtg(targets: str, **opts: Any) -> None:
    """V(s) conditioning (ipd-dt) vs hand-set return-to-go targets (dt) (paper fig. 3)."""
    from ipd_plugins.ablations import parse_targets, rtg_variants
    from ipd_plugins.data.sources import resolve_dataset
    from ipd_plugins.profiles import DEFAULT_DATASET

    opts["dataset"] = opts["dataset"] or DEFAULT_DATASET[opts["profile"] or "quick"]

    def variants() -> list:
        ds = resolve_dataset(opts["dataset"], env_id=opts["env_id"], echo=echo)
        return rtg_variants(parse_targets(targets, ds.episode_returns()))

    _finish("rtg", variants, opts)


@ablate.command("policy")
@_ablation_options
@click.option(
    "--policy",
    default="gtp",
    show_default=True,
    help="the policy to swap in for ipd-dt (`ipd plugins policy NAME` lists its options)",
)
def ablate_policy(policy: str, **opts: Any) -> None:
    """IPD vs POLICY after IPD's augmentation (ipd[policy=POLICY]) vs POLICY alone on the data
    (augment.n_aug=0: 'POLICY alone'), e.g. GTP alone and after IPD.

    --set options apply to every variant: a policy option must exist in both policies.
    """
    from ipd_plugins.ablations import policy_variants
    from registry import get_registry

    def variants() -> list:
        get_registry().config_class("policy", policy)  # an unknown name fails here, listed
        return policy_variants(policy)

    _finish("policy", variants, opts)
