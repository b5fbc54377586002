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

``--table FILE.jsonl ...`` writes the with/without table instead (nothing runs): per dataset and
actor, the step size that scored best on the tuning seed (the lowest seed evaluated with more
than one step size), then every other seed at that step size: mean +- std over seeds without
and with the adapter, and the change::

    python benchmarks/experiments/dwm_scores.py --table benchmarks/results/dwm/*.jsonl \
        --out benchmarks/results/dwm_table.md

``--report-seeds 10,11,12`` keeps only those seeds in the report columns, and the rows that
have them (score table v2's fresh seeds, next to the tuning seeds' choices). A dataset with no
tuning seed, evaluated at one step size, is then reported at it as "not tuned".
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from ipd_plugins.compare import mean_std


def evaluate(run: Path, lr: float, actors: list[str], extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "ipd_plugins.commands", "eval", str(run), "--adapter", "dwm"]
    cmd += ["--set", f"adapter.lr={lr}", *(a for x in actors for a in ("--actor", x))]
    for item in extra:
        cmd += ["--set", item]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    path = Path(next(line for line in out.splitlines() if line.startswith("scores: "))[8:])
    return {"file": str(path), "seconds": time.perf_counter() - t0, **json.loads(path.read_text())}


def _key(row: dict) -> tuple:
    return row["run"], row["lr"], tuple(row["options"]), tuple(row["actors"])


@contextlib.contextmanager
def _locked(out: Path):
    """Hold an exclusive lock on ``OUT.lock`` (concurrent commands appending to one file)."""
    with open(f"{out}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in out.read_text().splitlines() if x] if out.is_file() else []


def _where(run: str) -> tuple[str, str, int]:
    """(dataset, method, seed) of a seed folder ``.../<dataset>__<method>__<hash>/seed_<k>``."""
    folder, seed = Path(run).parent.name, Path(run).name
    dataset, method = folder.split("__")[:2]
    return dataset, method, int(re.sub(r"\D", "", seed) or 0)


def table(rows: list[dict], report: set[int] | None = None) -> str:
    """The with/without markdown table of :func:`main`'s rows (see the module docstring).

    ``report``: only these seeds in the report columns (e.g. table v2's fresh seeds), and only
    the rows that have them; a (dataset, actor) with no tuning seed, evaluated at one step size,
    is then reported at it and says so ("not tuned")."""
    cells: dict = defaultdict(lambda: defaultdict(dict))  # (dataset, actor) -> seed -> lr -> row
    for row in rows:
        dataset, method, seed = _where(row["run"])
        actor = "pi_QOP" if row["actor"] == "qop" else method.removeprefix("baseline-")
        if row["actor"] == "policy" and not method.startswith("baseline-"):
            actor = "ipd-dt"
        opts = ", ".join(row["options"])
        cells[dataset, actor + (f" ({opts})" if opts else "")][seed][row["lr"]] = row
    lines = [
        "| dataset | actor | lr (tuning seed) | tuning seed: without -> with | seeds | without "
        "| with | change |",
        "|---|---|---:|---|---|---:|---:|---:|",
    ]
    for (dataset, actor), seeds in sorted(cells.items()):
        tuned = [s for s in sorted(seeds) if len(seeds[s]) > 1]
        lrs = {lr for by_lr in seeds.values() for lr in by_lr}
        if tuned:
            t = tuned[0]
            lr, best = max(seeds[t].items(), key=lambda kv: kv[1]["with"])
            tuning = f"{best['without']:.1f} -> {best['with']:.1f}"
        elif report is not None and len(lrs) == 1:
            (lr,), t, tuning = lrs, None, "not tuned"
        else:
            continue
        others = [s for s in sorted(seeds) if s != t and lr in seeds[s]]
        if report is not None:
            others = [s for s in others if s in report]
            if not others:
                continue
        base = [seeds[s][lr]["without"] for s in others]
        adapted = [seeds[s][lr]["with"] for s in others]
        delta = [a - b for a, b in zip(adapted, base, strict=True)]

        lines.append(
            f"| {dataset} | {actor} | {lr:g} | {tuning} | "
            f"{', '.join(map(str, others)) or '-'} | {mean_std(base)} | {mean_std(adapted)} | "
            f"{mean_std(delta)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--table", nargs="+", metavar="JSONL", help="write the table of these rows")
    ap.add_argument("--runs", nargs="+", help="finished seed folders")
    ap.add_argument("--lrs", help="comma-separated adapter.lr values")
    ap.add_argument("--actor", action="append", default=[], choices=["policy", "qop"],
                    help="`ipd run` folders: only these actors (default: the run's)")  # fmt: skip
    ap.add_argument("--set", action="append", default=[], metavar="adapter.KEY=VALUE")
    ap.add_argument("--out", required=True, help="JSON lines, appended (--table: markdown)")
    ap.add_argument("--report-seeds", metavar="S,S,...",
                    help="--table: only these seeds in the report columns")  # fmt: skip
    args = ap.parse_args()
    if args.table:
        rows = [json.loads(x) for f in args.table for x in Path(f).read_text().splitlines() if x]
        report = None
        if args.report_seeds:
            report = {int(x) for x in args.report_seeds.split(",") if x.strip()}
        Path(args.out).write_text(table(rows, report))
        print(f"wrote {args.out}")
        return
    if not args.runs or not args.lrs:
        ap.error("--runs and --lrs are required (or --table)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    missing = [str(r) for r in map(Path, args.runs) if not (r / "eval.json").is_file()]
    if missing:  # checked before any evaluation starts
        ap.error(
            f"not finished run folders (no eval.json): {', '.join(missing)}. A sweep's `record` "
            "copy holds only config.yaml and results.json: pass the folder under the sweep's `out`."
        )
    for run in map(Path, args.runs):
        plain = json.loads((run / "eval.json").read_text())
        for lr in (float(x) for x in args.lrs.split(",")):
            key = (str(run), lr, tuple(args.set), tuple(args.actor))
            with _locked(out):  # read now: another command may have evaluated it meanwhile
                if key in set(map(_key, _rows(out))):
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
                with _locked(out):
                    if (_key(row), actor) in {(_key(r), r["actor"]) for r in _rows(out)}:
                        continue  # written by a concurrent command while this one evaluated
                    with out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                print(f"{run} {actor} lr={lr:g}: {row['without']:.1f} -> {row['with']:.1f} "
                      f"({scores['seconds']:.0f} s)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
