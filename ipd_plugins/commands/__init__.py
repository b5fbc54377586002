"""The ``ipd`` command line (click). Nothing outside this package imports click.

One module per command family: ``run`` (``ipd run``), ``eval``, ``baseline``, ``compare``
(``ipd compare``, ``ipd ablate``), ``data`` (``ipd data ...``), ``export``, ``plugins``; shared
options and the clean-error handling in ``options``.
"""

from __future__ import annotations

import click

from ipd_plugins import __version__
from ipd_plugins.commands.baseline import baseline
from ipd_plugins.commands.compare import ablate, compare
from ipd_plugins.commands.data import data
from ipd_plugins.commands.eval import eval_run
from ipd_plugins.commands.export import export
from ipd_plugins.commands.options import IpdGroup, debug_option
from ipd_plugins.commands.plugins import plugins
from ipd_plugins.commands.run import run
from ipd_plugins.commands.sweep import sweep

__all__ = ["main"]


@click.group(cls=IpdGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ipd")
@debug_option
def main() -> None:
    """ipd: Imaginary Planning Distillation for offline RL, built from swappable plugins.

    Components of five kinds (value, world_model, uncertainty, planner, policy), the
    adapters (inference-time adaptation, `--adapter dwm`) and the baselines are pluggy
    plugins; `ipd plugins` lists them. Errors print one `Error:` line;
    `--debug` (here or on any command) shows the traceback.
    """
    quiet_third_party_output()


def quiet_third_party_output() -> None:
    """Keep d3rlpy's chatter out of ipd's output: the legacy ``gym`` package's banner (printed
    when d3rlpy imports it) and d3rlpy's info-level structlog lines; warnings still show."""
    import contextlib
    import io
    import logging

    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            import gym  # noqa: F401
        except ImportError:
            pass
    try:
        import structlog

        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    except ImportError:
        pass


for command in (run, eval_run, baseline, compare, ablate, sweep, data, export, plugins):
    main.add_command(command)
