"""The paper's three ablations (issue 26, part 5) from ablations.yaml's runs: a table and a plot.

Reads every ``results.json`` under the given folders (ablations.yaml's ``record``; add
variants.yaml's for its ``no segments`` runs, which are N_aug = 0) and, per dataset, writes
three sections to one markdown file and three panels to a PNG next to it:

- fig. 2: ``ipd`` (imagined rollouts planned by MPC, eq. 22-25) vs ``greedy`` (pi_QOP alone);
- sec. 4.3: the score against N_aug (eq. 21, the profile's 10% cap on the segments' share
  lifted; ``no segments`` is N_aug = 0), with the capped ``ipd`` as a reference line;
- fig. 3: ``ipd`` (V(s) tokens) vs the classic ``dt`` on the same augmented data, asked for
  hand-set return-to-go targets.

Each row gives the per-seed scores (last checkpoint), their mean +- std, and the paired change
against ``ipd`` on the same seeds, which is how each direction is read::

    python benchmarks/experiments/ablations_plot.py benchmarks/results/ablations_runs \
        benchmarks/results/variants_runs --out benchmarks/results/ablations.md
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from ipd_plugins.compare import load_records, mean_std, seed_std
from ipd_plugins.files import atomic_write_text

BASE = "ipd"
N_AUG = re.compile(r"^n_aug\[augment\.n_aug=([0-9.eE+-]+)\]$")
RTG = re.compile(r"^rtg\[policy\.target_return=([0-9.eE+-]+)\]$")
NO_SEGMENTS = "no segments"  # variants.yaml: augment.n_aug=0 at the default profile

Scores = dict[str, dict[int, float]]  # label -> seed -> normalised score


def load(folders: list[str]) -> dict[str, Scores]:
    """dataset -> label -> seed -> score; a run found twice (two records) counts once, and two
    different scores for one (label, seed) are an error."""
    table: dict[str, Scores] = defaultdict(lambda: defaultdict(dict))
    for r in load_records(folders):
        label = r.label.split("#", 1)[0]  # the same run recorded in two folders
        seen = table[r.dataset][label].get(r.seed)
        if seen is not None and abs(seen - r.score) > 1e-9:
            raise SystemExit(
                f"{r.dataset}, {label}, seed {r.seed}: two runs with different scores "
                f"({seen:.2f} and {r.score:.2f}, the second in {r.path})"
            )
        table[r.dataset][label][r.seed] = r.score
    # only datasets an ablation ran on (variants.yaml's record also holds other datasets)
    ablated = {d: v for d, v in table.items() if any(is_ablation(lab) for lab in v)}
    return ablated


def is_ablation(label: str) -> bool:
    return label == "greedy" or bool(N_AUG.match(label) or RTG.match(label))


def paired(scores: dict[int, float], base: dict[int, float]) -> str:
    """Mean +- std over the seeds both have of (scores - base), with their count (one seed:
    no spread to show)."""
    seeds = sorted(set(scores) & set(base))
    if not seeds:
        return ""
    diff = [scores[s] - base[s] for s in seeds]
    spread = f" +- {seed_std(diff):.1f}" if len(diff) > 1 else ""
    return f"{np.mean(diff):+.1f}{spread} ({len(seeds)})"


def groups(scores: Scores) -> dict[str, list[tuple[str, float | None]]]:
    """The rows of each ablation that ran on this dataset: (label, x) in plotting order.

    An ablation without a run of its own (say only `ipd`, or only the variants' `no segments`)
    is left out."""
    n_aug = [(lab, float(m.group(1))) for lab in scores if (m := N_AUG.match(lab))]
    rtg = [(lab, float(m.group(1))) for lab in scores if (m := RTG.match(lab))]
    if n_aug and NO_SEGMENTS in scores:
        n_aug.append((NO_SEGMENTS, 0.0))
    base = [(BASE, None)] if BASE in scores else []
    runs = {
        "planner": [(lab, None) for lab in ("greedy",) if lab in scores],
        "n_aug": sorted(n_aug, key=lambda t: t[1]),
        "rtg": sorted(rtg, key=lambda t: t[1]),
    }
    return {kind: base + rows for kind, rows in runs.items() if rows}


TITLES = {
    "planner": "MPC vs greedy augmentation (paper fig. 2)",
    "n_aug": "Augmentation volume N_aug vs score, share cap lifted (paper sec. 4.3)",
    "rtg": "V(s) tokens vs hand-set return-to-go targets (paper fig. 3)",
}


def markdown(table: dict[str, Scores]) -> str:
    lines = [
        "Normalised score x100 of the final policy (last checkpoint, 10 episodes) per seed; "
        f"the change is paired against `{BASE}` on the same seeds: mean +- std over seeds (n).",
        "",
    ]
    for dataset in sorted(table):
        scores = table[dataset]
        seeds = sorted({s for v in scores.values() for s in v})
        for kind, rows in groups(scores).items():
            lines += [f"### {dataset}: {TITLES[kind]}", ""]
            lines.append(
                "| variant | " + " | ".join(f"seed {s}" for s in seeds)
                + f" | mean +- std | change vs `{BASE}` |"
            )  # fmt: skip
            lines.append("|---|" + "---:|" * (len(seeds) + 2))
            for label, _ in rows:
                v = scores[label]
                cells = [f"{v[s]:.1f}" if s in v else "" for s in seeds]
                change = "" if label == BASE else paired(v, scores.get(BASE, {}))
                lines.append(
                    f"| `{label}` | " + " | ".join(cells)
                    + f" | {mean_std(list(v.values()))} | {change} |"
                )  # fmt: skip
            lines.append("")
    return "\n".join(lines)


def plot(table: dict[str, Scores], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted(table)
    fig, axes = plt.subplots(len(datasets), 3, figsize=(15, 4 * len(datasets)), squeeze=False)
    for row, dataset in zip(axes, datasets, strict=True):
        scores = table[dataset]
        ran = groups(scores)
        for ax, kind in zip(row, TITLES, strict=True):
            if kind not in ran:  # this ablation did not run on this dataset
                ax.axis("off")
                continue
            rows = ran[kind]
            ax.set_title(f"{dataset}\n{TITLES[kind]}", fontsize=9)
            ax.set_ylabel("normalised score x100")
            ax.grid(alpha=0.3)
            base = scores.get(BASE)
            if kind == "n_aug":
                pts = [(x, scores[lab]) for lab, x in rows if x is not None]
                if pts:
                    xs = [x for x, _ in pts]
                    means = [np.mean(list(v.values())) for _, v in pts]
                    stds = [seed_std(v.values()) for _, v in pts]
                    ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label="cap lifted")
                    for x, v in pts:
                        ax.plot([x] * len(v), list(v.values()), "k.", alpha=0.4)
                if base:
                    ax.axhline(np.mean(list(base.values())), ls="--", color="C1",
                               label=f"{BASE} (capped share)")  # fmt: skip
                ax.set_xlabel("N_aug (eq. 21)")
                ax.legend(fontsize=7)
                continue
            labels = [lab for lab, _ in rows]
            means = [np.mean(list(scores[lab].values())) for lab in labels]
            stds = [seed_std(scores[lab].values()) for lab in labels]
            ax.bar(range(len(labels)), means, yerr=stds, capsize=3,
                   color=[f"C{i}" for i in range(len(labels))])  # fmt: skip
            for i, lab in enumerate(labels):  # the seeds themselves: fig. 3's point is spread
                v = list(scores[lab].values())
                ax.plot([i] * len(v), v, "k.", alpha=0.6)
            base_name = {"planner": f"{BASE} (MPC)", "rtg": f"{BASE} (V(s))"}[kind]
            short = [base_name if lab == BASE else RTG.sub(r"dt, rtg \1", lab) for lab in labels]
            ax.set_xticks(range(len(labels)), short, rotation=20, ha="right", fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("folders", nargs="+", help="folders of finished runs (records or outs)")
    ap.add_argument("--out", default="benchmarks/results/ablations.md")
    args = ap.parse_args()
    table = load(args.folders)
    if not table:
        raise SystemExit(f"no ablation runs (greedy, n_aug[..], rtg[..]) under {args.folders}")
    out = Path(args.out)
    atomic_write_text(out, markdown(table) + "\n")
    plot(table, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
