"""``ipd compare``: normalised scores of run folders, per dataset and method, with IQM and CIs.

Reads ``results.json`` of ``ipd run`` and ``ipd baseline`` run folders (a seed folder, a run
folder with ``seed_*`` inside, or a whole ``--out`` folder; the ``cache`` is skipped) and
tabulates the D4RL-normalised score x100 of the last checkpoint (``scores.policy.
normalized_mean``: the mean over the evaluation episodes of one seed):

* per dataset and method: mean +- standard deviation over seeds (``ddof=1``; 0 for one seed);
* per method, across every run on every dataset: the interquartile mean (IQM: the mean of the
  middle 50% of the scores, ``scipy.stats.trim_mean(x, 0.25)``) with a 95% stratified
  bootstrap confidence interval, as rliable recommends (Agarwal et al. 2021, "Deep RL at the
  Edge of the Statistical Precipice"): each bootstrap replicate resamples the runs of every
  dataset with replacement (strata = datasets), the interval is the 2.5/97.5 percentiles of the
  replicate IQMs. Seeded, numpy only;
* with ``--against LABEL``: each method's change against LABEL on the same dataset and seed
  (a paired comparison: the same data and evaluation episodes), per dataset and pooled.

Method labels: a ``label`` written in ``results.json`` (baselines and ``ipd ablate`` write one),
else ``ipd`` for the paper's components or ``ipd[planner=greedy,...]`` naming the components
that differ; a run without augmentation (``augment.n_aug=0``) is its policy alone, e.g.
``gtp alone`` or ``ipd-dt alone[policy.alpha=0.0]``. Two run folders that still share a label on
a dataset (say, two ``--set`` variants) get the run folder's hash appended so they are not
pooled by accident.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "RunRecord",
    "MethodRow",
    "Comparison",
    "find_results",
    "load_records",
    "seed_std",
    "mean_std",
    "iqm",
    "stratified_bootstrap_ci",
    "summarise",
    "to_markdown",
    "paired_changes",
    "paired_markdown",
    "per_seed_markdown",
    "bar_chart",
    "line_chart",
    "dataset_label",
    "method_label",
]

NOTE = (
    "D4RL-normalised score x100 of the last checkpoint (no best-checkpoint selection): "
    "mean +- std over seeds (n = seeds); IQM over all runs of a method with a 95% stratified "
    "bootstrap CI (strata = datasets)."
)


@dataclass(frozen=True)
class RunRecord:
    """One seed of one run folder."""

    path: str  # the seed folder
    run_name: str  # the run folder's name
    dataset: str
    label: str
    seed: int
    score: float  # normalised x100 (or the raw return when the dataset has no ref scores)
    normalized: bool
    train_seconds: float  # sum of the stages' training seconds (reused stages included)


@dataclass
class MethodRow:
    """A method's scores: per dataset mean/std/n, plus its IQM and CI over all its runs."""

    label: str
    cells: dict[str, tuple[float, float, int]] = field(default_factory=dict)  # mean, std, n
    iqm: float = float("nan")
    ci: tuple[float, float] = (float("nan"), float("nan"))
    n_runs: int = 0
    train_minutes: float = float("nan")  # mean training minutes per run

    @property
    def has_ci(self) -> bool:
        """False with one run per dataset: the stratified bootstrap then has nothing to resample,
        and its interval is the IQM itself."""
        return any(n > 1 for _, _, n in self.cells.values())

    def ci_text(self) -> str:
        return f"[{self.ci[0]:.1f}, {self.ci[1]:.1f}]" if self.has_ci else "- (1 run per dataset)"


@dataclass
class Comparison:
    datasets: list[str]
    methods: list[MethodRow]
    normalized: bool
    reps: int
    seed: int


