"""Speed of the ``pe`` world model at the paper's sizes, in one process.

Paper sizes (sec. 4.4.2, table 2): E=3 members of 4 x 400 (LayerNorm, ReLU) hidden layers, a
reward network of the same shape (1 member, the default), batch 256, on a Hopper-shaped dataset
(O=11, A=3; random numbers: speed does not depend on the values).

- training: gradient steps/s of ``ProbabilisticEnsemble.fit`` (sampling the minibatch, eq. 13-16
  + NLL, dynamics and reward backward, two Adam steps), fp32 and bf16 autocast
  (``train_dtype``). Timed between ``log`` callbacks inside ``fit``, so the real loop is measured;
  the periodic held-out evaluation (256 rows every 10 steps) is included.
- imagination: ``step()`` transitions/s for B=4096 rows (ensemble forward, reward model,
  member-per-row sampling, Hopper's termination rule), fp32 and bf16 autocast (``step_dtype``).

The variants are timed in alternating rounds so that CPU contention from other jobs hits them
alike; the table gives the median over rounds (and min-max).

    python benchmarks/speed/world_model_speed.py --rounds 5 --threads 2 \\
        --out benchmarks/results/world_model_speed.md
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

O, A, N = 11, 3, 50_000


def make_dataset():
    from ipd_plugins.data.dataset import TrajectoryDataset

    rng = np.random.default_rng(0)
    arrays = {
        "observations": rng.normal(size=(N, O)),
        "actions": rng.uniform(-1, 1, (N, A)),
        "rewards": rng.normal(size=N),
        "next_observations": rng.normal(size=(N, O)),
        "terminations": np.zeros(N),
        "truncations": np.zeros(N),
    }
    return TrajectoryDataset.from_arrays(arrays, np.full(N // 1000, 1000), env_id="Hopper-v5")


def build(**overrides):
    from ipd_plugins.world_models.pe import PEConfig
    from registry.protocols import BuildContext

    ctx = BuildContext(O, A, (-1.0,) * A, (1.0,) * A, env_id="Hopper-v5")
    return PEConfig(**overrides).create(ctx)


def train_rate(data, dtype: str, steps: int) -> float:
    """Gradient steps/s of fit(), timed between its first and last log callback."""
    wm = build(n_steps=steps, train_dtype=dtype, eval_every=10, max_holdout_eval=256, patience=0)
    stamps: list[tuple[int, float]] = []
    wm.fit(data, log=lambda step, _: stamps.append((step, time.perf_counter())))
    (s0, t0), (s1, t1) = stamps[0], stamps[-1]
    return (s1 - s0) / (t1 - t0)


def step_rate(wm, obs, act, gen, calls: int) -> float:
    wm.step(obs, act, gen)  # warm-up
    t0 = time.perf_counter()
    for _ in range(calls):
        wm.step(obs, act, gen)
    return calls * obs.shape[0] / (time.perf_counter() - t0)


def fmt(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=60, help="fit() steps per round")
    parser.add_argument("--step-calls", type=int, default=4, help="step() calls per round")
    parser.add_argument("--batch", type=int, default=4096, help="rows per step() call")
    parser.add_argument(
        "--threads", default="2", help="intra-op thread counts to time, comma-separated: 2,1"
    )
    parser.add_argument("--out", default=None, help="write a markdown report here")
    args = parser.parse_args()
    thread_counts = [int(t) for t in args.threads.split(",")]

    data = make_dataset()
    g = torch.Generator().manual_seed(0)
    obs, act = torch.randn(args.batch, O, generator=g), torch.rand(args.batch, A, generator=g)
    stepper = {d: build(step_dtype=d) for d in ("float32", "bfloat16")}
    keys = [(t, d) for t in thread_counts for d in ("float32", "bfloat16")]
    train: dict[tuple[int, str], list[float]] = {k: [] for k in keys}
    step: dict[tuple[int, str], list[float]] = {k: [] for k in keys}
    train_rate(data, "float32", 20)  # warm-up (allocator, first-call overheads)
    for r in range(args.rounds):
        for threads, dtype in keys:
            torch.set_num_threads(threads)
            train[threads, dtype].append(train_rate(data, dtype, args.train_steps))
            step[threads, dtype].append(step_rate(stepper[dtype], obs, act, g, args.step_calls))
            print(
                f"round {r} threads {threads} {dtype}: train {train[threads, dtype][-1]:.1f} "
                f"steps/s; step() {step[threads, dtype][-1]:,.0f} transitions/s",
                flush=True,
            )

    def fmt1(values: list[float]) -> str:
        return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"

    try:
        cpu = subprocess.run(
            ["sh", "-c", "lscpu | grep 'Model name' | cut -d: -f2"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        cpu = platform.processor()
    load = os.getloadavg()
    med = {
        k: statistics.median(v)
        for k, v in {
            **{("t",) + k: v for k, v in train.items()},
            **{("s",) + k: v for k, v in step.items()},
        }.items()
    }
    rows = []
    for threads in thread_counts:
        t32, t16 = train[threads, "float32"], train[threads, "bfloat16"]
        rows.append(
            f"| `fit` gradient steps/s (batch 256) | {threads} | {fmt1(t32)} | {fmt1(t16)} | "
            f"{med['t', threads, 'bfloat16'] / med['t', threads, 'float32']:.2f} |"
        )
    for threads in thread_counts:
        s32, s16 = step[threads, "float32"], step[threads, "bfloat16"]
        rows.append(
            f"| `step()` transitions/s (B={args.batch}) | {threads} | {fmt(s32)} | {fmt(s16)} | "
            f"{med['s', threads, 'bfloat16'] / med['s', threads, 'float32']:.2f} |"
        )
    fp32_rate = med["t", thread_counts[0], "float32"]
    lines = [
        "# World model (`pe`) speed",
        "",
        "Command: `python benchmarks/speed/world_model_speed.py " + " ".join(sys.argv[1:]) + "`",
        "",
        f"Machine: {cpu or 'unknown CPU'}, {os.cpu_count()} cores, no GPU, "
        f"torch {torch.__version__}, intra-op threads {args.threads}. Other jobs (helpers' tests "
        "and a background training job) were using the same 2 cores during the run "
        f"(load average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}), so the "
        "absolute figures are low and noisy; the ratios within a round are the robust part.",
        "",
        "Sizes: E=3 members x 4 hidden layers x 400 units (LayerNorm, ReLU), reward net of the "
        f"same shape (1 member), Hopper-shaped data (O={O}, A={A}), batch 256 for training, "
        f"B={args.batch} rows per `step()`. Median over {args.rounds} alternating rounds "
        "(min-max in brackets).",
        "",
        "| work | threads | fp32 | bf16 autocast | bf16 / fp32 |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "A training step is: sample 256 rows, forward the 3-member dynamics ensemble and the "
        "reward net, eq. 13-16 + the per-member NLL, backward, two Adam steps (the eval of 256 "
        "held-out rows every 10 steps is included). A `step()` is: the ensemble and reward "
        "forward, de-normalising member means/variances, drawing a member per row and its Gaussian "
        "sample, and Hopper's termination rule, under `torch.inference_mode()`.",
        "",
        "For scale: the paper's default `n_steps=100_000` is GPU work; at the first fp32 rate "
        f"above it would take about {100_000 / fp32_rate / 3600:.1f} h on this "
        "machine, so CPU profiles train for fewer steps (early stopping on the held-out split "
        "also ends training when it stops improving).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
