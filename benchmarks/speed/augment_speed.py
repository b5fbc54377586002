"""Imaginary augmentation throughput: world-model transitions simulated per second.

Counts every imagined transition: the identification rollouts (H_I per candidate) and every
MPC candidate rollout (N_mpc x H_m per planning step) plus the kept rollout steps. Models are
at the paper's sizes (qov 2x256; pe E=3 x 4x400 with LayerNorm + a reward model of the same
shape); their weights do not change the cost, so they are trained only for a few steps.

    python benchmarks/speed/augment_speed.py --dataset hopper-medium --episodes 20 --threads 2

Writes benchmarks/results/augment_speed.md (with --write). Issue 5's target: >= 10,000
simulated transitions/s on 2 CPU cores (one transition ~ 6 MFLOP at these sizes).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from ipd_plugins.augment import AugmentConfig, augment
from ipd_plugins.data.sources import resolve_dataset
from ipd_plugins.pipeline import context_for
from ipd_plugins.uncertainty.reliable import calibrate_kappa
from registry import create


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="hopper-medium")
    p.add_argument("--episodes", type=int, default=20, help="episodes augmented (max_episodes)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--chunk-size", type=int, default=4096)
    p.add_argument("--step-dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--write", action="store_true", help="write benchmarks/results/augment_speed.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    ds = resolve_dataset(args.dataset)
    ctx = context_for(ds, seed=0)
    value = create("value", "qov", {"n_steps": 10}, ctx)
    value.fit(ds)
    world_model = create("world_model", "pe", {"n_steps": 10, "step_dtype": args.step_dtype}, ctx)
    world_model.fit(ds)
    uncertainty = create("uncertainty", "gjs", {}, ctx)
    kappa, _ = calibrate_kappa(ds, world_model, uncertainty, n_pairs=20_000)
    planner = create("planner", "mpc", {}, ctx)
    cfg = AugmentConfig(max_episodes=args.episodes, chunk_size=args.chunk_size)
    t0 = time.perf_counter()
    res = augment(ds, value, world_model, uncertainty, planner, kappa, cfg, seed=0)
    wall = time.perf_counter() - t0
    r = res.report
    ident_rate = r["identification_transitions"] / r["identification_seconds"]
    mpc_sim = r["planner_transitions"] + r["rollout_transitions"]
    mpc_rate = mpc_sim / r["rollout_seconds"]
    total_rate = r["simulated_transitions"] / wall
    kept_rate = r["imagined_steps_kept"] / wall
    lines = [
        f"dataset {args.dataset}: {ds.n_steps} steps, {ds.n_episodes} episodes; "
        f"augmented {args.episodes} episodes (N_aug 1, H_I 10, H_m 10, N_mpc 3)",
        f"candidates {r['candidates']}, selected {r['selected']}, kept {r['imagined_steps_kept']} "
        f"imagined steps ({r['cut_by_uncertainty']} cut by uncertainty, "
        f"{r['ended_by_termination']} ended by termination)",
        f"identification: {r['identification_transitions']:,} transitions in "
        f"{r['identification_seconds']:.1f} s = {ident_rate:,.0f}/s",
        f"MPC rollouts:   {mpc_sim:,} transitions in {r['rollout_seconds']:.1f} s = "
        f"{mpc_rate:,.0f}/s",
        f"whole:          {r['simulated_transitions']:,} simulated in {wall:.1f} s = "
        f"{total_rate:,.0f}/s; kept imagined transitions {kept_rate:,.0f}/s",
    ]
    print("\n".join(lines))
    if args.write:
        # whole-dataset wall time, extrapolated linearly in the number of episodes
        scale = ds.n_episodes / args.episodes
        out = Path(__file__).resolve().parents[1] / "results" / "augment_speed.md"
        text = (
            "# Augmentation throughput (issue 5)\n\n"
            f"Command: `python benchmarks/speed/augment_speed.py --dataset {args.dataset} "
            f"--episodes {args.episodes} --threads {args.threads} --step-dtype {args.step_dtype} "
            f"--write`\n\nMachine: {platform.machine()}, {args.threads} torch threads, "
            f"torch {torch.__version__}; see the note on load below.\n\n```\n"
            + "\n".join(lines)
            + "\n```\n\n"
            f"Extrapolated to all {ds.n_episodes} episodes of {args.dataset} (linear in "
            f"episodes): identification {r['identification_seconds'] * scale / 60:.1f} min, "
            f"MPC {r['rollout_seconds'] * scale / 60:.1f} min, whole {wall * scale / 60:.1f} min.\n"
        )
        out.write_text(text)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
