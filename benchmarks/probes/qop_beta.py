"""pi_QOP (qov's AWR policy) on a dataset, by AWR temperature beta and reward normalisation.

Trains ``qov`` for ``--steps`` gradient steps per setting (1 thread) and scores its policy's
mean action (and a sample) over ``--episodes`` episodes, D4RL-normalised. This is how the
``default`` profile's ``value.beta`` and the ``normalize_rewards`` default were chosen; results
in ``benchmarks/results/qop_beta.md``.

    python benchmarks/probes/qop_beta.py --dataset hopper-medium --steps 30000 \\
        --settings '{"normalize_rewards": false}' '{}' '{"beta": 1.0}' '{"beta": 0.0}'
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ipd_plugins.data.sources import resolve_dataset
from ipd_plugins.evaluate import CallableActor, evaluate
from ipd_plugins.pipeline import context_for
from registry import create


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="hopper-medium")
    p.add_argument("--steps", type=int, default=30_000)
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settings", nargs="+", default=["{}"], help="qov config overrides (JSON)")
    args = p.parse_args()
    torch.set_num_threads(1)
    ds = resolve_dataset(args.dataset)
    ctx = context_for(ds, seed=args.seed)
    refs = (ds.ref_min_score, ds.ref_max_score) if ds.ref_min_score is not None else None
    print("| qov overrides | mean action | sampled action | train s |")
    print("|---|---|---|---|")
    for raw in args.settings:
        overrides = json.loads(raw)
        value = create("value", "qov", {"n_steps": args.steps, **overrides}, ctx)
        t0 = time.perf_counter()
        value.fit(ds)
        seconds = time.perf_counter() - t0
        cells = []
        for det in (True, False):
            actor = CallableActor(lambda o, v=value, d=det: v.act(o, deterministic=d))
            r = evaluate(actor, ds.env_id, args.episodes, seed=args.seed, ref_scores=refs)
            mean, std = (
                (r.normalized_mean, r.normalized_std) if refs else (r.mean_return, r.std_return)
            )
            cells.append(f"{mean:.1f} +- {std:.1f}")
        print(f"| `{raw}` | {cells[0]} | {cells[1]} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
