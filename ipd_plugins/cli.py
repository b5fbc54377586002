"""The ``ipd`` command line (click)."""

from __future__ import annotations

import re

import click

from ipd_plugins import __version__
from ipd_plugins.run_cli import eval_run, run

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ipd")
def main() -> None:
    """ipd: Imaginary Planning Distillation for offline RL, built from swappable plugins.

    Components of five kinds (value, world_model, uncertainty, planner, policy) are pluggy
    plugins; `ipd plugins` lists them.
    """


@main.command()
@click.argument("kind", required=False)
@click.argument("name", required=False)
def plugins(kind: str | None, name: str | None) -> None:
    """List every registered component: kind, name and where it comes from.

    With KIND NAME (e.g. `ipd plugins policy ipd-dt`): that component's documentation and
    every option with its default, each settable as `ipd run --set KIND.OPTION=VALUE`.
    """
    import dataclasses
    import inspect

    from registry import KINDS, get_registry

    reg = get_registry()
    if kind is not None:
        if name is None:
            raise click.UsageError("give both KIND and NAME, e.g. `ipd plugins policy ipd-dt`")
        if kind not in KINDS:
            known = ", ".join(KINDS)
            raise click.BadParameter(f"{kind!r} is not one of {known}", param_hint="KIND")
        try:
            cls = reg.config_class(kind, name)
        except (KeyError, ValueError) as err:
            raise click.BadParameter(str(err).strip("'\""), param_hint="NAME") from err
        click.secho(f"{kind} {name}", bold=True)
        click.echo(inspect.cleandoc(cls.__doc__ or "").replace("``", "`"))
        click.secho(
            f"\noptions (--set {kind}.OPTION=VALUE; a --profile overrides step counts):",
            bold=True,
        )
        defaults = cls()
        for f in dataclasses.fields(cls):
            if f.name.startswith("_"):
                continue
            kind_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", f.type)
            click.echo(f"  {f.name:<24} {getattr(defaults, f.name)!r:<14} {kind_name}")
        return
    for k in KINDS:
        click.secho(k, bold=True)
        rows = reg.registrations(k)
        if not rows:
            click.echo("  (none)")
        for r in rows:
            doc = (r.config_cls.__doc__ or "").strip().splitlines()
            summary = re.sub(r":\w+:`~?([^`]+)`", r"\1", doc[0]) if doc else ""  # drop RST roles
            click.echo(f"  {r.name:<16} {r.source:<24} {summary.replace('``', '')}")


main.add_command(run)
main.add_command(eval_run)
from ipd_plugins.baselines import baseline_command  # noqa: E402

main.add_command(baseline_command)
from ipd_plugins.compare import compare  # noqa: E402

main.add_command(compare)
from ipd_plugins.ablations import ablate  # noqa: E402

main.add_command(ablate)


@main.group()
def data() -> None:
    """Trajectory datasets: inspect, make and list them."""


# -- data subcommands (one line per command module) ---------------------------------------
from ipd_plugins.data.commands import info  # noqa: E402

data.add_command(info)
from ipd_plugins.data.make import list_datasets, make  # noqa: E402

data.add_command(make)
data.add_command(list_datasets)
from ipd_plugins.data.export import export  # noqa: E402

data.add_command(export)