# -- reading run folders -----------------------------------------------------------------
def find_results(paths: Iterable[str | Path]) -> list[Path]:
    """Every ``results.json`` under ``paths`` (globs expanded; ``cache`` folders skipped)."""
    found: list[Path] = []
    for raw in paths:
        matches = sorted(glob.glob(str(raw))) if glob.has_magic(str(raw)) else [str(raw)]
        if not matches:
            raise FileNotFoundError(f"no run folder matches {raw}")
        for m in matches:
            p = Path(m)
            if p.is_file() and p.name == "results.json":
                found.append(p)
            elif p.is_dir():
                found += [
                    r
                    for r in sorted(p.rglob("results.json"))
                    if "cache" not in r.relative_to(p).parts
                ]
            else:
                raise FileNotFoundError(f"{p} is neither a run folder nor a results.json")
    out = list(dict.fromkeys(r.resolve() for r in found))
    if not out:
        raise FileNotFoundError(
            f"no results.json under {', '.join(str(p) for p in paths)}: are the runs finished?"
        )
    return out


def dataset_label(dataset: dict[str, Any]) -> str:
    """``ipd/hopper/medium-v0`` or ``hopper-medium`` -> a short stable name for the table."""
    name = str(dataset.get("name") or dataset.get("source") or "?")
    if name.startswith("ipd/"):
        name = name[4:].replace("/", "-")
    if name.endswith(("-v0", "-v1", "-v2")):
        name = name[:-3]
    return name


def method_label(results: dict[str, Any]) -> str:
    """The results' ``label``/``method``, else ``ipd``, or ``ipd[kind=name,...,section.key=v]``
    with the components and the options (``results["options"]``) that differ from the paper's
    pipeline at its profile. Without augmentation (``augment.n_aug=0``) the policy trained on
    the data alone: ``<policy> alone[...]``, leaving out what then never reaches the policy
    (world model, uncertainty, planner, augmentation options)."""
    from ipd_plugins.run_config import DEFAULT_COMPONENTS

    for key in ("label", "method"):
        if results.get(key):
            return str(results[key])
    comps = results.get("components", {})
    diff = [f"{k}={v}" for k, v in comps.items() if DEFAULT_COMPONENTS.get(k) != v]
    options = list(results.get("options", []))
    if any(_no_augmentation(o) for o in options):
        unused = ("world_model", "uncertainty", "planner", "augment", "policy")
        rest = [d for d in diff + options if d.split("=")[0].split(".")[0] not in unused]
        rest += [o for o in options if o.startswith("policy.")]
        policy = comps.get("policy", DEFAULT_COMPONENTS["policy"])
        return f"{policy} alone" + (f"[{','.join(rest)}]" if rest else "")
    diff += options
    return "ipd" if not diff else "ipd[" + ",".join(diff) + "]"


def _no_augmentation(option: str) -> bool:
    """``augment.n_aug=0`` (in any spelling of zero): no imagined data reached the policy."""
    key, _, value = option.partition("=")
    if key != "augment.n_aug":
        return False
    try:
        return float(value) == 0.0
    except ValueError:
        return False


def load_records(paths: Iterable[str | Path], actor: str = "policy") -> list[RunRecord]:
    """One :class:`RunRecord` per ``results.json`` (``actor``: ``policy`` or ``qop``)."""
    records: list[RunRecord] = []
    for path in find_results(paths):
        results = json.loads(path.read_text())
        scores = results.get("scores", {})
        if actor not in scores:
            continue
        s = scores[actor]
        normalized = s.get("normalized_mean") is not None
        label = method_label(results)
        if actor != "policy":
            label = f"{label}:{actor}"
        seconds = sum(float(v or 0.0) for v in (results.get("stage_seconds") or {}).values())
        records.append(
            RunRecord(
                path=str(path.parent),
                run_name=path.parent.parent.name,
                dataset=dataset_label(results.get("dataset", {})),
                label=label,
                seed=int(results.get("seed", 0)),
                score=float(s["normalized_mean"] if normalized else s["mean_return"]),
                normalized=normalized,
                train_seconds=seconds,
            )
        )
    # a label shared by two run folders on one dataset: append the folders' hash
    owners: dict[tuple[str, str], set[str]] = {}
    for r in records:
        owners.setdefault((r.dataset, r.label), set()).add(r.run_name)
    out = []
    for r in records:
        if len(owners[(r.dataset, r.label)]) > 1:
            r = RunRecord(**{**r.__dict__, "label": f"{r.label}#{r.run_name.rsplit('__', 1)[-1]}"})
        out.append(r)
    return out


