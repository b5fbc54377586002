"""With and without `dwm` (issue 24): re-evaluate finished runs with the adapter, no retraining.

For each run folder (an `ipd run` or `ipd baseline` seed folder) and each step size, runs
``ipd eval RUN --adapter dwm --set adapter.lr=LR [--actor ...]`` and appends one JSON line per
(run, actor, lr) to ``--out``; the run's own ``eval.json`` is the "without" row (lr 0 in the
table). A (run, lr, options, actors) already in ``--out`` is not evaluated again, so rerunning the
same command resumes. Choose the step size on one seed and report it on the others::

    python benchmarks/experiments/dwm_scores.py --runs runs/<run>/seed_0 \
        --lrs 1e-5,5e-5,2e-4 --actor qop --out benchmarks/results/dwm/tune.jsonl
    python benchmarks/experiments/dwm_scores.py --runs runs/<run>/seed_1 runs/<run>/seed_2 \
        --lrs 5e-5 --actor qop --out benchmarks/results/dwm/report.jsonl
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def evaluate(run: Path, lr: float, actors: list[str], extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "ipd_plugins.commands", "eval", str(run), "--adapter", "dwm"]
    cmd += ["--set", f"adapter.lr={lr}", *(a for x in actors for a in ("--actor", x))]
    for item in extra:
        cmd += ["--set", item]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    path = Path(next(line for line in out.splitlines() if line.startswith("scores: "))[8:])
    return {"file": str(path), "seconds": time.perf_counter() - t0, **json.loads(path.read_text())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", nargs="+", required=True, help="finished seed folders")
    ap.add_argument("--lrs", required=True, help="comma-separated adapter.lr values")
    ap.add_argument("--actor", action="append", default=[], choices=["policy", "qop"],
                    help="`ipd run` folders: only these actors (default: the run's)")  # fmt: skip
    ap.add_argument("--set", action="append", default=[], metavar="adapter.KEY=VALUE")
    ap.add_argument("--out", required=True, help="JSON lines, appended")
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.is_file():
        for line in out.read_text().splitlines():
            row = json.loads(line)
            done.add((row["run"], row["lr"], tuple(row["options"]), tuple(row["actors"])))
    for run in map(Path, args.runs):
        plain = json.loads((run / "eval.json").read_text())
        for lr in (float(x) for x in args.lrs.split(",")):
            if (str(run), lr, tuple(args.set), tuple(args.actor)) in done:
                continue
            scores = evaluate(run, lr, args.actor, args.set)
            for actor, result in scores.items():
                if actor in ("file", "seconds"):
                    continue
                row = {
                    "run": str(run),
                    "actor": actor,
                    "lr": lr,
                    "options": args.set,
                    "actors": args.actor,
                    "without": plain[actor]["normalized_mean"],
                    "with": result["normalized_mean"],
                    "with_std": result["normalized_std"],
                    "adaptation": result.get("adaptation"),
                    "seconds": scores["seconds"],
                    "file": scores["file"],
                }
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"{run} {actor} lr={lr:g}: {row['without']:.1f} -> {row['with']:.1f} "
                      f"({scores['seconds']:.0f} s)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
