"""What every ``ipd`` command shares: option decorators, seeds, clean errors, output."""

from __future__ import annotations

import contextlib
import functools
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import click

from ipd_plugins.hardware import PRECISIONS
from ipd_plugins.profiles import PROFILES

__all__ = [
    "echo",
    "usage_errors",
    "debug_option",
    "episode_length_option",
    "run_options",
    "RUN_OPTION_FIELDS",
    "parse_seeds",
    "IpdGroup",
    "fail",
]

#: The RunSettings fields that :func:`run_options` adds a flag for.
RUN_OPTION_FIELDS = (
    "dataset",
    "env_id",
    "clip_actions",
    "episode_length",
    "profile",
    "out_dir",
    "name",
    "device",
    "threads",
    "precision",
    "eval_episodes",
)

_DEBUG = "ipd.debug"


def echo(msg: str) -> None:
    """Progress and notes go to stderr; results to stdout."""
    click.echo(msg, err=True)


def fail(message: str) -> None:
    """Stop the command with ``Error: message`` (exit status 1)."""
    raise click.ClickException(message)


@contextlib.contextmanager
def usage_errors() -> Iterator[None]:
    """Turn a bad option (``ValueError``/``KeyError``/``FileNotFoundError`` while reading the
    command line and config files) into click's usage error: ``Error: ...``, exit status 2."""
    try:
        yield
    except (ValueError, KeyError, FileNotFoundError) as err:
        raise click.UsageError(_message(err)) from None


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.meta[_DEBUG] = True
    return value


def debug_option(f: Callable) -> Callable:
    """``--debug``: show the Python traceback of an error instead of one ``Error:`` line."""
    return click.option(
        "--debug",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_set_debug,
        help="On an error, show the full traceback instead of one 'Error:' line.",
    )(f)


episode_length_option = click.option(
    "--episode-length",
    type=click.IntRange(min=1),
    metavar="N",
    help="steps per episode of a D4RL HDF5 file that has no 'timeouts' (or neither "
    "'timeouts' nor 'terminals'): its episodes end every N steps.",
)


def _options(f: Callable, opts: list[Any]) -> Callable:
    for opt in reversed(opts):
        f = opt(f)
    return f


def run_options(what: str) -> Callable[[Callable], Callable]:
    """The options of a training command (``ipd run``, ``ipd baseline``), collected into one
    ``run`` dict of :class:`~ipd_plugins.run_config.RunSettings` values (None: not given),
    plus ``seeds`` (a list), ``config_file`` and ``overrides``."""

    def decorate(f: Callable) -> Callable:
        @functools.wraps(f)
        def wrapper(*args: Any, seed: int | None, seeds: str | None, **kwargs: Any) -> Any:
            run = {k: kwargs.pop(k) for k in RUN_OPTION_FIELDS}
            if not run["clip_actions"]:
                run["clip_actions"] = None  # not given: the config file's or the default
            try:
                seed_list = parse_seeds(seed, seeds)
            except ValueError as err:
                raise click.UsageError(str(err)) from None
            return f(*args, run=run, seeds=seed_list, **kwargs)

        return _options(
            wrapper,
            [
                click.option(
                    "--dataset",
                    help="Minari id, .hdf5/.h5/.npz path or `ipd data make` name "
                    "(default: the profile's dataset, made if missing).",
                ),
                click.option(
                    "--env",
                    "env_id",
                    metavar="ENV_ID",
                    help="gymnasium id of the data's environment (e.g. Hopper-v5); needed when "
                    "the file does not name it, overrides it when it does.",
                ),
                click.option(
                    "--clip-actions",
                    is_flag=True,
                    help="clip dataset actions into the environment's action space (and say "
                    "how many) instead of failing.",
                ),
                episode_length_option,
                click.option("--seed", type=int, help=f"seed of {what} (default 0)"),
                click.option(
                    "--seeds",
                    help="several independent seeds in one command, e.g. 0,1,2 (one run folder "
                    "each; `ipd compare` aggregates them)",
                ),
                click.option(
                    "--profile",
                    type=click.Choice(list(PROFILES)),
                    help="step counts and sizes: quick (minutes, a demo), default (a CPU run), "
                    "paper (the paper's, for a GPU). Default: quick.",
                ),
                click.option(
                    "--config",
                    "config_file",
                    type=click.Path(exists=True),
                    help="YAML/TOML run config; a run folder (or its config.yaml) replays it.",
                ),
                click.option(
                    "--set",
                    "overrides",
                    multiple=True,
                    metavar="SECTION.KEY=VALUE",
                    help="override any option, e.g. --set planner.n_mpc=8 (repeatable)",
                ),
                click.option(
                    "--out", "out_dir", help="folder of run folders and the stage cache (runs)"
                ),
                click.option("--name", help="run folder name (default: dataset, method, hash)"),
                click.option(
                    "--device", help="torch device: auto (default: cuda if present), cpu, cuda:N"
                ),
                click.option(
                    "--threads",
                    type=click.IntRange(min=1),
                    help="torch CPU threads (default: the usable cores not already busy)",
                ),
                click.option(
                    "--precision",
                    type=click.Choice(PRECISIONS),
                    help="training precision (default auto: bf16 where the chip has it natively)",
                ),
                click.option("--eval-episodes", type=int, help="evaluation episodes"),
                debug_option,
            ],
        )

    return decorate


def parse_seeds(seed: int | None, seeds: str | None) -> list[int | None]:
    """``--seed 3`` -> [3]; ``--seeds 0,1,2`` -> [0, 1, 2]; neither -> [None] (the default)."""
    if seeds is None:
        return [seed]
    if seed is not None:
        raise ValueError("give either --seed or --seeds, not both")
    try:
        out = [int(s) for s in seeds.replace(" ", "").split(",") if s]
    except ValueError:
        out = []
    if not out or any(s < 0 for s in out):
        raise ValueError(f"--seeds expects comma-separated integers >= 0 like 0,1,2, got {seeds!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"--seeds has a seed twice: {seeds!r}")
    return list(out)


def _message(err: BaseException) -> str:
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    text = str(err)
    return text if text else type(err).__name__


#: Errors that describe a problem with the user's input or machine, shown as one line.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    KeyError,
    FileNotFoundError,
    PermissionError,
    OSError,
)


class IpdGroup(click.Group):
    """A click group whose commands fail with one ``Error:`` line (``--debug``: traceback)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            echo("interrupted: every finished stage is cached; the same command resumes")
            ctx.exit(130)
        except Exception as err:
            if ctx.meta.get(_DEBUG):
                raise
            if isinstance(err, EXPECTED_ERRORS):
                echo(f"Error: {_message(err)}")
            else:
                where = traceback.extract_tb(err.__traceback__)[-1]
                echo(
                    f"Error: {type(err).__name__}: {_message(err)} (at {where.filename}:"
                    f"{where.lineno}; an unexpected error: --debug shows the traceback, "
                    "please report it)"
                )
            ctx.exit(1)
