"""Train the SAC behaviour policies behind the D4RL-style datasets (``ipd data make``).

One process, one thread, environments one after another; resumable: re-run the same command
and each run continues from its last checkpoint (finished runs are skipped). Snapshots land in
``WORK/<env>/snapshots/`` with their evaluation returns in ``WORK/<env>/snapshots.jsonl``;
``benchmarks/tools/ship_behavior.py`` then copies the chosen ones into the package.

    nohup python benchmarks/tools/train_behavior.py --work /work/behavior_runs \\
        hopper halfcheetah walker2d > /work/behavior_runs/train.log 2>&1 &

Each run stops once a snapshot's stochastic return passes the top of the D4RL "medium" band
(normalised: hopper 55, walker2d 75, halfcheetah 45), or at its step budget.
"""

from __future__ import annotations

import argparse

import torch

from ipd_plugins.data.envs import ref_scores
from ipd_plugins.data.sac import SACConfig, train_sac

# env id, step budget, top of the medium band (D4RL-normalised)
RUNS = {
    "hopper": ("Hopper-v5", 400_000, 55.0),
    "walker2d": ("Walker2d-v5", 500_000, 75.0),
    "halfcheetah": ("HalfCheetah-v5", 300_000, 45.0),
}


def stop_return(env: str, normalised: float) -> float:
    """The return at D4RL-normalised score ``normalised`` (reference returns of d4rl/infos.py)."""
    lo, hi = ref_scores(RUNS[env][0])
    return lo + normalised / 100.0 * (hi - lo)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("envs", nargs="*", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--work", default="/work/behavior_runs", help="run folders go here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="override the step budget")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for env in args.envs:
        env_id, budget, top = RUNS[env]
        cfg = SACConfig(
            env_id=env_id,
            total_steps=args.steps or budget,
            stop_return=stop_return(env, top),
            seed=args.seed,
        )
        rows = train_sac(cfg, f"{args.work}/{env}")
        if rows:
            last = rows[-1]
            print(
                f"[{env}] finished at step {last['step']}: "
                f"stoch return {last['eval_return_stoch']:.1f}"
            )


if __name__ == "__main__":
    main()
