"""How a trained ``gtp`` acts best: K solution-map steps (eq. 15) or Euler steps of its
instantaneous map (issue 23).

A short run trains the denoiser (the flow loss, eq. 18) faster than the consistency-trained
solution map that few-step acting relies on (benchmarks/results/gtp_speed.md, pendulum). This
re-evaluates finished `ipd run --policy gtp` seed folders with other samplers, no retraining:
K = 1, 2, 5, 10 solution-map steps, and 10 and 40 Euler steps of the instantaneous map
(``gtp_impl.euler_actions``). Same evaluator, episodes and seeds as the run's own evaluation;
one JSON line per (run, sampler) is appended to ``--out``.

    python benchmarks/probes/gtp_acting.py RUN_DIR... --out benchmarks/results/gtp/acting.jsonl
    python benchmarks/probes/gtp_acting.py --table benchmarks/results/gtp/acting.jsonl

``--table`` prints the markdown table (mean +- std over seeds per dataset, method and
sampler; nothing runs). The same evaluations one run at a time: ``ipd eval RUN --set
policy.sampler=euler --set policy.euler_steps=10`` (or ``--set policy.sample_steps=5``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch

from ipd_plugins.compare import mean_std

SAMPLERS = (("map", 1), ("map", 2), ("map", 5), ("map", 10), ("euler", 10), ("euler", 40))


def actor(policy, kind: str, k: int):
    """The trained policy acting with ``k`` steps of ``kind`` ("map": eq. 15; "euler")."""
    steps = {"sample_steps": k} if kind == "map" else {"euler_steps": k}
    return policy.acting_as(sampler=kind, **steps).actor(None)


def table(rows: list[dict]) -> str:
    """Markdown: per (dataset, method) the seeds' mean +- std of every sampler."""
    cells: dict = defaultdict(lambda: defaultdict(dict))  # (dataset, label) -> sampler -> seed
    for r in rows:
        folder, seed = Path(r["run"]).parent.name, Path(r["run"]).name
        cells[folder.split("__")[0], r["label"]][r["sampler"], r["k"]][seed] = r["normalized_mean"]
    head = [f"{kind} {k}" for kind, k in SAMPLERS]
    out = ["| dataset | method | seeds | " + " | ".join(head) + " |"]
    out.append("|---|---|---:|" + "---:|" * len(head))
    for (dataset, label), by_sampler in sorted(cells.items()):
        seeds = sorted({s for v in by_sampler.values() for s in v})
        row = []
        for key in SAMPLERS:
            vals = [by_sampler[key][s] for s in seeds if s in by_sampler[key]]
            row.append(mean_std(vals))
        nums = ", ".join(s.removeprefix("seed_") for s in seeds)
        out.append(f"| {dataset} | {label} | {nums} | " + " | ".join(row) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", help="finished `ipd run --policy gtp` seed folders")
    ap.add_argument("--table", nargs="+", metavar="JSONL", help="print the table of these rows")
    ap.add_argument("--episodes", type=int, help="default: the run's eval_episodes")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="JSON lines, appended")
    args = ap.parse_args()
    if args.table:
        print(table([json.loads(line) for f in args.table for line in open(f) if line.strip()]))
        return
    if not args.runs or not args.out:
        ap.error("give run folders and --out (or --table JSONL...)")
    torch.set_num_threads(args.threads)

    from ipd_plugins.compare import method_label
    from ipd_plugins.data.runs import load_trained
    from ipd_plugins.evaluate import score

    for run in args.runs:
        trained = load_trained(run, kinds=("policy",), echo=lambda s: None)
        policy, cfg, ds = trained.components["policy"], trained.cfg, trained.dataset
        if cfg.components["policy"] != "gtp":
            raise SystemExit(f"{run}: policy is {cfg.components['policy']!r}, not 'gtp'")
        episodes = args.episodes or cfg.run.eval_episodes
        label = method_label(json.loads((Path(run) / "results.json").read_text()))
        for kind, k in SAMPLERS:
            t0 = time.perf_counter()
            r = score(actor(policy, kind, k), ds.env_id, episodes, cfg.run.seed, ds)
            row = {
                "run": str(Path(run).resolve()),
                "label": label,
                "trained_k": policy.cfg.sample_steps,
                "sampler": kind,
                "k": k,
                "episodes": episodes,
                "normalized_mean": r.normalized_mean,
                "normalized_std": r.normalized_std,
                "seconds": round(time.perf_counter() - t0, 1),
            }
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
