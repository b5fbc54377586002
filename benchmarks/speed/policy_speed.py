"""Training steps/s: ipd's sequence policies vs d3rlpy 2.8.1's DecisionTransformer, one process.

Same size for all (paper table 4): 4 layers, 256 wide, 4 heads, context 20, batch 64, on a
Hopper-shaped dataset (O=11, A=3, 1000-step episodes of random numbers: speed does not depend on
the values). Every variant is warmed up, then the variants are timed in alternating rounds so
that CPU contention from other jobs hits them alike; the table gives the median over rounds of
steps/s and its ratio to d3rlpy. A step includes sampling the minibatch of windows.

Variants: ``dt`` (plain MSE, the like-for-like comparison with d3rlpy's DT), ``ipd-dt`` (eq. 26:
adds a double-Q MLP 2x256 forward/backward through the action), each with
``token_layout`` "vsa" (paper, 3 tokens per step) / "sa" (2) / "s" (1), in fp32 and bf16 autocast
(``dt`` only in fp32 "vsa" unless ``--all-dt``).

    python benchmarks/speed/policy_speed.py --rounds 6 --steps 2 --threads 1 --out speed.md
    python benchmarks/speed/policy_speed.py --threads 1 --score-seeds 2 --out score.md  # toy score
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")

O, A, EP_LEN, N_EP = 11, 3, 1000, 20


def make_dataset():
    from ipd_plugins.data.dataset import TrajectoryDataset

    rng = np.random.default_rng(0)
    n = EP_LEN * N_EP
    arrays = {
        "observations": rng.normal(size=(n, O)).astype(np.float32),
        "next_observations": rng.normal(size=(n, O)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, A)).astype(np.float32),
        "rewards": rng.normal(1.0, 0.5, size=n).astype(np.float32),
        "terminations": np.zeros(n, bool),
        "truncations": np.tile(np.r_[np.zeros(EP_LEN - 1, bool), True], N_EP),
    }
    return TrajectoryDataset.from_arrays(arrays, np.full(N_EP, EP_LEN), env_id="Hopper-v5")


class MlpValue:
    """A stand-in value learner of the paper's size (double Q, V: 2x256 MLPs)."""

    gamma = 0.99

    def __init__(self):
        from ipd_plugins.nn import mlp

        torch.manual_seed(0)
        self.q1, self.q2, self.vnet = mlp(O + A, 1), mlp(O + A, 1), mlp(O, 1)

    def q(self, obs, act):
        x = torch.cat([obs, act], -1)
        return torch.minimum(self.q1(x), self.q2(x)).squeeze(-1)

    def v(self, obs):
        return self.vnet(obs).squeeze(-1)

    def act(self, obs, deterministic=True):
        return torch.zeros(obs.shape[0], A)


def ours(name: str, dataset, value, **overrides):
    from registry import manager
    from registry.protocols import BuildContext

    ctx = BuildContext(O, A, (-1.0,) * A, (1.0,) * A, seed=0)
    cfg = {"batch_size": 64, "context": 20, "n_layer": 4, "n_embd": 256, "n_head": 4}
    policy = manager.create("policy", name, {**cfg, **overrides}, ctx)
    state = policy.start_training(dataset, value)
    return lambda: policy.train_step(state, value)


def d3rlpy_dt(dataset):
    import d3rlpy

    ends = np.cumsum(dataset.episode_lengths) - 1
    terminals = np.zeros(dataset.n_steps, np.float32)
    timeouts = np.zeros(dataset.n_steps, np.float32)
    timeouts[ends] = 1.0
    mdp = d3rlpy.dataset.MDPDataset(
        dataset.observations,
        dataset.actions,
        dataset.rewards[:, None],
        terminals,
        timeouts=timeouts,
        action_space=d3rlpy.ActionSpace.CONTINUOUS,
    )
    config = d3rlpy.algos.DecisionTransformerConfig(
        batch_size=64,
        context_size=20,
        num_heads=4,
        num_layers=4,
        # one 256-unit layer: the state embedding is 256 wide, like ours (the default encoder
        # is a 2x256 MLP, slightly more work)
        encoder_factory=d3rlpy.models.VectorEncoderFactory(hidden_units=[256]),
        attn_dropout=0.01,
        resid_dropout=0.01,
        embed_dropout=0.01,
        activation_type="relu",
        max_timestep=EP_LEN,
        learning_rate=3e-4,
    )
    algo = config.create(device="cpu:0")
    algo.build_with_dataset(mdp)

    def step():
        batch = mdp.sample_trajectory_batch(64, length=20)
        return algo.update(batch)

    return step


