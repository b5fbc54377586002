"""``ipd sweep``: a grid of runs from a spec file, on Ray (a local instance or a cluster)."""

from __future__ import annotations

import click

from ipd_plugins.commands.options import debug_option, echo, usage_errors

__all__ = ["sweep"]


@click.command("sweep")
@click.argument("spec_file", metavar="SPEC", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--dry-run",
    is_flag=True,
    help="list the trials, the stages they share and the time left (from the finished "
    "trials' wall times); run nothing",
)
@click.option(
    "--address",
    metavar="auto|HOST:PORT",
    help="join a running Ray cluster (`ray start --head` on one node, `ray start "
    "--address=HEAD:6379` on the others); default: a local Ray instance sized to this machine",
)
@click.option(
    "--num-cpus",
    type=click.IntRange(min=1),
    help="CPUs of the local Ray instance (default: the usable cores)",
)
@click.option(
    "--serial", is_flag=True, help="no Ray: run the trials one after another in this process"
)
@click.option(
    "--collect",
    is_flag=True,
    help="run nothing: label and record the trials that have finished (run by an earlier "
    "sweep, or by hand with the same options), list the ones that have not",
)
@click.option(
    "--reproduce",
    is_flag=True,
    help="also run the trials that the spec's record has but --out has not (their folders "
    "were lost, or to check the record): the record keeps its results, and each such trial "
    "says whether it got the same scores",
)
@click.option("--out", "out_dir", help="run folders + stage cache (default: the spec's 'out')")
@click.option(
    "--datasets",
    metavar="A,B",
    help="only these of the spec's datasets (comma-separated; default all)",
)
@click.option("--seeds", metavar="0,1", help="only these of the spec's seeds")
@click.option(
    "--methods",
    metavar="LABEL,...",
    help="only these of the spec's method labels (e.g. --methods ipd,dt: a slice run first is "
    "then done when the whole spec runs)",
)
@click.option(
    "--progress-seconds",
    type=click.FloatRange(min=0.1),
    default=60.0,
    show_default=True,
    help="seconds between progress lines (one is also printed when a trial ends)",
)
@debug_option
def sweep(
    spec_file: str,
    dry_run: bool,
    address: str | None,
    num_cpus: int | None,
    serial: bool,
    collect: bool,
    reproduce: bool,
    out_dir: str | None,
    datasets: str | None,
    seeds: str | None,
    methods: str | None,
    progress_seconds: float,
) -> None:
    """Run the grid of SPEC (YAML or TOML): datasets x methods x options x seeds.

    Every trial is an `ipd run` or `ipd baseline` seed folder under the spec's `out`; a stage
    (value function, world model, augmentation) that several trials share is computed once by
    its own task and the others wait for it. Trials already finished are skipped, so the same
    command resumes; a trial that fails is reported and the others go on; a trial whose
    worker dies is retried and resumes from its checkpoints. On a cluster, `out` (the stage
    cache) and the datasets must be on a filesystem every node sees, at the same path.

    \b
    SPEC (see `ipd_plugins/sweep/__init__.py` for every key):
      out: runs/grid
      datasets: [hopper-medium]
      seeds: [0, 1, 2]
      resources: {num_cpus: 1}
      methods:
        ipd: {}
        greedy: {components: {planner: greedy}}
        iql: {baseline: iql}

    \b
    Examples:
      ipd sweep benchmarks/experiments/scores.yaml --dry-run
      ipd sweep grid.yaml                      # a local Ray instance
      ipd sweep grid.yaml --address auto       # the cluster this node belongs to
      ipd sweep grid.yaml --methods ipd --seeds 0   # a slice first
      ipd sweep grid.yaml --reproduce --seeds 0     # train recorded runs again, compare
      ipd compare runs/grid                    # the table of what finished
    """
    import dataclasses

    from ipd_plugins.sweep import dry_run as plan
    from ipd_plugins.sweep import load_spec, run_sweep, select
    from ipd_plugins.sweep.trials import REPRODUCES

    def names(text: str | None) -> list[str] | None:
        return None if text is None else [x.strip() for x in text.split(",") if x.strip()]

    with usage_errors():
        spec = load_spec(spec_file)
        try:
            seed_list = None if seeds is None else [int(x) for x in names(seeds) or []]
        except ValueError:
            raise ValueError(f"--seeds takes comma-separated integers, got {seeds!r}") from None
        spec = select(spec, names(datasets), seed_list, names(methods))
        if out_dir:
            spec = dataclasses.replace(spec, out=out_dir)
        if reproduce and not spec.record:
            raise ValueError(f"--reproduce runs what the record has: {spec_file} names no record")
        if reproduce and collect:
            raise ValueError("--collect runs nothing: it takes no --reproduce")
        if dry_run:
            click.echo(plan(spec, reproduce=reproduce))
            return
        if (serial or collect) and (address or num_cpus):
            flag = "--serial" if serial else "--collect"
            raise ValueError(f"{flag} runs without Ray: it takes neither --address nor --num-cpus")
        if serial and collect:
            raise ValueError("--collect runs nothing: it takes no --serial")
    result = run_sweep(
        spec,
        address=address,
        num_cpus=num_cpus,
        executor="collect" if collect else "serial" if serial else "ray",
        echo=echo,
        progress_seconds=progress_seconds,
        reproduce=reproduce,
    )
    now, done = result.count("finished"), result.count("done")
    bad = [o for o in result.outcomes if o.status in ("failed", "invalid")]
    waiting = result.count("not run")
    click.echo(
        f"{len(result.outcomes)} trials: {now} finished now, {done} already done, {len(bad)} failed"
        + (f", {waiting} not run" if collect else "")
    )
    for o in bad:
        click.echo(f"  failed: {o.trial.title}: {o.error}")
    checked = [o for o in result.outcomes if o.against_record]
    if checked:
        same = sum(o.against_record.startswith(REPRODUCES) for o in checked)
        click.echo(f"against the record: {same} of {len(checked)} reproduce its scores")
        for o in checked:
            if not o.against_record.startswith(REPRODUCES):
                click.echo(f"  {o.trial.title}: {o.against_record}")
    click.echo(f"summary: {result.summary}")
    where = spec.record if collect and spec.record else spec.out
    click.echo(f"compare: ipd compare {where} --out {where}/{spec.name}.md")
    if bad:
        raise click.exceptions.Exit(1)
