"""How far a trained sequence policy's actions sit from the data, and what Q says of them.

For each `ipd run` seed folder: teacher-forced predictions (the logged window before each step,
the conditioning token the policy was trained with) on (a) its training episodes and (b)
held-out episodes of a second source; the mean squared error to the logged actions, and
Q(s, pi) - Q(s, a_logged) in units of mean|Q| (the scale eq. 26's lambda divides by).

    python benchmarks/probes/action_error.py RUN_DIR... --heldout ipd/hopper/medium-v0 \
        --heldout-episodes 6:10
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch


def windows_error(policy, value, ds, batch: int = 512) -> dict[str, float]:
    from ipd_plugins.policies.sequence_data import SequenceSampler

    raw = policy.raw_conditioning(ds, value)
    net = policy.net
    cond = (raw - float(net.cond_shift)) / float(net.cond_scale)
    sampler = SequenceSampler(ds, cond.astype(np.float32), net.model.context)
    errs, gaps, qabs = [], [], []
    net.eval()
    with torch.inference_mode():
        for lo in range(0, ds.n_steps, batch):
            end = torch.arange(lo, min(lo + batch, ds.n_steps))
            w = sampler.window(end)
            act_in = w["act"].clone()
            act_in[:, -1] = 0.0  # the current action is what is predicted
            pred = net(w["obs"], act_in, w["cond"], w["mask"], w["timestep"])[:, -1]
            target, obs = w["act"][:, -1], w["obs"][:, -1]
            errs.append(((pred - target) ** 2).mean(-1))
            q_pi, q_a = value.q(obs, pred), value.q(obs, target)
            gaps.append(q_pi - q_a)
            qabs.append(q_a.abs())
    err, gap, scale = torch.cat(errs), torch.cat(gaps), torch.cat(qabs).mean()
    return {"mse": float(err.mean()), "q_gap": float(gap.mean() / scale)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--heldout", help="source of held-out episodes")
    ap.add_argument("--heldout-episodes", default="5:10", help="rank range by return, e.g. 5:10")
    args = ap.parse_args()
    from ipd_plugins.data.runs import load_trained
    from ipd_plugins.data.sources import resolve_dataset

    torch.set_num_threads(1)
    held = None
    if args.heldout:
        full = resolve_dataset(args.heldout)
        lo, hi = (int(x) for x in args.heldout_episodes.split(":"))
        order = np.argsort(-full.episode_returns(), kind="stable")[lo:hi]
        held = full.select_episodes(np.sort(order))
    for run_dir in args.runs:
        trained = load_trained(run_dir, echo=lambda m: None)
        value, policy = trained.components["value"], trained.components["policy"]
        row = {"run": run_dir, "train": windows_error(policy, value, trained.dataset)}
        if held is not None:
            row["heldout"] = windows_error(policy, value, held)
        print(json.dumps(row))


if __name__ == "__main__":
    main()