# -- score cost of the speed knobs, on the 1-d toy task (ipd_plugins.data.toy) ------------
def score_table(seeds: int) -> str:
    """Mean toy return (optimal about -1.2, random about -22) per policy/layout/precision."""
    from ipd_plugins.data.toy import ToyReachValue, toy_reach_dataset
    from ipd_plugins.evaluate import evaluate
    from registry import manager
    from registry.protocols import BuildContext

    ds, value = toy_reach_dataset(80), ToyReachValue()
    env_id = ds.env_id
    cfg = {"n_layer": 2, "n_embd": 64, "n_head": 2, "context": 10, "batch_size": 32}
    cfg.update(n_steps=400, warmup_steps=50, learning_rate=1e-3)
    rows = []
    for name, extra in (("ipd-dt", {}), ("dt", {"target_return": -1.0, "rtg_scale": 5.0})):
        for layout in ("vsa", "sa", "s"):
            for bf16 in (False, True):
                scores = []
                for seed in range(seeds):
                    ctx = BuildContext(1, 1, (-1.0,), (1.0,), seed=seed)
                    overrides = {**cfg, **extra, "token_layout": layout, "autocast_bf16": bf16}
                    policy = manager.create("policy", name, overrides, ctx)
                    policy.fit(ds, value)
                    result = evaluate(policy.actor(value), env_id, n_episodes=20, seed=1000)
                    scores.append(result.mean_return)
                tag = f"{name} {'bf16' if bf16 else 'fp32'} {layout}"
                rows.append(f"| {tag} | {np.mean(scores):.2f} | {np.std(scores):.2f} |")
                print(rows[-1], file=sys.stderr, flush=True)
    return "\n".join(
        [
            f"Toy-task return (1-d reach, 20 steps; optimal about -1.2, random about -22, data "
            f"mean {ds.episode_returns().mean():.1f}); 2 layers x 64, K=10, 400 steps, "
            f"{seeds} seeds x 20 episodes:",
            "",
            "| variant | mean return | std over seeds |",
            "|---|---|---|",
            *rows,
        ]
    )


def timed(step, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5, help="steps per variant per round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the markdown table here")
    ap.add_argument("--all-dt", action="store_true", help="time every dt variant too")
    ap.add_argument("--score-seeds", type=int, default=0, help="also the toy-task score table")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.score_seeds:
        text = score_table(args.score_seeds)
        print(text)
        if args.out:
            with open(args.out, "w") as f:
                f.write(text + "\n")
        return

    dataset = make_dataset()
    value = MlpValue()
    variants = {"d3rlpy DecisionTransformer (fp32)": d3rlpy_dt(dataset)}
    for layout in ("vsa", "sa", "s"):
        for bf16 in (False, True):
            tag = f"{'bf16' if bf16 else 'fp32'} {layout}"
            if args.all_dt or (layout, bf16) == ("vsa", False):
                variants[f"dt {tag}"] = ours(
                    "dt", dataset, None, token_layout=layout, autocast_bf16=bf16
                )
    for layout in ("vsa", "sa", "s"):
        for bf16 in (False, True):
            tag = f"{'bf16' if bf16 else 'fp32'} {layout}"
            variants[f"ipd-dt {tag}"] = ours(
                "ipd-dt", dataset, value, token_layout=layout, autocast_bf16=bf16
            )
    for step in variants.values():  # warm-up
        timed(step, 2)
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds):
        for name, step in variants.items():
            rates[name].append(timed(step, args.steps))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)

    base = statistics.median(rates["d3rlpy DecisionTransformer (fp32)"])
    rows = []
    for name, rs in rates.items():
        med = statistics.median(rs)
        rows.append(f"| {name} | {med:.2f} | {min(rs):.2f}-{max(rs):.2f} | {med / base:.2f}x |")
    try:
        cpu = subprocess.run(
            ["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        cpu = platform.processor()
    cmd = "python " + " ".join(sys.argv)
    text = "\n".join(
        [
            "# Sequence-policy training speed (steps/s, batch 64, 4 layers x 256, 4 heads, K=20)",
            "",
            f"Command: `{cmd}`  ",
            f"Machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{args.threads} threads; median of {args.rounds} alternating rounds of "
            f"{args.steps} steps after warm-up.",
            "",
            "| variant | steps/s (median) | range | vs d3rlpy |",
            "|---|---|---|---|",
            *rows,
        ]
    )
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
