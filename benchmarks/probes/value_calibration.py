"""Is the learned V(s) the upper expectile IQL intends, or is it still short of the data's returns?

IQL-style learning (paper eq. 1-3, ``qov``) makes V(s) an upper expectile (tau = 0.7) over the
data's actions of Q(s, a) = r + gamma V(s'), so once it has converged V(s) is at least the
behaviour policy's value E[G_t | s_t]: on average over the dataset, V(s_t) - G_t >= 0, where
G_t is the discounted return the data actually collected from step t. ``ipd-dt`` feeds V(s_t)
as its return-to-go token (eq. 26), MPC ranks candidates by it and the augmentation selects
states by the gap R_imagine - R_real it predicts, so a V that is still far below G (too few
gradient steps for the values to propagate along gamma = 0.99) undervalues every state.

For each value function this prints and records, over every step of the dataset:

* mean V and mean G (G bootstrapped with V where an episode is truncated, 0 at a termination);
* mean and median of V - G, and P(G > V): the share of steps where the data did better than V;
* ``balance``: tau E[(y - V)+] - (1 - tau) E[(V - y)+] for the one-step target
  y = r + gamma (1 - terminated) V(s'), in reward units. At the expectile fixed point of eq. 2
  (without the Huber part) it is 0; positive means V is still below its own target.

Two ways to use it:

    python benchmarks/probes/value_calibration.py --run RUN_DIR [RUN_DIR ...]     # finished runs
    python benchmarks/probes/value_calibration.py --dataset hopper-medium \\
        --milestones 30000,60000,120000 --work benchmarks/work/value_cal  # train longer

The second trains the run's ``qov`` (the ``default`` profile's config) and measures it after
each milestone, continuing one learner from its checkpoint (resumable: rerun the same command).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ipd_plugins.data.dataset import TrajectoryDataset
from ipd_plugins.policies.sequence_data import discounted_returns_to_go


@torch.no_grad()
def _v(value, obs: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    x = torch.as_tensor(obs, dtype=torch.float32)
    return torch.cat(
        [value.v(x[i : i + chunk]).reshape(-1) for i in range(0, len(x), chunk)]
    ).numpy()


def calibration(value, dataset: TrajectoryDataset, gamma: float, tau: float) -> dict[str, float]:
    """V against the data's discounted returns and against its own one-step target."""
    v, v_next = _v(value, dataset.observations), _v(value, dataset.next_observations)
    ends = np.cumsum(dataset.episode_lengths) - 1
    tail = np.where(dataset.terminations[ends], 0.0, v_next[ends])  # G past an episode's end
    g = discounted_returns_to_go(dataset.rewards, dataset.episode_lengths, gamma, tail)
    y = dataset.rewards + gamma * (1.0 - dataset.terminations) * v_next
    above, below = np.clip(y - v, 0, None).mean(), np.clip(v - y, 0, None).mean()
    diff = v - g
    return {
        "mean_v": float(v.mean()),
        "mean_g": float(g.mean()),
        "mean_v_minus_g": float(diff.mean()),
        "median_v_minus_g": float(np.median(diff)),
        "p_g_above_v": float((g > v).mean()),
        "corr_v_g": float(np.corrcoef(v, g)[0, 1]),
        "balance": float(tau * above - (1 - tau) * below),
    }


HEADER = (
    "| value function | steps | mean V | mean G | mean V-G | median V-G | P(G > V) | corr "
    "| balance |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def row(name: str, steps: int, c: dict[str, float]) -> str:
    return (
        f"| {name} | {steps} | {c['mean_v']:.1f} | {c['mean_g']:.1f} | "
        f"{c['mean_v_minus_g']:+.1f} | "
        f"{c['median_v_minus_g']:+.1f} | {c['p_g_above_v']:.2f} | {c['corr_v_g']:.2f} | "
        f"{c['balance']:+.2f} |"
    )


def from_runs(run_dirs: list[str]) -> list[str]:
    from ipd_plugins.data.runs import load_trained

    rows = []
    for rd in run_dirs:
        run = load_trained(rd, kinds=("value",), echo=lambda _: None)
        cfg = run.cfg.configs["value"]
        c = calibration(run.components["value"], run.dataset, cfg.gamma, cfg.tau)
        settings = run.cfg.run
        name = f"{settings.dataset} `{Path(rd).parent.name}` seed {settings.seed}"
        rows.append(row(name, cfg.n_steps, c))
        print(rows[-1], flush=True)
    return rows


def with_milestones(
    dataset: str, seed: int, milestones: list[int], work: Path, sets: dict[str, Any]
) -> list[str]:
    from ipd_plugins.pipeline import prepare_run
    from ipd_plugins.run_config import resolve_config
    from registry import get_registry

    run = {"dataset": dataset, "seed": seed, "profile": "default", "out_dir": str(work)}
    cfg = resolve_config(run=run, overrides={"value": sets})
    p = prepare_run(cfg.run, echo=lambda _: None)
    ds, ctx = p.dataset, p.ctx
    vconf = cfg.configs["value"]
    value = get_registry().create("value", cfg.components["value"], vconf, ctx)
    rows = []
    for steps in milestones:
        vconf.n_steps = steps  # fit resumes from work's checkpoint and trains up to `steps`
        t0 = time.perf_counter()
        value.fit(ds, work_dir=work / f"{dataset}__seed{seed}")
        c = calibration(value, ds, vconf.gamma, vconf.tau)
        changed = "".join(f", {k}={v}" for k, v in sets.items())
        rows.append(row(f"{dataset} qov (`default` config{changed}) seed {seed}", steps, c))
        print(rows[-1], f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", nargs="+", default=[], help="finished `ipd run` seed folders")
    ap.add_argument("--dataset", help="train the default-profile qov on this dataset")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--milestones", default="30000,60000,120000", help="comma-separated steps")
    ap.add_argument("--work", default="benchmarks/work/value_cal", help="checkpoints")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="value-config override for --dataset, e.g. --set tau_target=0.01 (YAML value)",
    )
    ap.add_argument("--out", help="append the rows as a Markdown table to this file")
    args = ap.parse_args()
    if not args.run and not args.dataset:
        ap.error("give --run RUN_DIR... or --dataset NAME")
    torch.set_num_threads(args.threads)
    print(HEADER)
    rows = from_runs(args.run)
    if args.dataset:
        milestones = sorted(int(m) for m in args.milestones.split(","))
        sets = {}
        for item in args.set:
            key, sep, text = item.partition("=")
            if not sep:
                ap.error(f"--set wants KEY=VALUE, got {item!r}")
            sets[key] = yaml.safe_load(text)
        rows += with_milestones(args.dataset, args.seed, milestones, Path(args.work), sets)
    if args.out:
        stamp = time.strftime("%Y-%m-%d %H:%M")
        with open(args.out, "a") as f:
            f.write(f"\n{stamp}, {torch.get_num_threads()} thread(s):\n\n{HEADER}\n")
            f.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
