"""Does a trained ``ipd-dt`` policy need its history? Act with only the last k steps of it.

``ipd-dt`` trains on K-step windows in which step j sees the j steps before it, so a policy fed
only the last k < K steps predicts as it does at place k of a training window: in distribution,
but with less history. pi_QOP, an MLP on the current state, never rolls onto its back on
halfcheetah-medium-replay, and every transformer variant does in some episodes
(``benchmarks/results/replay_datasets.md``); if the history is what carries a bad gait along,
a short acting context should flip less. Same evaluation episodes and seeds as ``ipd run``;
``k = K`` is the run's own score.

    python benchmarks/probes/context_probe.py RUN_DIR [--keep 1,5,10] [--episodes 10] \\
        [--out FILE.jsonl]
"""

from __future__ import annotations

import argparse
import json

import torch

from ipd_plugins.policies.base import SequenceActor


class ShortContextActor(SequenceActor):
    """:class:`SequenceActor` that feeds the network only the last ``keep`` steps of its window."""

    def __init__(self, *args, keep: int, **kwargs):
        super().__init__(*args, **kwargs)
        if not 1 <= keep <= self.context:
            raise ValueError(f"keep must be in [1, {self.context}], got {keep}")
        self.keep = keep

    def window(self) -> tuple[torch.Tensor, ...]:
        return tuple(x[:, -self.keep :] for x in super().window())  # (B, keep, ...)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="an `ipd run` seed folder trained with policy ipd-dt")
    parser.add_argument("--keep", default="1,5,10", help="acting contexts to try (steps)")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="append one JSON line per run to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from ipd_plugins.data.runs import load_trained
    from ipd_plugins.evaluate import score

    run = load_trained(args.run_dir)
    cfg, ds, ctx = run.cfg, run.dataset, run.ctx
    if cfg.components["policy"] != "ipd-dt":
        raise SystemExit(f"{args.run_dir}: policy is {cfg.components['policy']!r}, not 'ipd-dt'")
    value, net = run.components["value"], run.components["policy"].net
    trained = net.model.context
    keeps = sorted({int(k) for k in args.keep.split(",") if k} | {trained})

    rows = {}
    for k in keeps:
        actor = ShortContextActor(net, lambda obs: value.v(obs), device="cpu", keep=k)
        r = score(actor, ctx.env_id, args.episodes, cfg.run.seed, ds).to_dict()
        rows[k] = r["normalized_mean"]
        print(f"keep {k:>3}: {r['normalized_mean']:.1f} +- {r['normalized_std']:.1f}", flush=True)
    record = {
        "run": args.run_dir,
        "dataset": cfg.run.dataset,
        "seed": cfg.run.seed,
        "context": trained,
        "scores": rows,
    }
    print(json.dumps(record))
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