# -- statistics -------------------------------------------------------------------------------
def seed_std(values: Iterable[float]) -> float:
    """Sample standard deviation over seeds (``ddof=1``), 0 for fewer than two values."""
    x = np.asarray(list(values), np.float64)
    return float(x.std(ddof=1)) if len(x) > 1 else 0.0


def mean_std(values: Iterable[float], digits: int = 1) -> str:
    """``"mean +- std"`` over seeds as every table here writes it; the mean alone for one value
    and ``"-"`` for none."""
    x = list(values)
    if not x:
        return "-"
    if len(x) == 1:
        return f"{x[0]:.{digits}f}"
    return f"{np.mean(x):.{digits}f} +- {seed_std(x):.{digits}f}"


def iqm(scores: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean along ``axis``: sort, drop ``floor(0.25 n)`` from each end, average.

    The same as ``scipy.stats.trim_mean(scores, 0.25, axis)`` (what rliable uses).
    """
    x = np.sort(np.asarray(scores, np.float64), axis=axis)
    n = x.shape[axis]
    if n == 0:
        raise ValueError("iqm of an empty set of scores")
    k = int(0.25 * n)
    return np.take(x, np.arange(k, n - k), axis=axis).mean(axis=axis)


def stratified_bootstrap_ci(
    groups: Sequence[Sequence[float]],
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile CI of the IQM under a bootstrap that resamples runs within each group.

    ``groups[j]``: the scores (one per run) on dataset ``j``. Replicate ``b`` draws
    ``len(groups[j])`` indices with replacement from every group (in group order, from one
    ``np.random.default_rng(seed)``), pools the draws and takes their :func:`iqm`; the interval
    is the ``(1 - confidence)/2`` and ``(1 + confidence)/2`` quantiles of the ``reps`` IQMs.
    """
    if not groups or any(len(g) == 0 for g in groups):
        raise ValueError("stratified bootstrap needs at least one score in every group")
    if reps < 1 or not 0.0 < confidence < 1.0:
        raise ValueError(f"need reps >= 1 and 0 < confidence < 1, got {reps}, {confidence}")
    rng = np.random.default_rng(seed)
    draws = []
    for g in groups:
        arr = np.asarray(g, np.float64)
        idx = rng.integers(0, len(arr), size=(reps, len(arr)))  # (reps, n_j)
        draws.append(arr[idx])
    stats = iqm(np.concatenate(draws, axis=1), axis=1)  # (reps,)
    lo, hi = np.quantile(stats, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)


def summarise(
    records: Sequence[RunRecord],
    reps: int = 2000,
    seed: int = 0,
    order: Sequence[str] | None = None,
) -> Comparison:
    """Per dataset and method mean/std/n; per method IQM + stratified bootstrap CI.

    ``order``: method labels first in this order (the rest sorted), e.g. IPD before baselines.
    """
    if not records:
        raise ValueError("no runs to compare")
    normalized = {r.normalized for r in records}
    if len(normalized) > 1:
        raise ValueError(
            "some runs have normalised scores and some only returns (datasets without D4RL "
            "reference scores): compare them separately"
        )
    datasets = sorted({r.dataset for r in records})
    labels = sorted({r.label for r in records})
    if order:
        first = [lab for lab in order if lab in labels]
        labels = first + [lab for lab in labels if lab not in first]
    rows = []
    for lab in labels:
        mine = [r for r in records if r.label == lab]
        row = MethodRow(lab)
        groups = []
        for d in datasets:
            vals = np.asarray([r.score for r in mine if r.dataset == d], np.float64)
            if len(vals):
                row.cells[d] = (float(vals.mean()), seed_std(vals), len(vals))
                groups.append(vals)
        pooled = np.concatenate(groups)
        row.iqm = float(iqm(pooled))
        row.ci = stratified_bootstrap_ci(groups, reps=reps, seed=seed)
        row.n_runs = len(pooled)
        row.train_minutes = float(np.mean([r.train_seconds for r in mine]) / 60.0)
        rows.append(row)
    return Comparison(datasets, rows, normalized.pop(), reps, seed)


# -- output -------------------------------------------------------------------------------
def to_markdown(cmp: Comparison, title: str = "Scores") -> str:
    """The two tables (per dataset; IQM) and the note on what the numbers are."""
    what = NOTE if cmp.normalized else NOTE.replace("D4RL-normalised score x100", "Return")
    lines = [f"# {title}", "", what, ""]
    head = ["dataset", *[m.label for m in cmp.methods]]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * len(cmp.methods)) + "|")
    for d in cmp.datasets:
        cells = [d]
        for m in cmp.methods:
            if d in m.cells:
                mean, std, n = m.cells[d]  # one seed has no spread to show
                cells.append(f"{mean:.1f} ± {std:.1f} (n={n})" if n > 1 else f"{mean:.1f} (n=1)")
            else:
                cells.append("-")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"IQM over runs, 95% stratified bootstrap CI ({cmp.reps} replicates, seed {cmp.seed}):",
        "",
        "| method | IQM | 95% CI | runs | train min/run |",
        "|---|---:|---:|---:|---:|",
    ]
    for m in cmp.methods:
        lines.append(
            f"| {m.label} | {m.iqm:.1f} | {m.ci_text()} | {m.n_runs} | {m.train_minutes:.1f} |"
        )
    n = len(cmp.datasets)
    partial = [f"`{m.label}` {len(m.cells)} of {n}" for m in cmp.methods if len(m.cells) < n]
    if partial:
        lines += [
            "",
            f"Not like for like: some methods ran on fewer of the {n} datasets ("
            + ", ".join(partial)
            + "), and an IQM pools only its method's datasets; compare those per dataset, "
            "or seed by seed with `--against`.",
        ]
    return "\n".join(lines) + "\n"


