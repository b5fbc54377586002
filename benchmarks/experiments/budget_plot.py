"""Score against policy budget (issue 26, part 1): the curves of budget.yaml's runs.

Reads every ``results.json`` with a ``curve`` under the given folders (a sweep's ``record``
or ``out``), and per dataset and method the mean +- std over seeds of the normalised score at
each budget. Writes a markdown table and a PNG next to it. ``--reference`` folders add the
final scores of other runs (e.g. tuning.yaml's d3rlpy DT at 8k steps) as points at their own
``n_steps``::

    python benchmarks/experiments/budget_plot.py benchmarks/results/budget_runs \
        --reference benchmarks/results/tuning_runs --out benchmarks/results/budget.md
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from ipd_plugins.compare import dataset_label, find_results, mean_std, method_label, seed_std
from ipd_plugins.files import atomic_write_text


def _steps(results: dict) -> int | None:
    """The policy's (or baseline's) gradient steps of a finished run, from its config.yaml."""
    import yaml

    config = yaml.safe_load((Path(results["_dir"]) / "config.yaml").read_text())
    for section in ("policy", "baseline"):
        steps = (config.get(section) or {}).get("n_steps")
        if steps:
            return int(steps)
    return None


def load(folders: list[str]) -> dict[str, dict[str, dict[int, list[float]]]]:
    """dataset -> method -> step -> scores over seeds, from the runs' curves."""
    table: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for path in find_results(folders):
        results = json.loads(path.read_text())
        for point in results.get("curve") or []:
            if point["normalized_mean"] is None:
                continue
            dataset = dataset_label(results.get("dataset", {}))
            table[dataset][method_label(results)][point["step"]].append(point["normalized_mean"])
    return table


def load_reference(folders: list[str]) -> dict[str, dict[str, dict[int, list[float]]]]:
    """dataset -> method -> n_steps -> final scores over seeds (runs without a curve)."""
    table: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for path in find_results(folders):
        results = json.loads(path.read_text())
        score = results.get("scores", {}).get("policy", {}).get("normalized_mean")
        if score is None or results.get("curve"):
            continue
        steps = _steps({**results, "_dir": str(path.parent)})
        if steps:
            dataset = dataset_label(results.get("dataset", {}))
            label = method_label(results)
            if (results.get("components") or {}).get("baseline"):  # not this package's `dt`
                label = f"d3rlpy {label}"
            table[dataset][label][steps].append(score)
    return table


def markdown(curves: dict, reference: dict) -> str:
    lines = [
        "Normalised score x100 of the policy after k gradient steps: mean +- std over seeds "
        "(n); the curve points of one run per seed (`run.eval_every`), each a 10-episode "
        "evaluation of the checkpoint at step k, the run's own evaluation seeds.",
        "",
    ]
    for dataset in sorted(curves):  # the reference runs are context for a curve's dataset
        methods = {**curves.get(dataset, {}), **{f"{m} (final)": v for m, v in
                                                  reference.get(dataset, {}).items()}}  # fmt: skip
        steps = sorted({k for v in methods.values() for k in v})
        lines += [f"### {dataset}", "", "| method | " + " | ".join(f"{k // 1000:g}k" if k %
                  1000 == 0 else str(k) for k in steps) + " |"]  # fmt: skip
        lines.append("|---|" + "---:|" * len(steps))
        for method, points in methods.items():
            cells = []
            for k in steps:
                v = points.get(k, [])
                cells.append(f"{mean_std(v)} ({len(v)})" if v else "")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(curves: dict, reference: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted(curves)
    names = sorted({f"{m}{tag}" for table, tag in ((curves, ""), (reference, ", final"))
                    for d in datasets for m in table.get(d, {})})  # fmt: skip
    color = {m: f"C{i % 10}" for i, m in enumerate(names)}  # one colour per method, every panel
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        for method, points in sorted(curves.get(dataset, {}).items()):
            steps = sorted(points)
            mean = np.array([np.mean(points[k]) for k in steps])
            std = np.array([seed_std(points[k]) for k in steps])
            n = min(len(points[k]) for k in steps)
            c = color[method]
            ax.plot(steps, mean, marker="o", ms=3, color=c, label=f"{method} (n={n})")
            ax.fill_between(steps, mean - std, mean + std, color=c, alpha=0.15)
        for method, points in sorted(reference.get(dataset, {}).items()):
            for k, v in points.items():
                ax.errorbar([k], [np.mean(v)], yerr=[seed_std(v)], fmt="s", capsize=3,
                            color=color[f"{method}, final"],
                            label=f"{method}, final (n={len(v)})")  # fmt: skip
        ax.set_title(dataset)
        ax.set_xlabel("policy gradient steps")
        ax.set_ylabel("normalised score x100")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("folders", nargs="+", help="folders of runs with a `curve`")
    ap.add_argument("--reference", nargs="*", default=[], help="folders of runs without one")
    ap.add_argument("--out", default="benchmarks/results/budget.md")
    args = ap.parse_args()
    curves, reference = load(args.folders), load_reference(args.reference)
    if not curves:
        raise SystemExit(f"no run with a curve under {', '.join(args.folders)}")
    out = Path(args.out)
    atomic_write_text(out, markdown(curves, reference) + "\n")
    plot(curves, reference, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
