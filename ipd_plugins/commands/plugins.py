"""``ipd plugins``: what is registered, and one component's documentation and options."""

from __future__ import annotations

import dataclasses
import inspect
import re

import click

from ipd_plugins.commands.options import debug_option

__all__ = ["plugins", "plain_doc"]


def plain_doc(doc: str) -> str:
    """A docstring for a terminal: RST roles, literals and LaTeX commands as plain text."""
    text = inspect.cleandoc(doc or "")
    text = re.sub(r"^\.\. math::\s*$", "", text, flags=re.M)
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text)  # :math:`x`, :class:`~a.B` -> x, a.B
    text = text.replace("``", "`")
    text = re.sub(r"\\(?:mathbb|mathrm|text|hat|bar|tilde)\{([^}]*)\}", r"\1", text)
    text = re.sub(r"\\([A-Za-z]+)", r"\1", text)  # \tau -> tau, \min -> min
    text = text.replace("\\,", " ").replace("\\;", " ").replace("\\", "")
    return re.sub(r"\n{3,}", "\n\n", text).strip()


@click.command()
@click.argument("kind", required=False)
@click.argument("name", required=False)
@debug_option
def plugins(kind: str | None, name: str | None) -> None:
    """List every registered component: kind, name and where it comes from.

    With KIND NAME (e.g. `ipd plugins policy ipd-dt`): that component's documentation and
    every option with its default, each settable as `ipd run --set KIND.OPTION=VALUE`
    (baselines: `ipd baseline NAME --set baseline.OPTION=VALUE`).
    """
    from registry import ALL_KINDS, get_registry

    reg = get_registry()
    if kind is not None:
        if name is None:
            raise click.UsageError("give both KIND and NAME, e.g. `ipd plugins policy ipd-dt`")
        if kind not in ALL_KINDS:
            known = ", ".join(ALL_KINDS)
            raise click.BadParameter(f"{kind!r} is not one of {known}", param_hint="KIND")
        try:
            cls = reg.config_class(kind, name)
        except (KeyError, ValueError) as err:
            raise click.BadParameter(str(err).strip("'\""), param_hint="NAME") from None
        click.secho(f"{kind} {name}", bold=True)
        click.echo(plain_doc(cls.__doc__ or ""))
        section = kind
        click.secho(
            f"\noptions (--set {section}.OPTION=VALUE; a --profile overrides step counts):",
            bold=True,
        )
        defaults = cls()
        for f in dataclasses.fields(cls):
            if f.name.startswith("_"):
                continue
            kind_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", f.type)
            click.echo(f"  {f.name:<24} {getattr(defaults, f.name)!r:<14} {kind_name}")
        return
    for k in ALL_KINDS:
        click.secho(k, bold=True)
        rows = reg.registrations(k)
        if not rows:
            click.echo("  (none)")
        for r in rows:
            doc = plain_doc(r.config_cls.__doc__ or "").splitlines()
            click.echo(f"  {r.name:<16} {r.source:<24} {doc[0] if doc else ''}")
