"""What a policy's training did between its curve points (issue 26, part 1).

A run scored with ``run.eval_every`` has a curve in ``results.json``; its policy stage's
``log.csv`` (in the stage cache, where ``stages.json`` points) has the training metrics every
``log_every`` steps. For each curve point this prints the mean of each metric over the steps
since the previous point, next to the score: e.g. whether ``ipd-dt``'s imitation error
(``mse``) and the Q of its actions (``q``, eq. 26) move while the score drifts::

    python benchmarks/probes/training_log.py RUN/seed_0 [RUN/seed_1 ...] \
        [--metrics mse,q] [--out FILE.md]

The run folders are the sweep's ``out`` ones (a ``record`` copy has no ``stages.json``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ipd_plugins.curve import read_log
from ipd_plugins.files import atomic_write_text


def window_means(
    log: dict[int, dict[str, float]], points: list[int], metrics: list[str]
) -> dict[int, dict[str, float | None]]:
    """For each curve step, each metric's mean over the logged steps in (previous point, step]."""
    out: dict[int, dict[str, float | None]] = {}
    logged, previous = sorted(log), 0
    for step in points:
        window = [log[s] for s in logged if previous < s <= step]
        out[step] = {}
        for key in metrics:
            values = [row[key] for row in window if key in row]
            out[step][key] = sum(values) / len(values) if values else None
        previous = step
    return out


def run_table(run_dir: Path, metrics: list[str], stage: str = "policy") -> str:
    """The markdown table of one run folder: step, the metrics' window means, the score."""
    stages = json.loads((run_dir / "stages.json").read_text())
    if stage not in stages:
        raise SystemExit(f"{run_dir}: no '{stage}' stage in stages.json")
    log_path = Path(stages[stage]["path"]) / "log.csv"
    if not log_path.exists():
        raise SystemExit(f"{run_dir}: the stage log {log_path} is gone (stage cache cleaned?)")
    results = json.loads((run_dir / "results.json").read_text())
    curve = results.get("curve") or []
    if not curve:
        raise SystemExit(f"{run_dir}: results.json has no curve (run with run.eval_every)")
    steps = [p["step"] for p in curve]
    means = window_means(read_log(log_path), steps, metrics)
    label = results.get("label") or run_dir.parent.name
    lines = [
        f"{label}, {run_dir.parent.name}/{run_dir.name} ({log_path}):",
        "",
        "| step | " + " | ".join(metrics) + " | score |",
        "|---:|" + "---:|" * (len(metrics) + 1),
    ]
    for point in curve:
        cells = [f"{v:.4g}" if v is not None else "-" for v in means[point["step"]].values()]
        score = point.get("normalized_mean")
        cells.append(f"{score:.1f}" if score is not None else "-")
        lines.append(f"| {point['step']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="seed folders of curve runs")
    parser.add_argument("--metrics", default="mse,q", help="comma-separated log.csv keys")
    parser.add_argument("--stage", default="policy", help="the stage whose log is read")
    parser.add_argument("--out", type=Path, help="markdown file (default: print)")
    args = parser.parse_args()
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if not metrics:
        parser.error("--metrics: name at least one log.csv key")
    text = "\n\n".join(run_table(run, metrics, args.stage) for run in args.runs) + "\n"
    if args.out:
        atomic_write_text(args.out, text)
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