def paired_changes(
    records: Sequence[RunRecord], against: str
) -> dict[str, dict[str, dict[int, float]]]:
    """method -> dataset -> seed -> its score minus ``against``'s on the same dataset and seed
    (every other method; seeds ``against`` has not run are left out)."""
    base = {(r.dataset, r.seed): r.score for r in records if r.label == against}
    if not base:
        raise ValueError(f"no run labelled '{against}' to pair the others with")
    out: dict[str, dict[str, dict[int, float]]] = {}
    for r in records:
        if r.label != against and (r.dataset, r.seed) in base:
            cell = out.setdefault(r.label, {}).setdefault(r.dataset, {})
            cell[r.seed] = r.score - base[(r.dataset, r.seed)]
    return out


def paired_markdown(records: Sequence[RunRecord], against: str, order: Sequence[str] = ()) -> str:
    """Each method's change against ``against`` seed by seed (same dataset, same seed: the
    same data, evaluation episodes and, for IPD variants, the same cached stages): per dataset
    the mean +- std over the paired seeds, and over every pair."""
    changes = paired_changes(records, against)
    datasets = sorted({d for per in changes.values() for d in per})
    labels = [m for m in order if m in changes] + sorted(m for m in changes if m not in order)
    lines = [
        f"Change against `{against}` on the same dataset and seed: mean +- std over the "
        "paired seeds (n); `all` pools every (dataset, seed) pair.",
        "",
        "| method | " + " | ".join(datasets) + " | all |",
        "|---|" + "---:|" * (len(datasets) + 1),
    ]

    def cell(values: list[float]) -> str:
        if not values:
            return "-"
        return f"{np.mean(values):+.1f} ± {seed_std(values):.1f} (n={len(values)})"

    for m in labels:
        per = changes[m]
        pooled = [v for d in datasets for v in per.get(d, {}).values()]
        cells = [cell(list(per.get(d, {}).values())) for d in datasets]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {cell(pooled)} |")
    return "\n".join(lines) + "\n"


