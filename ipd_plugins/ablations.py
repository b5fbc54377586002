"""``ipd ablate``: the paper's ablations (sec. 4.3) as one command each, through the runner.

* ``planner`` (fig. 2): imaginary rollouts planned by MPC (eq. 22-25) vs the greedy
  quasi-optimal policy of eq. 5 (``--planner greedy``).
* ``n-aug`` (the scaling claim of sec. 4.3): the augmentation ratio N_aug of eq. 21 over a list
  of values (default 0, 0.5, 1, 2; 0 = no augmentation) vs the score, as a line plot.
* ``rtg`` (fig. 3): ``ipd-dt`` conditioned on V(s) vs the classic ``dt`` policy conditioned on
  several hand-set return-to-go targets (``--set policy.target_return=...``), trained on the
  same augmented data; the spread over seeds is the point of the figure.

Each variant is an ordinary ``ipd run`` (its own run folder, ``<out>/<run name>/seed_<k>``),
run seed by seed, so the stage cache trains the value function and the world model once per
seed (and, for ``rtg``, the augmentation too) and every later variant reuses them. A variant
whose run folder already has ``results.json`` is not run again: an interrupted ablation
resumes. The variant's label is added to its ``results.json`` (``label``, ``ablation``), and the
comparison (:mod:`ipd_plugins.compare`) is written to ``<out>/ablations/<kind>__<dataset>.md``
with a plot next to it (a line plot for ``n-aug``, bars otherwise).

The same grids by hand: ``ipd run --planner greedy ...``, ``ipd run --set augment.n_aug=2``,
``ipd run --policy dt --set policy.target_return=3600``, then ``ipd compare <out>``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

__all__ = [
    "Variant",
    "planner_variants",
    "n_aug_variants",
    "rtg_variants",
    "parse_targets",
    "run_ablation",
    "AblationResult",
    "ablate",
]

KINDS = ("planner", "n-aug", "rtg")


@dataclass(frozen=True)
class Variant:
    """One cell of an ablation grid: a label, component names and ``--set`` style overrides."""

    label: str
    components: dict[str, str] = field(default_factory=dict)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    x: float | None = None  # the numeric setting, for line plots


def planner_variants() -> list[Variant]:
    """Fig. 2: MPC vs greedy augmentation."""
    return [Variant("mpc", {"planner": "mpc"}), Variant("greedy", {"planner": "greedy"})]


def n_aug_variants(values: Sequence[float]) -> list[Variant]:
    """N_aug (eq. 21) in ``values``."""
    if not values or any(v < 0 for v in values):
        raise ValueError(f"N_aug values must be a non-empty list of numbers >= 0, got {values}")
    return [
        Variant(f"N_aug={v:g}", {}, {"augment": {"n_aug": float(v)}}, x=float(v)) for v in values
    ]


def parse_targets(text: str, returns: Sequence[float]) -> list[float]:
    """``"3600,0.5x,1x"`` -> return targets. ``Fx`` is ``min + F (max - min)`` of the dataset's
    episode returns (``1x`` = the best episode, ``2x`` = as far above it as it is above the
    worst), so the same list makes sense for any dataset, negative returns included."""
    lo, hi = float(min(returns)), float(max(returns))
    out = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        try:
            out.append(lo + float(item[:-1]) * (hi - lo) if item.endswith("x") else float(item))
        except ValueError as err:
            raise ValueError(
                f"--targets: {item!r} is neither a number (a return) nor a multiple like 1.5x"
            ) from err
    if not out:
        raise ValueError(f"--targets expects a comma-separated list, got {text!r}")
    return out


def rtg_variants(targets: Sequence[float]) -> list[Variant]:
    """Fig. 3: V(s) conditioning (``ipd-dt``) vs ``dt`` at each return-to-go target."""
    out = [Variant("V(s) ipd-dt", {"policy": "ipd-dt"})]
    out += [
        Variant(f"RTG={t:.4g}", {"policy": "dt"}, {"policy": {"target_return": float(t)}}, x=t)
        for t in targets
    ]
    return out


@dataclass
class AblationResult:
    markdown: Path
    plot: Path
    run_dirs: list[Path]
    comparison: Any


def _merge(base: dict[str, dict[str, Any]], extra: dict[str, dict[str, Any]]) -> dict:
    out = {k: dict(v) for k, v in base.items()}
    for k, v in extra.items():
        out.setdefault(k, {}).update(v)
    return out


def run_ablation(
    kind: str,
    variants: Sequence[Variant],
    dataset: str | None,
    seeds: Sequence[int],
    profile: str | None = None,
    out_dir: str | None = None,
    overrides: Sequence[str] = (),
    echo: Callable[[str], None] = print,
    progress: bool = False,
    reps: int = 2000,
) -> AblationResult:
    """Run every variant for every seed (seed-major: the cache reuses value + world model),
    label the results, and write the comparison table and plot."""
    from ipd_plugins.compare import bar_chart, line_chart, load_records, summarise, to_markdown
    from ipd_plugins.runner import Pipeline, parse_overrides, resolve_config, write_json

    if kind not in KINDS:
        raise ValueError(f"unknown ablation '{kind}'; ablations: {', '.join(KINDS)}")
    labels = [v.label for v in variants]
    if len(set(labels)) != len(labels):
        raise ValueError(f"ablation '{kind}': two variants share a label: {labels}")
    user = parse_overrides(list(overrides))
    run_dirs: list[Path] = []
    settings = None
    for seed in seeds:
        for v in variants:
            cfg = resolve_config(
                components=v.components,
                run={"dataset": dataset, "seed": seed, "profile": profile, "out_dir": out_dir},
                overrides=_merge(user, v.overrides),
            )
            settings = cfg.run
            path = cfg.run_dir / "results.json"
            if path.exists():
                echo(f"[ablate {kind}] {v.label}, seed {seed}: finished earlier ({cfg.run_dir})")
            else:
                echo(f"[ablate {kind}] {v.label}, seed {seed} -> {cfg.run_dir}")
                Pipeline(cfg, echo=echo, progress=progress).run()
            results = json.loads(path.read_text())
            results.update(label=v.label, ablation={"kind": kind, "x": v.x})
            write_json(path, results)
            run_dirs.append(cfg.run_dir)
    assert settings is not None, "no seeds given"
    cmp = summarise(load_records(run_dirs), reps=reps, order=labels)
    slug = settings.dataset.replace("/", "_").replace(".", "_").strip("_")
    md = Path(settings.out_dir) / "ablations" / f"{kind}__{slug}.md"
    titles = {
        "planner": "MPC vs greedy augmentation (paper fig. 2)",
        "n-aug": "Augmentation volume N_aug vs score (paper sec. 4.3)",
        "rtg": "V(s) conditioning vs hand-set return-to-go (paper fig. 3)",
    }
    text = to_markdown(cmp, f"{titles[kind]}: {settings.dataset}, profile {settings.profile}")
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(text)
    png = md.with_suffix(".png")
    if kind == "n-aug":
        xs = {v.label: float(v.x) for v in variants if v.x is not None}
        line_chart(cmp, xs, png, xlabel="N_aug (eq. 21)", title=titles[kind])
    else:
        bar_chart(cmp, png, title=titles[kind])
    return AblationResult(md, png, run_dirs, cmp)


# -- `ipd ablate` ------------------------------------------------------------------------------
def _common(f: Callable) -> Callable:
    opts = [
        click.option("--dataset", help="dataset source (default: the profile's)"),
        click.option("--seeds", default="0,1,2", show_default=True, help="comma-separated seeds"),
        click.option(
            "--profile",
            type=click.Choice(["quick", "default", "paper"]),
            help="step counts and sizes (default quick)",
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
            "--reps",
            type=int,
            default=2000,
            show_default=True,
            help="bootstrap replicates for the IQM CI",
        ),
        click.option("--quiet", is_flag=True, help="no progress bars"),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _echo(msg: str) -> None:
    click.echo(msg, err=True)


def _finish(kind, variants, dataset, seeds, profile, out_dir, overrides, quiet, reps) -> None:
    from ipd_plugins.run_cli import parse_seeds

    try:
        seed_list = parse_seeds(None, seeds)
        res = run_ablation(
            kind, variants, dataset, seed_list, profile, out_dir, overrides, _echo, not quiet, reps
        )
    except (KeyError, ValueError, FileNotFoundError) as err:
        raise click.UsageError(str(err.args[0] if isinstance(err, KeyError) else err)) from err
    click.echo(res.markdown.read_text())
    click.echo(f"wrote {res.markdown} and {res.plot}", err=True)


@click.group()
def ablate() -> None:
    """The paper's ablations as one command each: planner, n-aug, rtg (paper section 4.3).

    Every variant is an `ipd run` in its own run folder; variants run seed by seed so the stage
    cache trains the value function and world model once per seed. Finished variants are not
    re-run. The table (D4RL-normalised x100, last checkpoint, mean ± std over seeds, IQM with a
    bootstrap CI) and a plot go to <out>/ablations/<kind>__<dataset>.md/.png.

    \b
    Examples:
      ipd ablate planner --dataset walker2d-medium-replay --seeds 0,1,2 --profile default
      ipd ablate n-aug --dataset hopper-medium --values 0,0.5,1,2
      ipd ablate rtg --dataset halfcheetah-medium-replay --targets 0.5x,1x,1.5x,6000
    """


@ablate.command("planner")
@_common
def ablate_planner(dataset, seeds, profile, out_dir, overrides, reps, quiet) -> None:
    """MPC vs greedy imaginary augmentation (paper fig. 2)."""
    _finish("planner", planner_variants(), dataset, seeds, profile, out_dir, overrides, quiet, reps)


@ablate.command("n-aug")
@_common
@click.option(
    "--values",
    default="0,0.5,1,2",
    show_default=True,
    help="N_aug values (eq. 21; 0 = no augmentation)",
)
def ablate_n_aug(dataset, seeds, profile, out_dir, overrides, reps, quiet, values) -> None:
    """Augmentation volume N_aug vs score (the scaling claim; a line plot)."""
    try:
        vals = [float(v) for v in values.split(",") if v.strip()]
        variants = n_aug_variants(vals)
    except ValueError as err:
        raise click.UsageError(f"--values: {err}") from err
    _finish("n-aug", variants, dataset, seeds, profile, out_dir, overrides, quiet, reps)


@ablate.command("rtg")
@_common
@click.option(
    "--targets",
    default="0.5x,1x,1.5x",
    show_default=True,
    help="return-to-go targets of the dt policy: returns, or Fx = min + F (max - min) of the "
    "dataset's episode returns",
)
def ablate_rtg(dataset, seeds, profile, out_dir, overrides, reps, quiet, targets) -> None:
    """V(s) conditioning (ipd-dt) vs hand-set return-to-go targets (dt) (paper fig. 3)."""
    from ipd_plugins.profiles import DEFAULT_DATASET
    from ipd_plugins.runner import resolve_dataset

    try:
        source = dataset or DEFAULT_DATASET[profile or "quick"]
        returns = resolve_dataset(source, echo=_echo).episode_returns()
        variants = rtg_variants(parse_targets(targets, returns))
    except (ValueError, FileNotFoundError) as err:
        raise click.UsageError(str(err)) from err
    _finish("rtg", variants, source, seeds, profile, out_dir, overrides, quiet, reps)
