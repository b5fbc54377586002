"""What the conditioning token does while a trained ``ipd-dt`` acts (issue 27).

For each `ipd run` seed folder: the policy's training tokens (their range), then evaluation
episodes with the token fed four ways -- V(s_t) as trained ("v"), a constant at the training
mean ("mean"), V(s_t) clamped to the training range ("clamp"), and V(s_t) + 1 training std
("plus1") -- with the score, the episode lengths and the token's range along the episodes.
If the score moves with the token, the token is what acting depends on; if a constant does as
well as V(s_t), the policy ignores it.

    python benchmarks/probes/token_at_acting.py RUN_DIR... --episodes 10
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch


def token_feed(value, mode: str, shift: float, scale: float, bounds, seen: list):
    """The raw token an actor feeds under ``mode``; records V(s_t) of every step in ``seen``."""

    def conditioning(obs: torch.Tensor) -> torch.Tensor:
        v = value.v(obs)
        seen.append(v.detach().clone())
        if mode == "mean":
            return torch.full_like(v, shift)
        if mode == "clamp":
            return v.clamp(*bounds)
        if mode == "plus1":
            return v + scale
        return v

    return conditioning


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--modes", default="v,mean,clamp,plus1")
    args = ap.parse_args()
    from ipd_plugins.data.runs import load_trained
    from ipd_plugins.evaluate import score
    from ipd_plugins.policies.base import SequenceActor

    torch.set_num_threads(1)
    for run_dir in args.runs:
        trained = load_trained(run_dir, echo=lambda m: None)
        value, policy = trained.components["value"], trained.components["policy"]
        net = policy.net
        shift, scale = float(net.cond_shift), float(net.cond_scale)
        raw = policy.raw_conditioning(trained.dataset, value)
        lo, hi = float(raw.min()), float(raw.max())
        row = {"run": run_dir, "train_token": {"shift": shift, "scale": scale, "min": lo,
                                               "max": hi}}  # fmt: skip
        for mode in args.modes.split(","):
            seen: list[torch.Tensor] = []
            conditioning = token_feed(value, mode, shift, scale, (lo, hi), seen)
            actor = SequenceActor(net, conditioning, device=policy.device)
            res = score(actor, trained.ctx.env_id, args.episodes, trained.cfg.run.seed,
                        trained.dataset)  # fmt: skip
            v_seen = torch.cat(seen).float().numpy()
            row[mode] = {
                "score": res.normalized_mean,
                "lengths": list(res.lengths),
                "v_min": float(v_seen.min()),
                "v_p05": float(np.percentile(v_seen, 5)),
                "v_median": float(np.median(v_seen)),
                "below_train_min": float(np.mean(v_seen < lo)),
            }
            print(json.dumps({"run": run_dir, mode: row[mode]}), flush=True)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
