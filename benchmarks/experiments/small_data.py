"""Issue 27: the distilled policy on small, good datasets (the best N episodes of a made one).

For each dataset subset and seed: d3rlpy's BC, pi_QOP (the value stage's AWR policy, scored by
every IPD run) and ``ipd-dt`` under a list of variants that each test one suspected cause. All
runs share the stage cache, so a variant that changes only the policy retrains only the policy.
Results (one JSON line per run) go to ``--out``/records.jsonl and a table to ``--table``.

    python benchmarks/experiments/small_data.py --datasets hopper-medium --best 5 \
        --profile quick --seeds 0 --threads 1 --out benchmarks/work/small
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

#: name -> (what it tests, --set overrides on top of the profile)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "default": ("eq. 26 as the profile runs it", []),
    "alpha0": ("the Q term pulling actions off the data", ["policy.alpha=0"]),
    "window": ("the timestep embedding keyed to memorised episodes", ["policy.position=window"]),
    "noaug": ("the imagined segments", ["augment.n_aug=0"]),
    "dropout": ("overfitting a few trajectories", ["policy.dropout=0.1"]),
    "context1": ("the sequence itself (one step of context)", ["policy.context=1"]),
    "return": ("the V token (trained on returns-to-go)", ["policy.train_token=return"]),
    "alpha0.1": ("a weaker Q term", ["policy.alpha=0.1"]),
    "alpha0.3": ("a weaker Q term", ["policy.alpha=0.3"]),
    "alpha0-window": ("both", ["policy.alpha=0", "policy.position=window"]),
    "alpha0-noaug": ("no Q term, no imagined data", ["policy.alpha=0", "augment.n_aug=0"]),
    "bc-like": (
        "a DT with nothing of IPD (no Q term, no imagined data, no absolute time)",
        ["policy.alpha=0", "augment.n_aug=0", "policy.position=window"],
    ),
    "noaug-window": (
        "no imagined data, no absolute time",
        ["augment.n_aug=0", "policy.position=window"],
    ),
    "steps3x": ("underfitting (3x the policy steps)", ["policy.n_steps=4500"]),
    "noact": ("the logged (noisy) past actions in the context", ["policy.past_actions=false"]),
    "noact-alpha0": ("both", ["policy.past_actions=false", "policy.alpha=0"]),
}


def subset_id(name: str, best: int) -> str:
    from ipd_plugins.data.make import dataset_id

    base = dataset_id(name)  # ipd/<task>/medium-v0
    prefix, _, version = base.rpartition("-")
    return f"{prefix}-best{best}-{version}"


def make_subset(name: str, best: int) -> str:
    """The ``best`` highest-return episodes of made dataset ``name`` in the Minari store."""
    from ipd_plugins.data.minari_io import minari_local_ids, to_minari
    from ipd_plugins.data.sources import resolve_dataset

    sid = subset_id(name, best)
    if sid not in minari_local_ids():
        ds = resolve_dataset(name)
        keep = np.sort(np.argsort(-ds.episode_returns(), kind="stable")[:best])
        sub = ds.select_episodes(keep).replace(name=f"{ds.name}-best{best}")
        to_minari(sub, sid, description=f"the {best} best episodes of {name}")
    return sid


def record(out: Path, row: dict) -> None:
    with (out / "records.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")


def done(out: Path) -> set[tuple]:
    path = out / "records.jsonl"
    if not path.exists():
        return set()
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["dataset"], r["method"], r["seed"], r["profile"]) for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="hopper-medium,walker2d-medium")
    ap.add_argument("--best", type=int, default=5)
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--extra", action="append", default=[], help="--set for every IPD run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/work/small_data")
    args = ap.parse_args()

    import torch

    from ipd_plugins.baselines.run import run_baseline
    from ipd_plugins.pipeline import run_pipeline
    from ipd_plugins.run_config import parse_overrides, resolve_config

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs_dir = str(out / "runs")

    def echo(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    finished = done(out)
    for name in args.datasets.split(","):
        sid = make_subset(name, args.best)
        for seed in [int(s) for s in args.seeds.split(",")]:
            run = {"dataset": sid, "seed": seed, "profile": args.profile, "out_dir": runs_dir}
            run["threads"] = args.threads
            if (sid, "bc", seed, args.profile) not in finished:
                t0 = time.time()
                res = run_baseline("bc", run=run, echo=echo)
                s = res["scores"]["policy"]
                record(
                    out,
                    dict(
                        dataset=sid,
                        method="bc",
                        seed=seed,
                        profile=args.profile,
                        score=s["normalized_mean"],
                        std=s["normalized_std"],
                        lengths=s["lengths"],
                        seconds=time.time() - t0,
                    ),
                )
            for variant in args.variants.split(","):
                method = f"ipd-{variant}"
                if (sid, method, seed, args.profile) in finished:
                    continue
                pairs = VARIANTS[variant][1] + args.extra
                cfg = resolve_config(run=run, overrides=parse_overrides(pairs))
                t0 = time.time()
                res = run_pipeline(cfg, echo=echo, progress=False)
                s, q = res["scores"]["policy"], res["scores"]["qop"]
                policy_metrics = json.loads((cfg.run_dir / "stages.json").read_text())["policy"]
                record(
                    out,
                    dict(
                        dataset=sid,
                        method=method,
                        seed=seed,
                        profile=args.profile,
                        score=s["normalized_mean"],
                        std=s["normalized_std"],
                        lengths=s["lengths"],
                        qop=q["normalized_mean"],
                        qop_std=q["normalized_std"],
                        sets=pairs,
                        train=policy_metrics.get("metrics", {}),
                        imagined=res["augment"].get("imagined_steps_kept", 0),
                        seconds=time.time() - t0,
                    ),
                )
                echo(
                    f"== {sid} seed {seed} {method}: {s['normalized_mean']:.1f} "
                    f"(qop {q['normalized_mean']:.1f})"
                )


if __name__ == "__main__":
    main()
