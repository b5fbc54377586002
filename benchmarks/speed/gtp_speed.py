"""GTP's cost: training steps/s and milliseconds per action, K = 2 and K = 5, next to ``ipd-dt``
and d3rlpy 2.8.1's DecisionTransformer, in one process.

Each method at its paper size on a Hopper-shaped dataset (O=11, A=3, 1000-step episodes of
random numbers: speed does not depend on the values):

* ``gtp``: 3 x 256 Mish MLPs, batch 256 (arXiv 2510.11499's matched setup). ``critic=own`` (the
  paper: a double Q whose TD target samples the EMA actor in K steps, and V(s) from a K-step
  sample of the actor), ``critic=value`` (the value stage's Q and V: a stand-in 2 x 256 double
  Q and V here) and GTP-BC (eta = 0: no critic; K does not enter training).
* ``ipd-dt``: 4 layers x 256, 4 heads, context 20, batch 64, "vsa" tokens (paper table 4), with
  eq. 26's Q term through the same stand-in value learner.
* d3rlpy's DecisionTransformer at the size of ``ipd-dt`` (as ``policy_speed.py``).

A training step includes sampling its minibatch. Acting: one ``act`` call of each method's
actor, for 1 environment (latency) and for 10 at once (per action); the sequence actors with a
full 20-step window; d3rlpy's stateful wrapper acts in one environment only. Every variant is
warmed up, then all are timed in alternating rounds so that other jobs' load hits them alike;
the tables give the median over rounds.

    python benchmarks/speed/gtp_speed.py --threads 1 --rounds 3 --out gtp_speed.md

``--score`` instead measures what short runs cost in score: ``gtp`` (own critic, eta 1) on
pendulum-medium (``ipd data make`` builds it) for ``--score-steps`` steps at ``ema_rate`` 0.005
and 0.05 x ``flow_weighting`` none and edm, scored with K = 2 and K = 5 and, as a diagnostic of
the denoiser alone, 40 DDIM steps of the instantaneous map (20 episodes, seed 0):

    python benchmarks/speed/gtp_speed.py --threads 1 --score --score-steps 4000
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")

# the synthetic Hopper-shaped data and stand-in value learner of the policy benchmark (a sibling
# script: its folder is on sys.path when this one runs)
from policy_speed import EP_LEN, A, MlpValue, O, make_dataset  # noqa: E402


def context(precision: str = "fp32"):
    from registry.protocols import BuildContext

    return BuildContext(O, A, (-1.0,) * A, (1.0,) * A, seed=0, precision=precision)


def gtp(dataset, value, precision: str = "fp32", **overrides):
    """(train step, policy) of a ``gtp`` at the paper's size."""
    from registry import manager

    cfg = {"batch_size": 256, "hidden": 256, "n_layers": 3, "n_steps": 2_000_000, **overrides}
    policy = manager.create("policy", "gtp", cfg, context(precision))
    state = policy.start_training(dataset)
    counter = iter(range(10**9))
    return (lambda: policy.train_step(state, next(counter), value)), policy


def ipd_dt(dataset, value, precision: str = "fp32"):
    from registry import manager

    cfg = {"batch_size": 64, "context": 20, "n_layer": 4, "n_embd": 256, "n_head": 4}
    policy = manager.create("policy", "ipd-dt", cfg, context(precision))
    state = policy.start_training(dataset, value)
    return (lambda: policy.train_step(state, value)), policy


