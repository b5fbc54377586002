"""Does a trained ``ipd-dt`` policy listen to its V(s) token?

A return-to-go token carries information the state does not (how much return is asked for), so
DT's behaviour moves with it (paper fig. 3). V(s_t) is a function of the state the policy also
sees, so the network may learn to ignore it. This evaluates one finished ``ipd run`` policy
with the conditioning token replaced:

* ``V(s)``: what IPD feeds (the run's own score);
* ``V(s) + k std``: every token shifted by k standard deviations of V over the dataset;
* ``mean V``: a constant token, no information at all.

If the scores barely move, the token is inert and the policy is a state-conditioned imitator
plus the Q term. Same evaluation episodes and seeds as ``ipd run``.

    python benchmarks/probes/v_token_probe.py RUN_DIR [--shifts=-2,-1,1,2] [--episodes 10] \\
        [--out FILE.md]
"""

from __future__ import annotations

import argparse
import json

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="an `ipd run` seed folder trained with policy ipd-dt")
    parser.add_argument(
        "--shifts",
        default="-2,-1,1,2",
        help="token shifts in std of V (write --shifts=-2,1 for negative ones)",
    )
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="append a Markdown section to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from ipd_plugins.data.runs import load_trained
    from ipd_plugins.evaluate import score
    from ipd_plugins.policies.base import SequenceActor

    run = load_trained(args.run_dir)
    cfg, ds, ctx = run.cfg, run.dataset, run.ctx
    if cfg.components["policy"] != "ipd-dt":
        raise SystemExit(f"{args.run_dir}: policy is {cfg.components['policy']!r}, not 'ipd-dt'")
    value, policy = run.components["value"], run.components["policy"]
    net = policy.net
    shift, scale = float(net.cond_shift), float(net.cond_scale)  # mean and std of V over data

    def score_with(conditioning) -> dict:
        actor = SequenceActor(net, conditioning, device="cpu")
        return score(actor, ctx.env_id, args.episodes, cfg.run.seed, ds).to_dict()

    variants = {"V(s)": lambda obs: value.v(obs)}
    for k in [float(x) for x in args.shifts.split(",") if x]:
        offset = policy.token_offset(k)  # what `--set policy.token_shift=k` adds
        variants[f"V(s) {k:+g} std"] = lambda obs, o=offset: value.v(obs) + o
    variants["mean V (constant)"] = lambda obs: torch.full((obs.shape[0],), shift)

    rows = {}
    for name, fn in variants.items():
        rows[name] = score_with(fn)
        r = rows[name]
        print(f"{name:>20}: {r.get('normalized_mean')} +- {r.get('normalized_std')}", flush=True)
    print(json.dumps({"run": args.run_dir, "std_of_v": scale, "scores": rows}, indent=1)[:2000])
    if args.out:
        lines = [
            f"\n## {cfg.run.dataset}, `{args.run_dir}`\n",
            f"V over the dataset: mean {shift:.1f}, std {scale:.1f}. {args.episodes} episodes "
            "per row, the run's evaluation seeds.\n",
            "| conditioning token | normalised |",
            "|---|---:|",
        ]
        for name, r in rows.items():
            lines.append(f"| {name} | {r['normalized_mean']:.1f} +- {r['normalized_std']:.1f} |")
        with open(args.out, "a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
