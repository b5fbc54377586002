"""``ipd ablate``: the paper's ablations (sec. 4.3) as one command each, through the runner.

* ``planner`` (fig. 2): imaginary rollouts planned by MPC (eq. 22-25) vs the greedy
  quasi-optimal policy of eq. 5 (``--planner greedy``).
* ``n-aug`` (the scaling claim of sec. 4.3): the augmentation ratio N_aug of eq. 21 over a list
  of values (default 0, 0.5, 1, 2; 0 = no augmentation) vs the score, as a line plot.
* ``rtg`` (fig. 3): ``ipd-dt`` conditioned on V(s) vs the classic ``dt`` policy conditioned on
  several hand-set return-to-go targets (``--set policy.target_return=...``), trained on the
  same augmented data; the spread over seeds is the point of the figure.
* ``policy`` (not in the paper): another policy (``--policy``, default ``gtp``) swapped in for
  ``ipd-dt`` after IPD's augmentation (``ipd[policy=gtp]``), and the same policy alone on the
  data (``augment.n_aug=0``: ``gtp alone``), next to IPD; the labels are what ``ipd compare``
  calls the same runs made by hand.

Each variant is an ordinary ``ipd run`` (its own run folder, ``<out>/<run name>/seed_<k>``),
run seed by seed through the sweep engine (:mod:`ipd_plugins.sweep`, in this process by
default), so the stage cache trains the value function and the world model once per seed (and,
for ``rtg``, the augmentation and the ``dt`` policy too: its ``target_return`` is read only
when acting) and every later variant reuses them. A variant whose run folder already has
``results.json`` is not run again: an interrupted ablation resumes. The
variant's label is added to its ``results.json`` (``label``, ``ablation``), and the comparison
(:mod:`ipd_plugins.compare`) is written to ``<out>/ablations/<kind>__<dataset>.md`` with a plot
next to it (a line plot for ``n-aug``, bars otherwise).

The same grids by hand: ``ipd run --planner greedy ...``, ``ipd run --set augment.n_aug=2``,
``ipd run --policy dt --set policy.target_return=3600``, ``ipd run --policy gtp --set
augment.n_aug=0``, then ``ipd compare <out>``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Variant",
    "planner_variants",
    "n_aug_variants",
    "rtg_variants",
    "policy_variants",
    "parse_targets",
    "ablation_cells",
    "run_ablation",
    "AblationResult",
]

KINDS = ("planner", "n-aug", "rtg", "policy")


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


def policy_variants(policy: str) -> list[Variant]:
    """IPD vs ``policy`` after IPD's augmentation vs ``policy`` alone (no augmentation).

    Labelled as :func:`~ipd_plugins.compare.method_label` labels those runs made by hand.
    """
    from ipd_plugins.run_config import DEFAULT_COMPONENTS

    if policy == DEFAULT_COMPONENTS["policy"]:
        return [
            Variant("ipd", {}),
            Variant(f"{policy} alone", {}, {"augment": {"n_aug": 0.0}}),
        ]
    return [
        Variant("ipd", {}),
        Variant(f"ipd[policy={policy}]", {"policy": policy}),
        Variant(f"{policy} alone", {"policy": policy}, {"augment": {"n_aug": 0.0}}),
    ]


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


def ablation_cells(
    variants: Sequence[Variant],
    run: dict[str, Any],
    seeds: Sequence[int | None],
    overrides: Sequence[str] = (),
) -> list[tuple[Variant, Any]]:
    """Every (variant, resolved run config) of the grid, seed-major, every option checked.

    ``run`` holds :class:`~ipd_plugins.run_config.RunSettings` values (None: the default).
    """
    from ipd_plugins.run_config import parse_overrides, resolve_config

    labels = [v.label for v in variants]
    if len(set(labels)) != len(labels):
        raise ValueError(f"two variants share a label: {labels}")
    if not seeds:
        raise ValueError("no seeds given")
    user = parse_overrides(list(overrides))
    return [
        (v, resolve_config(components=v.components, run={**run, "seed": s}, overrides=o))
        for s in seeds
        for v, o in ((v, _merge(user, v.overrides)) for v in variants)
    ]


def run_ablation(
    kind: str,
    cells: Sequence[tuple[Variant, Any]],
    echo: Callable[[str], None] = print,
    progress: bool = False,
    reps: int = 2000,
    executor: str = "serial",
    address: str | None = None,
) -> AblationResult:
    """Run every cell of :func:`ablation_cells` through the sweep engine
    (:func:`ipd_plugins.sweep.run_trials`), label the results, and write the comparison table
    and plot.

    ``executor="serial"`` (the default) runs the cells in this process in their order
    (seed-major: the first variant of a seed trains the value function and world model, the
    others reuse them); ``"ray"`` runs them on a local Ray instance or the cluster at
    ``address``, each shared stage made once by its own task. Finished cells are skipped; a
    cell that fails does not stop the others, and the first failure is raised at the end.
    """
    from ipd_plugins.compare import bar_chart, line_chart, load_records, summarise, to_markdown
    from ipd_plugins.files import write_json
    from ipd_plugins.sweep import Trial, run_trials

    if kind not in KINDS:
        raise ValueError(f"unknown ablation '{kind}'; ablations: {', '.join(KINDS)}")
    variants = list({v.label: v for v, _ in cells}.values())
    labels = [v.label for v in variants]
    trials = [Trial.from_run_config(cfg, v.label, i + 1) for i, (v, cfg) in enumerate(cells)]
    outcomes = run_trials(
        trials,
        executor=executor,
        address=address,
        echo=echo,
        progress=progress,
        prefix=f"[ablate {kind}]",
    )
    failed = [o for o in outcomes if o.status not in ("done", "finished")]
    if failed:
        first = failed[0]
        if first.exception is not None:
            raise first.exception
        raise ValueError(f"{first.trial.title}: {first.error}")
    run_dirs: list[Path] = []
    settings = None
    for (v, cfg), outcome in zip(cells, outcomes, strict=True):
        settings = cfg.run
        path = Path(str(outcome.results))
        results = json.loads(path.read_text())
        results.update(label=v.label, ablation={"kind": kind, "x": v.x})
        write_json(path, results)
        run_dirs.append(path.parent)
    assert settings is not None, "no seeds given"
    cmp = summarise(load_records(run_dirs), reps=reps, order=labels)
    slug = settings.dataset.replace("/", "_").replace(".", "_").strip("_")
    md = Path(settings.out_dir) / "ablations" / f"{kind}__{slug}.md"
    titles = {
        "planner": "MPC vs greedy augmentation (paper fig. 2)",
        "n-aug": "Augmentation volume N_aug vs score (paper sec. 4.3)",
        "rtg": "V(s) conditioning vs hand-set return-to-go (paper fig. 3)",
        "policy": "the policy after IPD's augmentation and alone",
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