def d3rlpy_dt(dataset):
    """(train step, stateful single-env actor) of d3rlpy's DT at ``ipd-dt``'s size."""
    import d3rlpy

    ends = np.cumsum(dataset.episode_lengths) - 1
    timeouts = np.zeros(dataset.n_steps, np.float32)
    timeouts[ends] = 1.0
    mdp = d3rlpy.dataset.MDPDataset(
        dataset.observations,
        dataset.actions,
        dataset.rewards[:, None],
        np.zeros(dataset.n_steps, np.float32),
        timeouts=timeouts,
        action_space=d3rlpy.ActionSpace.CONTINUOUS,
    )
    config = d3rlpy.algos.DecisionTransformerConfig(
        batch_size=64,
        context_size=20,
        num_heads=4,
        num_layers=4,
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
        return algo.update(mdp.sample_trajectory_batch(64, length=20))

    wrapper = algo.as_stateful_wrapper(target_return=3600.0)
    obs = np.zeros(O, np.float32)

    def act():
        return wrapper.predict(obs, 0.0)

    return step, act


def actor_call(policy, value, n_envs: int):
    """One ``act`` of the policy's actor on ``n_envs`` envs, its memory (if any) filled."""
    actor = policy.actor(value)
    obs = torch.randn(n_envs, O, generator=torch.Generator().manual_seed(0))
    actor.reset(obs)
    with torch.inference_mode():
        for _ in range(20):  # a full context window for the sequence actors
            actor.act(obs)
            actor.observe(torch.zeros(n_envs))

    def call():
        out = actor.act(obs)
        actor.observe(torch.zeros(n_envs))
        return out

    return call


def rate(fn, n: int, min_seconds: float = 0.0) -> float:
    """Calls per second of ``fn`` over at least ``n`` calls and ``min_seconds``."""
    calls, t0 = 0, time.perf_counter()
    while calls < n or time.perf_counter() - t0 < min_seconds:
        fn()
        calls += 1
    return calls / (time.perf_counter() - t0)


def alternate(
    variants: dict, rounds: int, n: int, what: str, min_seconds: float
) -> dict[str, list[float]]:
    for fn in variants.values():  # warm-up
        rate(fn, 2)
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(rounds):
        for name, fn in variants.items():
            rates[name].append(rate(fn, n, min_seconds))
        print(f"{what}: round {r + 1}/{rounds}", file=sys.stderr, flush=True)
    return rates


def score_table(steps: int, episodes: int = 20) -> str:
    """Short-run score of gtp's teacher rate and flow weighting on pendulum-medium."""
    from ipd_plugins.data.sources import resolve_dataset
    from ipd_plugins.evaluate import score
    from ipd_plugins.pipeline import context_for
    from registry import manager

    ds = resolve_dataset("pendulum-medium", echo=lambda s: print(s, file=sys.stderr))
    ctx = context_for(ds, seed=0, device="cpu", precision="fp32")
    rows = []
    for ema in (0.005, 0.05):
        for weighting in ("none", "edm"):
            cfg = {"eta": 1.0, "critic": "own", "n_steps": steps, "batch_size": 256,
                   "sample_steps": 2, "warmup_steps": 150, "log_every": 100,
                   "ema_rate": ema, "flow_weighting": weighting}  # fmt: skip
            policy = manager.create("policy", "gtp", cfg, ctx)
            policy.fit(ds, None)

            cells = []
            for kind, k in (("map", 2), ("map", 5), ("euler", 40)):
                by = {"sample_steps": k} if kind == "map" else {"euler_steps": k}
                acting = policy.acting_as(sampler=kind, **by).actor(None)
                r = score(acting, ds.env_id, episodes, 0, ds)
                cells.append(f"{r.normalized_mean:.1f} +- {r.normalized_std:.1f}")
            rows.append(f"| {ema} | {weighting} | " + " | ".join(cells) + " |")
            print(rows[-1], file=sys.stderr, flush=True)
    return "\n".join(
        [
            f"gtp on pendulum-medium (data: 53.1 normalised), {steps} steps, batch 256, own "
            f"critic, eta 1, seed 0; D4RL-normalised x100 over {episodes} episodes:",
            "",
            "| ema_rate | flow_weighting | K=2 | K=5 | 40 DDIM steps of the inst. map |",
            "|---|---|---:|---:|---:|",
            *rows,
        ]
    )


def machine() -> str:
    from ipd_plugins.hardware import cpu_flags, cpu_model, native_bf16

    flags = cpu_flags()
    bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
    return (
        f"{cpu_model()}, {os.cpu_count()} cores, avx512_bf16: {'yes' if bf16 else 'no'} "
        f"(bf16 autocast measured faster here: {'yes' if native_bf16() else 'no'}), "
        f"torch {torch.__version__}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="training steps per variant per round")
    ap.add_argument("--acts", type=int, default=50, help="act calls per variant per round")
    ap.add_argument("--seconds", type=float, default=1.0, help="at least this long per timing")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bf16", action="store_true", help="also gtp and ipd-dt in bf16 autocast")
    ap.add_argument("--no-d3rlpy", action="store_true", help="leave d3rlpy's DT out")
    ap.add_argument("--out", default=None, help="write the markdown here")
    ap.add_argument("--score", action="store_true", help="the short-run score table instead")
    ap.add_argument("--score-steps", type=int, default=4000, help="training steps (--score)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.score:
        text = "Command: `python " + " ".join(sys.argv) + "`\n\n" + score_table(args.score_steps)
        print(text)
        if args.out:
            with open(args.out, "w") as f:
                f.write(text + "\n")
        return

    dataset, value = make_dataset(), MlpValue()
    train: dict = {}
    acting_1: dict = {}
    acting_10: dict = {}
    precisions = ("fp32", "bf16") if args.bf16 else ("fp32",)
    for prec in precisions:
        tag = "" if prec == "fp32" else " bf16"
        for k in (2, 5):
            step, policy = gtp(dataset, value, prec, sample_steps=k, critic="own")
            train[f"gtp K={k} critic=own{tag}"] = step
            if prec == "fp32":  # acting is fp32 whatever the training precision
                acting_1[f"gtp K={k}"] = actor_call(policy, value, 1)
                acting_10[f"gtp K={k}"] = actor_call(policy, value, 10)
            train[f"gtp K={k} critic=value{tag}"] = gtp(
                dataset, value, prec, sample_steps=k, critic="value"
            )[0]
        train[f"gtp-bc (eta=0){tag}"] = gtp(dataset, value, prec, eta=0.0)[0]
        step, policy = ipd_dt(dataset, value, prec)
        train[f"ipd-dt{tag}"] = step
        if prec == "fp32":
            acting_1["ipd-dt"] = actor_call(policy, value, 1)
            acting_10["ipd-dt"] = actor_call(policy, value, 10)
    if not args.no_d3rlpy:
        step, act = d3rlpy_dt(dataset)
        train["d3rlpy DecisionTransformer"] = step
        acting_1["d3rlpy DecisionTransformer"] = act

    batch = {name: (64 if "ipd-dt" in name or "d3rlpy" in name else 256) for name in train}
    sec = args.seconds
    train_rates = alternate(train, args.rounds, args.steps, "training", sec)
    act1 = alternate(acting_1, args.rounds, args.acts, "acting, 1 env", sec)
    act10 = alternate(acting_10, args.rounds, max(1, args.acts // 5), "acting, 10 envs", sec)

    rows = []
    for name, rs in train_rates.items():
        med = statistics.median(rs)
        rows.append(
            f"| {name} | {batch[name]} | {med:.2f} | {min(rs):.2f}-{max(rs):.2f} | "
            f"{med * batch[name]:.0f} |"
        )
    act_rows = []
    for name, rs in act1.items():
        ms1 = 1000.0 / statistics.median(rs)
        ms10 = 1000.0 / statistics.median(act10[name]) / 10 if name in act10 else float("nan")
        act_rows.append(f"| {name} | {ms1:.2f} | {ms10:.2f} |")
    text = "\n".join(
        [
            "Command: `python " + " ".join(sys.argv) + "`  ",
            f"Machine: {machine()}; {args.threads} torch thread(s); median of {args.rounds} "
            f"alternating rounds (each timing at least {args.steps} training steps or "
            f"{args.acts} act calls, and {sec:g} s) after warm-up.",
            "",
            "| training | batch | steps/s (median) | range | samples/s |",
            "|---|---:|---:|---:|---:|",
            *rows,
            "",
            "| acting (fp32) | ms per action, 1 env | ms per action, 10 envs at once |",
            "|---|---:|---:|",
            *act_rows,
        ]
    )
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
