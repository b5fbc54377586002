"""``ipd export``: a trained actor as one TorchScript or ONNX graph (``ipd_plugins.export``)."""

from __future__ import annotations

import click

from ipd_plugins.commands.options import debug_option, echo

__all__ = ["export"]


@click.command("export")
@click.argument("run_dir", metavar="RUN", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["torchscript", "onnx"]),
    required=True,
    help="torchscript (torch.jit.load, Python or C++) or onnx (onnxruntime, no torch).",
)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="file to write")
@click.option(
    "--actor",
    type=click.Choice(["policy", "qop"]),
    default="policy",
    show_default=True,
    help="policy: the distilled sequence policy (a window graph; ipd-dt computes V(s_t) "
    "inside); qop: the value learner's pi_QOP (state -> action).",
)
@debug_option
def export(run_dir: str, fmt: str, out: str, actor: str) -> None:
    """Export an actor of the finished `ipd run` (or `ipd baseline`) seed folder RUN.

    A sequence policy becomes one graph over the last K steps (states, actions, timesteps and a
    mask, False on the steps not yet filled; `dt` also takes the return-to-go) that returns the
    newest step's action; pi_QOP a state -> action graph; a baseline d3rlpy's `save_policy`
    graph. The file's metadata (env id, K, inputs, the evaluation seed) lets
    examples/deploy_onnx.py run it with onnxruntime and numpy only.

    \b
    Examples:
      ipd export runs/<run>/seed_0 --format onnx --out policy.onnx
      ipd export runs/<run>/seed_0 --format torchscript --out qop.pt --actor qop
      python examples/deploy_onnx.py policy.onnx --episodes 10
    """
    from ipd_plugins.export import export_run

    result = export_run(run_dir, fmt, out, actor=actor, echo=echo)
    echo(f"inputs and output:\n{result.describe()}")
    click.echo(f"wrote {result.path} ({fmt}, {result.metadata['component']})")