def per_seed_markdown(records: Sequence[RunRecord], order: Sequence[str] = ()) -> str:
    """Every run's score: a row per (dataset, seed), a column per method (``order`` first),
    ``-`` where a method has no run; two runs of one label and seed are both shown."""
    found = sorted({r.label for r in records})
    labels = [m for m in order if m in found] + [m for m in found if m not in order]
    scores: dict[tuple[str, int, str], list[float]] = {}
    for r in records:
        scores.setdefault((r.dataset, r.seed, r.label), []).append(r.score)
    lines = [
        "Every run, seed by seed:",
        "",
        "| dataset | seed | " + " | ".join(labels) + " |",
        "|---|---:|" + "---:|" * len(labels),
    ]
    for d, seed in sorted({(r.dataset, r.seed) for r in records}):
        cells = [
            " / ".join(f"{v:.1f}" for v in scores.get((d, seed, m), [])) or "-" for m in labels
        ]
        lines.append(f"| {d} | {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_chart(cmp: Comparison, path: str | Path, title: str = "") -> None:
    """Grouped bars (dataset x method, std over seeds as error bars) and the IQMs with CIs."""
    plt = _pyplot()
    n_d, n_m = len(cmp.datasets), len(cmp.methods)
    fig, (ax, ax2) = plt.subplots(
        1,
        2,
        figsize=(max(8.0, 0.5 * n_d * n_m + 4.0), 4.5),
        gridspec_kw={"width_ratios": [max(1, n_d), 1]},
    )
    width = 0.8 / max(1, n_m)
    x = np.arange(n_d)
    for i, m in enumerate(cmp.methods):
        means = [m.cells.get(d, (np.nan, 0, 0))[0] for d in cmp.datasets]
        stds = [m.cells.get(d, (np.nan, 0, 0))[1] for d in cmp.datasets]
        ax.bar(x + (i - (n_m - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=m.label)
    ax.set_xticks(x, cmp.datasets, rotation=20, ha="right")
    ax.set_ylabel("normalised score x100" if cmp.normalized else "return")
    ax.set_title("mean ± std over seeds (last checkpoint)", fontsize=10)
    ax.legend(  # below the axes, never over the bars
        fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=min(n_m, 3)
    )
    if title:
        fig.suptitle(title, fontsize=11)
    iqms = np.array([m.iqm for m in cmp.methods])
    err = np.array([[m.iqm - m.ci[0] for m in cmp.methods], [m.ci[1] - m.iqm for m in cmp.methods]])
    ax2.bar(np.arange(n_m), iqms, yerr=err, capsize=3, color=[f"C{i}" for i in range(n_m)])
    ax2.set_xticks(np.arange(n_m), [m.label for m in cmp.methods], rotation=30, ha="right")
    ax2.set_title("IQM, 95% CI", fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def line_chart(
    cmp: Comparison, xs: dict[str, float], path: str | Path, xlabel: str, title: str = ""
) -> None:
    """Score vs a numeric setting (one line per dataset, std over seeds as error bars)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    methods = sorted((m for m in cmp.methods if m.label in xs), key=lambda m: xs[m.label])
    for d in cmp.datasets:
        pts = [(xs[m.label], *m.cells[d][:2]) for m in methods if d in m.cells]
        if pts:
            arr = np.asarray(pts)
            ax.errorbar(arr[:, 0], arr[:, 1], yerr=arr[:, 2], marker="o", capsize=3, label=d)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("normalised score x100" if cmp.normalized else "return")
    ax.set_title("mean ± std over seeds (last checkpoint)", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
