"""N `ipd run --profile quick` started at the same moment, against one alone (issue 21).

Each run gets its own output folder (no shared stage cache), the same dataset and seed, so all
do identical work. For N = 1, 2, 3 (``--counts``) the table gives each batch's wall time, the
slowest run's, and the slowdown against one run alone; with ``--threads`` every run is forced to
that many threads instead of the default rule (``run.threads`` unset), which shows what the
rule avoids. Run it on an otherwise idle machine: other work counts as load.

    python benchmarks/speed/concurrent_runs.py --counts 1,2,3 \
        --out benchmarks/results/concurrent_runs.md
    python benchmarks/speed/concurrent_runs.py --counts 2 --threads 2 --append --out ...
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def launch(n: int, threads: int | None, profile: str, work: Path) -> list[dict]:
    """Start ``n`` runs at once; wait for all; per-run wall time and threads used."""
    procs = []
    for i in range(n):
        out = work / f"n{n}_t{threads or 'rule'}_{i}"
        cmd = [sys.executable, "-m", "ipd_plugins.commands", "run", "--profile", profile,
               "--out", str(out)]  # fmt: skip
        if threads:
            cmd += ["--threads", str(threads)]
        log = open(work / f"{out.name}.log", "w")
        procs.append((out, log, time.perf_counter(), subprocess.Popen(cmd, stdout=log, stderr=log)))
    rows = []
    for out, log, t0, proc in procs:
        rc = proc.wait()
        log.close()
        text = (work / f"{out.name}.log").read_text()
        if rc != 0:
            raise SystemExit(f"run {out} failed ({rc}):\n{text[-2000:]}")
        used = next((ln for ln in text.splitlines() if "torch thread" in ln), "")
        results = json.loads(next(out.rglob("results.json")).read_text())
        rows.append({
            "wall": time.perf_counter() - t0,
            "threads": used.rsplit("(", 1)[-1].split()[0] if used else "?",
            "stages": results["stage_seconds"],
        })  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", default="1,2,3")
    ap.add_argument("--threads", type=int, default=None, help="force run.threads (default: rule)")
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--out", default="benchmarks/results/concurrent_runs.md")
    ap.add_argument("--append", action="store_true", help="add rows to an existing table")
    args = ap.parse_args()

    from ipd_plugins.hardware import machine_summary

    # make the profile's dataset once, so that the timed runs only read it
    from ipd_plugins.profiles import DEFAULT_DATASET

    subprocess.run([sys.executable, "-m", "ipd_plugins.commands", "data", "make",
                    DEFAULT_DATASET[args.profile]], check=False, capture_output=True)  # fmt: skip
    lines = []
    if not args.append:
        lines += [
            "# Concurrent `ipd run` (issue 21)",
            "",
            f"Machine: {machine_summary()}. Command: `python benchmarks/speed/concurrent_runs.py "
            f"--counts {args.counts}` (`--profile {args.profile}`, identical runs, own folders).",
            "",
            "| runs at once | threads | threads each run took | wall of the batch (s) | "
            "slowest run (s) | slowdown vs one alone |",
            "|---:|---|---|---:|---:|---:|",
        ]
    solo = None
    with tempfile.TemporaryDirectory(prefix="ipd-concurrent-") as tmp:
        for n in (int(c) for c in args.counts.split(",")):
            t0 = time.perf_counter()
            rows = launch(n, args.threads, args.profile, Path(tmp))
            batch = time.perf_counter() - t0
            slowest = max(r["wall"] for r in rows)
            if n == 1:
                solo = slowest
            ratio = f"{slowest / solo:.2f}x" if solo else "-"
            used = ", ".join(r["threads"] for r in rows)
            line = (f"| {n} | {args.threads or 'rule'} | {used} | {batch:.0f} | {slowest:.0f} | "
                    f"{ratio} |")  # fmt: skip
            print(line, flush=True)
            lines.append(line)
    out = Path(args.out)
    text = out.read_text() if args.append and out.exists() else ""
    out.write_text(text + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
